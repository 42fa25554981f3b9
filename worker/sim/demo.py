"""``supervisor.py demo``: the whole flow on any machine, against the simulators.

Starts the simulated GmAnimato with sample jobs, runs the real supervisor (a simulated ComfyUI slot,
a worker process) against it, prints each job's progress and result, drains when every job has its
final webhook, and prints a summary. Exit 0 when every job completed.
"""
from __future__ import annotations

import secrets
import socket
import sys
import tempfile
import threading
import time

import requests

from worker.config import load_config
from worker.logs import setup_logging
from worker.reports import Report, Up
from worker.sim.launch import GMANIMATO_READY, project_root, start_sim
from worker.supervision.arbiter import Supervisor
from worker.supervision.startup import prepare_box

TEMPLATES = ("i2v", "fl2v", "i2v-720p")
FINAL = ("completed", "failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_config(api_url: str, secret: str, work_dir: str, step_time: float):
    root = str(project_root())
    overrides = {
        "api.url": api_url, "api.secret": secret, "api.poll_interval": 0.5,
        "webhook.progress_interval": 0.5, "gpus": "none", "cpu_fallback": True,
        "comfy.mode": "start", "comfy.command": [sys.executable, "-m", "worker.sim.comfyui"],
        "comfy.extra_args": ["--step-time", str(step_time), "--steps", "8", "--output-size", "262144"],
        "comfy.cwd": root, "comfy.env": {"PYTHONPATH": root}, "comfy.base_port": free_port(),
        "comfy.work_dir": work_dir, "logging.level": "warning", "supervisor.sentinel_file": "",
    }
    return load_config(None, env={}, overrides=overrides)


def queue_jobs(api_url: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = requests.post(f"{api_url}/sim/jobs", json={"template": TEMPLATES[i % len(TEMPLATES)]},
                                 timeout=10)
        response.raise_for_status()
        ids.append(response.json()["video_id"])
    return ids


def print_report(report: Report) -> None:
    data = report.data
    if report.kind == Up.JOB_STARTED:
        print(f"[{report.slot}] {data.get('job_id')}: started", flush=True)
    elif report.kind == Up.JOB_PROGRESS:
        progress = data.get("progress") or {}
        print(f"[{report.slot}] {data.get('job_id')}: {progress.get('percentage', 0):5.1f} %  "
              f"node {progress.get('current_node') or '-'}", flush=True)
    elif report.kind == Up.JOB_FINISHED:
        outcome = data.get("status") if data.get("status") == "completed" else f"failed: {data.get('error')}"
        print(f"[{report.slot}] {data.get('job_id')}: {outcome} in {data.get('seconds', 0):.1f} s, "
              f"webhook {'delivered' if data.get('delivered') else 'NOT delivered'}", flush=True)


def watch_until_done(api_url: str, video_ids: list[str], supervisor: Supervisor, deadline: float) -> None:
    """Drain the supervisor once GmAnimato has a final status for every job (or time runs out)."""
    while time.monotonic() < deadline:
        try:
            rows = {r["id"]: r for r in requests.get(f"{api_url}/sim/videos", timeout=5).json()}
        except (requests.RequestException, ValueError):
            rows = {}
        if all(rows.get(v, {}).get("status") in FINAL for v in video_ids):
            break
        time.sleep(0.2)
    supervisor.request_drain()


def print_summary(api_url: str, video_ids: list[str]) -> int:
    rows = {r["id"]: r for r in requests.get(f"{api_url}/sim/videos", timeout=5).json()}
    print("\nSummary")
    completed = 0
    for vid in video_ids:
        row = rows.get(vid, {})
        status = row.get("status", "?")
        completed += status == "completed"
        print(f"  {vid}  {status:<10} {row.get('final_video_url') or ''}")
    print(f"{len(video_ids)} jobs: {completed} completed, {len(video_ids) - completed} not completed")
    return 0 if completed == len(video_ids) else 1


def run_demo(jobs: int = 3, step_time: float = 0.25, timeout: float = 180.0) -> int:
    setup_logging("demo", "warning")
    secret = secrets.token_hex(8)
    gmanimato = start_sim("worker.sim.gmanimato", ["--port", "0", "--secret", secret], GMANIMATO_READY)
    try:
        with tempfile.TemporaryDirectory(prefix="gmanimato-demo-") as work_dir:
            config = demo_config(gmanimato.url, secret, work_dir, step_time)
            video_ids = queue_jobs(gmanimato.url, jobs)
            print(f"Simulated GmAnimato at {gmanimato.url} with {jobs} job(s); starting the supervisor",
                  flush=True)
            box = prepare_box(config)
            supervisor = Supervisor(config, box.plans, on_report=print_report)
            supervisor.install_signal_handlers()
            threading.Thread(target=watch_until_done, daemon=True, name="demo-watch",
                             args=(gmanimato.url, video_ids, supervisor, time.monotonic() + timeout)).start()
            try:
                supervisor.run()
            finally:
                box.release()
            return print_summary(gmanimato.url, video_ids)
    finally:
        gmanimato.stop()
