#!/usr/bin/env python3
"""How long a GPU sits idle between two jobs, and what the worker costs, against the simulators.

Runs the real supervisor (one slot) against the simulated GmAnimato and ComfyUI, queues N jobs up
front, and reads ComfyUI's own history: the gap is ``execution_start`` of job k+1 minus
``execution_success`` of job k (ComfyUI's clock), i.e. the time the GPU had no work. Also prints the
job wall time as GmAnimato saw it (claim to final webhook) and the worker process's peak RSS.

    .venv/bin/python bench/job_gap.py [--jobs 20] [--output-size 5242880]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.sim.launch import GMANIMATO_READY, start_sim  # noqa: E402


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(jobs: int, output_size: int, steps: int, step_time: float) -> dict:
    secret = "bench"
    gma = start_sim("worker.sim.gmanimato", ["--port", "0", "--secret", secret], GMANIMATO_READY)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "api": {"url": gma.url, "secret": secret, "poll_interval": 0.5},
            "webhook": {"progress_interval": 2},
            "gpus": "none",
            "comfy": {"command": [sys.executable, "-m", "worker.sim.comfyui", "--output-size", str(output_size),
                                  "--steps", str(steps), "--step-time", str(step_time), "--preview-method", "none"],
                      "cwd": str(ROOT), "env": {"PYTHONPATH": str(ROOT)}, "base_port": port,
                      "work_dir": f"{tmp}/slots"},
            "logging": {"level": "warning"}, "supervisor": {"sentinel_file": ""},
        }
        Path(tmp, "config.yaml").write_text(yaml.safe_dump(config))
        ids = [requests.post(f"{gma.url}/sim/jobs", json={"template": "i2v"}, timeout=10).json()["video_id"]
               for _ in range(jobs)]
        sup = subprocess.Popen([sys.executable, "supervisor.py", "--config", f"{tmp}/config.yaml"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = watch_until_done(gma.url, ids, sup.pid)
        history = requests.get(f"http://127.0.0.1:{port}/history", timeout=10).json()
        webhooks = requests.get(f"{gma.url}/sim/webhooks", timeout=10).json()
        videos = requests.get(f"{gma.url}/sim/videos", timeout=10).json()
        sup.send_signal(signal.SIGTERM)
        sup.wait(60)
    gma.stop()
    return {"history": history, "webhooks": webhooks, "videos": videos, "peak_rss": peak, "ids": ids}


def watch_until_done(url: str, ids: list[str], sup_pid: int, timeout: float = 600) -> int:
    peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(sup_pid).children(recursive=True):
            try:
                if "worker.sim" not in " ".join(child.cmdline()):
                    peak = max(peak, child.memory_info().rss)
            except psutil.Error:
                pass
        rows = {r["id"]: r["status"] for r in requests.get(f"{url}/sim/videos", timeout=10).json()}
        if all(rows.get(v) in ("completed", "failed") for v in ids):
            return peak
        time.sleep(0.2)
    raise SystemExit("jobs did not finish in time")


def gaps(history: dict) -> list[float]:
    spans = []
    for entry in history.values():
        times = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
        if "execution_start" in times and "execution_success" in times:
            spans.append((times["execution_start"], times["execution_success"]))
    spans.sort()
    return [(nxt[0] - cur[1]) / 1000.0 for cur, nxt in zip(spans, spans[1:])]


def job_times(webhooks: list[dict], videos: list[dict]) -> list[float]:
    claimed = {v["id"]: v["dequeued_at"] for v in videos}
    finals = {}
    for hook in webhooks:
        if isinstance(hook["body"], dict) and hook["body"].get("status") == "completed":
            finals[hook["video_id"]] = hook["t"]
    from datetime import datetime
    out = []
    for vid, t in finals.items():
        start = claimed.get(vid)
        if start:
            out.append(t - datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp())
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--output-size", type=int, default=5 * 1024 * 1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-time", type=float, default=0.05)
    args = parser.parse_args()
    result = run(args.jobs, args.output_size, args.steps, args.step_time)
    g, jt = gaps(result["history"]), job_times(result["webhooks"], result["videos"])
    print(f"jobs={args.jobs} output={args.output_size} B storage=base64 machine={os.cpu_count()} cores")
    print("| metric | median | p95 | max |")
    print("|---|---|---|---|")
    print(f"| GPU idle between jobs (s) | {statistics.median(g):.3f} | {pct(g, .95):.3f} | {max(g):.3f} |")
    print(f"| job wall time, claim to final webhook (s) | {statistics.median(jt):.3f} | {pct(jt, .95):.3f} "
          f"| {max(jt):.3f} |")
    print(f"| peak RSS of the supervisor or a worker process (MiB) | {result['peak_rss'] / 2**20:.0f} | | |")


if __name__ == "__main__":
    main()
