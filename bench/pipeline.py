#!/usr/bin/env python3
"""The pipelining figures of issue 8, measured against the simulators with ``jobs.prefetch`` on and off.

One command, every figure, each next to its target:

1. GPU idle between back-to-back jobs (the first gap included): ComfyUI's ``execution_start`` of job k+1
   minus ``execution_success`` of job k, jobs queued up front, one slot, a ~1 s sampler.
2. Claim to ``execution_start`` of a job claimed while the GPU is idle: one job at a time (the next is
   queued once the previous final webhook arrived and the worker asked for work again); the claim time
   is GmAnimato's ``dequeued_at`` (ms), the start ComfyUI's history timestamp (ms): one clock, one box.
3. ``execution_success`` to the final webhook received by GmAnimato (``/sim/webhooks`` ``t``): (a) as in
   1, (b) as in 1 with a progress endpoint that takes 300 ms to answer (the simulator's
   ``progress_delay`` fault), (a') one job at a time, as in 2.
4. Throughput of 8 slots (simulated NVML) at execution time 0, 10 KB input and output, base64 outputs:
   jobs queued up front once the workers are idle, from the first claim to the last final webhook.
5. Idle RSS of the supervisor and its 8 workers (the simulated ComfyUIs left out), once start-up settled.
6. Fleet claims/s and first-claim wait of 1,000 idle boxes: the model of ``bench/fleet_polling.py``.

Figures 1-5 run the real ``supervisor.py`` against the simulated GmAnimato and ComfyUI on loopback; each
is the median over jobs of one run, and the table shows the median of ``--runs`` runs [min-max].
The results go to the section "## Pipeline (bench/pipeline.py)" of bench/RESULTS.md (other sections kept).

    .venv/bin/python bench/pipeline.py [--runs 3] [--quick] [--verbose] [--no-prefetch-key] [--no-results]

``--no-prefetch-key`` leaves ``jobs.prefetch`` out of the config (for code that does not know it yet,
which behaves as prefetch off): one column, written to RESULTS.md only as a labelled baseline.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import fleet_polling  # noqa: E402
from bench.job_gap import free_port  # noqa: E402
from bench.memory_bounds import stop_process, wait_for  # noqa: E402
from worker.config import ConfigError, load_config  # noqa: E402
from worker.sim.gma_state import parse_iso  # noqa: E402
from worker.sim.gma_tasks import generated_png  # noqa: E402
from worker.sim.launch import GMANIMATO_READY, SimProcess, start_sim  # noqa: E402

SECTION_TITLE = "## Pipeline (bench/pipeline.py)"
SECRET = "bench-pipeline"
SHIM = ROOT / "worker" / "sim" / "pynvml_shim"
POLL = 0.5                     # api.poll_interval of the measured stacks
PROGRESS_INTERVAL = 0.2        # webhook.progress_interval, under the step time: every step sends progress,
                               # the last one just before the tail (the final webhook meets one in flight)
HISTORY_DELAY = 0.009          # ComfyUI's own gap between two queued prompts (comfyui-protocol, ws-queue-two)
FLEET_POLL = 5.0               # api.poll_interval's default, for the fleet model
FINAL = ("completed", "failed")
MB = 2 ** 20

# the simulated ComfyUI: a ~1 s sampler (the template's 4 steps x 0.25 s), 64 KiB videos
SAMPLER_ARGS = ["--steps", "4", "--step-time", "0.25", "--output-size", "65536", "--preview-method", "none",
                "--history-delay", str(HISTORY_DELAY)]
# execution time 0 and 10 KB videos, for the throughput of 8 slots
ZERO_ARGS = ["--node-time", "0", "--steps", "1", "--step-time", "0", "--output-size", "10240",
             "--preview-method", "none", "--history-delay", str(HISTORY_DELAY)]
INPUT_SIZE = 10240
# the nodes after the sampler as a real ComfyUI ran them (ws-gmanimato-i2v-vhs.json: VAEDecode from 2075 ms,
# VHS_VideoCombine from 2202 ms, execution_success at 2996 ms): the simulator's own take ~20 ms
CAPTURED_TAIL = {"4": {"_meta": {"sim": {"sleep": 0.127}}}, "16": {"_meta": {"sim": {"sleep": 0.794}}}}


@dataclass(frozen=True)
class Plan:
    """How many jobs and runs (``--quick`` is one run of fewer jobs)."""

    runs: int = 3
    back_to_back: int = 7        # figures 1 and 3: 6 gaps
    one_at_a_time: int = 6       # figure 2
    throughput: int = 200        # figure 4
    fleet_runs: int = 5


QUICK = Plan(runs=1, back_to_back=4, one_at_a_time=3, throughput=80, fleet_runs=1)


@dataclass(frozen=True)
class Figure:
    key: str
    name: str
    unit: str
    target: float | None
    higher_is_better: bool = False
    slack: float = 1.0           # a model's target is met within this factor (bench/fleet_polling.py: 2 %)


FIGURES = (
    Figure("gap", "GPU idle between back-to-back jobs, first gap included (median)", "ms", 20),
    Figure("claim_start", "claim → `execution_start`, job claimed while the GPU is idle (median)", "ms", 30),
    Figure("hook", "`execution_success` → final webhook received, back to back (median)", "ms", 50),
    Figure("hook_slow", "`execution_success` → final webhook, progress endpoint answering in 300 ms, the nodes "
           "after the sampler timed as captured (0.9 s) (median)", "ms", 50),
    Figure("hook_slow_instant", "the same, the simulator's instant nodes after the sampler (~20 ms: worst case, "
           "see the notes) (median)", "ms", 50),
    Figure("hook_single", "`execution_success` → final webhook, one job at a time (median)", "ms", 50),
    Figure("throughput", "throughput, 8 slots, execution time 0, 10 KB in and out", "jobs/s", 40, True),
    Figure("rss", "idle RSS, supervisor + 8 workers (ComfyUI excluded)", "MB", 400),
    Figure("rss_after", "RSS of the same processes after the throughput run (no target)", "MB", None),
    Figure("fleet_rate", f"fleet model, 1,000 idle boxes: claims/s (poll_interval {FLEET_POLL:g} s; met within 2 %, "
           "as in bench/fleet_polling.py: the jitter lets a finite window hold a few more)", "claims/s",
           1000 / FLEET_POLL, slack=1.02),
    Figure("fleet_wait", "fleet model, 1,000 idle boxes: mean wait of a new job for its first claim", "s",
           FLEET_POLL / 2),
)


# ---- helpers ----------------------------------------------------------------------------------
def padded_png(size: int) -> bytes:
    """The simulator's small PNG grown to ``size`` bytes by a private ancillary chunk before IEND."""
    base = generated_png()
    data = b"\0" * max(0, size - len(base) - 12)
    chunk = struct.pack(">I", len(data)) + b"paDd" + data + struct.pack(">I", zlib.crc32(b"paDd" + data))
    return base[:-12] + chunk + base[-12:]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    ram = psutil.virtual_memory().total / 2 ** 30
    return (f"{os.cpu_count()}-core {platform.machine()} box, {ram:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {platform.system()}")


# ---- the supervisor's systemd notifications -----------------------------------------------------
class NotifyListener:
    """A ``NOTIFY_SOCKET`` for the supervisor: READY=1 and its STATUS lines ("N slot(s): N ready, ...,
    N job(s) running"), read by a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.ready = False
        self.status = ""
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True, name="notify")
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096).decode(errors="replace")
            except OSError:
                continue
            for line in data.splitlines():
                if line == "READY=1":
                    self.ready = True
                elif line.startswith("STATUS="):
                    self.status = line[len("STATUS="):]

    def idle(self) -> bool:
        return self.status.endswith(" 0 job(s) running")

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


# ---- one stack: the simulated GmAnimato, the supervisor, N simulated GPUs -------------------------
def stack_config(url: str, tmp: Path, comfy_args: list[str], prefetch: bool | None) -> dict:
    """The supervisor's config: production defaults but for the poll and progress intervals, warnings only."""
    tree: dict[str, Any] = {
        "api": {"url": url, "secret": SECRET, "poll_interval": POLL},
        "webhook": {"progress_interval": PROGRESS_INTERVAL},
        "gpus": "all",
        "comfy": {"command": [sys.executable, "-m", "worker.sim.comfyui", *comfy_args], "cwd": str(ROOT),
                  "env": {"PYTHONPATH": f"{SHIM}{os.pathsep}{ROOT}"}, "base_port": free_port(),
                  "work_dir": str(tmp / "slots"), "startup_timeout": 120},
        "logging": {"level": "warning"},
        "supervisor": {"sentinel_file": ""},
    }
    if prefetch is not None:
        tree["jobs"] = {"prefetch": prefetch}
    return tree


def check_config(prefetch: bool | None) -> None:
    """Raise ConfigError now when this code does not take the config (e.g. no ``jobs.prefetch`` yet)."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        path = Path(tmp, "config.yaml")
        path.write_text(yaml.safe_dump(stack_config("http://127.0.0.1:9", Path(tmp), [], prefetch)))
        load_config(path)


class Stack:
    """The simulated GmAnimato and the real supervisor with ``gpus`` simulated GPUs, in a temp dir.

    Every process started here is ended by its pid: the supervisor by SIGTERM (it drains, its children
    go with it), any child it left behind after that, then the simulated GmAnimato."""

    def __init__(self, gpus: int, comfy_args: list[str], prefetch: bool | None, tmp: str) -> None:
        self.gpus = gpus
        self.tmp = Path(tmp)
        self.prefetch = prefetch
        self.comfy_args = comfy_args
        self.gma: SimProcess | None = None
        self.sup: subprocess.Popen | None = None
        self.notify: NotifyListener | None = None
        self.log_path = self.tmp / "supervisor.log"
        self.url = ""

    def start(self) -> None:
        self.gma = start_sim("worker.sim.gmanimato", ["--port", "0", "--secret", SECRET], GMANIMATO_READY)
        self.url = self.gma.url
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(stack_config(self.url, self.tmp, self.comfy_args, self.prefetch)))
        self.notify = NotifyListener(str(self.tmp / "notify.sock"))
        env = {**os.environ, "PYTHONPATH": f"{SHIM}{os.pathsep}{ROOT}", "SIM_NVML_GPUS": str(self.gpus),
               "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.sup = subprocess.Popen([sys.executable, "supervisor.py", "--config", str(path)], cwd=ROOT, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        ready = f"{self.gpus} slot(s): {self.gpus} ready, 0 fatal, 0 job(s) running"
        wait_for(lambda: self.notify.ready and self.notify.status == ready or self.sup.poll() is not None,
                 180, f"the supervisor's READY with {ready!r}", 0.05)
        if self.sup.poll() is not None:
            raise RuntimeError(f"the supervisor exited with {self.sup.returncode}")
        # the workers ask for work once their ComfyUI is up: wait for the first empty claims
        wait_for(lambda: self.empty_claims() >= 2, 30, "the workers' first claims")

    def stop(self) -> None:
        if self.sup is not None and self.sup.poll() is None:
            try:
                children = psutil.Process(self.sup.pid).children(recursive=True)
            except psutil.Error:
                children = []
            stop_process(self.sup, 90)                     # SIGTERM: it drains; SIGKILL after 90 s
            end_leftovers(children)
        if self.notify is not None:
            self.notify.close()
        if self.gma is not None:
            self.gma.stop()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line or " CRITICAL " in line]

    # ---- GmAnimato ----------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        answer = requests.get(f"{self.url}{path}", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def queue(self, count: int, **spec: Any) -> list[str]:
        answer = requests.post(f"{self.url}/sim/jobs", json={"template": "i2v", "count": count, **spec}, timeout=60)
        answer.raise_for_status()
        return [job["video_id"] for job in answer.json()]

    def faults(self, **doc: Any) -> None:
        requests.post(f"{self.url}/sim/faults", json=doc, timeout=10).raise_for_status()

    def empty_claims(self) -> int:
        return int(self.get("/sim/stats")["task_calls"].get("404", 0))

    def finished(self, ids: list[str]) -> bool:
        rows = {row["id"]: row["status"] for row in self.get("/sim/videos")}
        return all(rows.get(vid) in FINAL for vid in ids)

    def finished_count(self) -> int:
        summary = self.get("/sim/summary")
        return sum(summary.get(status, 0) for status in FINAL)

    # ---- ComfyUI and the processes --------------------------------------------------------------
    def processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(the supervisor and its workers, the simulated ComfyUIs): the supervisor's tree, split."""
        assert self.sup is not None
        top = psutil.Process(self.sup.pid)
        ours, comfy = [top], []
        for child in top.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                (comfy if "worker.sim.comfyui" in " ".join(child.cmdline()) else ours).append(child)
        return ours, comfy

    def comfy_urls(self) -> list[str]:
        urls = []
        for proc in self.processes()[1]:
            with contextlib.suppress(psutil.Error, ValueError, IndexError):
                args = proc.cmdline()
                urls.append(f"http://127.0.0.1:{args[args.index('--port') + 1]}")
        return urls

    def history(self) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for url in self.comfy_urls():
            entries.update(requests.get(f"{url}/history", timeout=30).json())
        return entries


def end_leftovers(procs: list[psutil.Process]) -> None:
    """Children of a supervisor that are still alive after it exited: SIGTERM, then SIGKILL, by pid."""
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, still = psutil.wait_procs(alive, timeout=10)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        print(f"  ended {len(alive)} process(es) the supervisor left behind: {[p.pid for p in alive]}",
              file=sys.stderr)


@contextlib.contextmanager
def running_stack(gpus: int, comfy_args: list[str], prefetch: bool | None) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        stack = Stack(gpus, comfy_args, prefetch, tmp)
        try:
            stack.start()
            yield stack
        except BaseException:
            print(f"\n--- supervisor log (tail) ---\n{stack.log_tail()}\n---", file=sys.stderr)
            raise
        finally:
            stack.stop()
            problems = stack.log_problems()
            if problems:
                print(f"  warning: the supervisor logged {len(problems)} error line(s); tail:\n{stack.log_tail()}",
                      file=sys.stderr)


# ---- per-job times ----------------------------------------------------------------------------
@dataclass
class JobTimes:
    """One job's timestamps, epoch seconds: GmAnimato's claim, ComfyUI's start and success, the final
    webhook as GmAnimato received it; plus the progress webhooks around its end."""

    video_id: str
    status: str = ""
    claimed: float | None = None
    start: float | None = None
    success: float | None = None
    final: float | None = None
    own_progress: list[float] = field(default_factory=list)    # this job's progress webhooks received
    between: int = 0         # progress webhooks of any job received between its success and its final

    def ms(self, a: str, b: str) -> float | None:
        x, y = getattr(self, a), getattr(self, b)
        return None if x is None or y is None else (y - x) * 1000


def job_times(stack: Stack, ids: list[str]) -> list[JobTimes]:
    """Read the claims, the webhooks and ComfyUI's history of ``ids`` (ordered by execution start)."""
    rows = {row["id"]: row for row in stack.get("/sim/videos")}
    hooks = stack.get("/sim/webhooks")
    history = stack.history()
    jobs = {vid: JobTimes(vid, rows[vid]["status"], parse_iso(rows[vid]["dequeued_at"])
                          if rows[vid].get("dequeued_at") else None) for vid in ids}
    for prompt_id, entry in history.items():
        vid = next((v for v in jobs if v in prompt_id or v in json.dumps(entry.get("prompt"))), None)
        if vid is None:
            continue
        stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
        if stamps.get("execution_start") is not None:
            jobs[vid].start = stamps["execution_start"] / 1000
        if stamps.get("execution_success") is not None:
            jobs[vid].success = stamps["execution_success"] / 1000
    progress_times = []
    for hook in hooks:
        body = hook["body"] if isinstance(hook["body"], dict) else {}
        ok = isinstance(hook["status"], int) and 200 <= hook["status"] < 300
        job = jobs.get(hook["video_id"])
        if body.get("status") == "processing":
            progress_times.append(hook["t"])
            if job is not None:
                job.own_progress.append(hook["t"])
        elif job is not None and ok and body.get("status") in FINAL and job.final is None:
            job.final = hook["t"]
    for job in jobs.values():
        if job.success is not None and job.final is not None:
            job.between = sum(job.success <= t <= job.final for t in progress_times)
    return sorted(jobs.values(), key=lambda j: (j.start is None, j.start or 0))


def gaps_ms(jobs: list[JobTimes]) -> list[float]:
    done = [j for j in jobs if j.start is not None and j.success is not None]
    return [(nxt.start - cur.success) * 1000 for cur, nxt in zip(done, done[1:])]


def values(jobs: list[JobTimes], a: str, b: str) -> list[float]:
    return [v for v in (j.ms(a, b) for j in jobs) if v is not None]


def print_jobs(title: str, jobs: list[JobTimes]) -> None:
    """--verbose: each job's times (ms from the run's first claim) and the deltas that make the figures;
    ``progress`` is this job's progress webhooks received, ``between`` those of any job received between
    its success and its final webhook, ``last→final`` from its last progress webhook to its final one."""
    base = min((j.claimed for j in jobs if j.claimed), default=0.0)

    def num(v: float | None, width: int = 8) -> str:
        return f"{'—':>{width}}" if v is None or math.isnan(v) else f"{v:{width}.1f}"

    def rel(t: float | None) -> str:
        return num(None if t is None else (t - base) * 1000)

    print(f"    {title} (ms)")
    print(f"      {'video':25}    claim    start  success    final  claim→start  gap before  success→final  "
          "progress  between  last→final")
    previous: JobTimes | None = None
    for job in jobs:
        gap = (job.start - previous.success) * 1000 if previous and previous.success and job.start else None
        last = max((t for t in job.own_progress if job.final is None or t <= job.final), default=None)
        tail = None if last is None or job.final is None else (job.final - last) * 1000
        print(f"      {job.video_id:25} {rel(job.claimed)} {rel(job.start)} {rel(job.success)} {rel(job.final)}  "
              f"{num(job.ms('claimed', 'start'), 11)} {num(gap, 11)}  {num(job.ms('success', 'final'), 13)}  "
              f"{len(job.own_progress):8d}  {job.between:7d}  {num(tail, 10)}"
              + ("" if job.status == "completed" else f"  {job.status}"))
        previous = job


def check_completed(jobs: list[JobTimes], what: str) -> None:
    bad = [f"{j.video_id}: {j.status}" for j in jobs if j.status != "completed" or j.final is None]
    if bad:
        raise RuntimeError(f"{what}: not every job completed with a delivered final webhook: {bad}")


# ---- the scenarios ------------------------------------------------------------------------------
def back_to_back(stack: Stack, count: int, verbose: bool, title: str, **spec: Any) -> list[JobTimes]:
    """``count`` jobs queued up front on one slot; returns their times once every final webhook is in."""
    ids = stack.queue(count, **spec)
    wait_for(lambda: stack.finished(ids), 60 + 5 * count, f"{title}: {count} jobs", 0.1)
    jobs = job_times(stack, ids)
    check_completed(jobs, title)
    if verbose:
        print_jobs(title, jobs)
    return jobs


def one_at_a_time(stack: Stack, count: int, verbose: bool) -> list[JobTimes]:
    """Queue a job only while the worker is idle: the previous final webhook arrived, the supervisor
    says no job is running, and the worker asked for work (an empty claim) since that job was queued."""
    ids: list[str] = []
    for _ in range(count):
        empty = stack.empty_claims()
        ids += stack.queue(1)
        wait_for(lambda last=ids[-1:]: stack.finished(last), 60, "a job queued alone", 0.02)
        wait_for(lambda before=empty: stack.notify.idle() and stack.empty_claims() > before, 10 + 3 * POLL,
                 "the worker idle again", 0.02)
    jobs = job_times(stack, ids)
    check_completed(jobs, "one at a time")
    if verbose:
        print_jobs("one job at a time", jobs)
    return jobs


def one_slot_run(prefetch: bool | None, plan: Plan, verbose: bool) -> dict[str, float]:
    """Figures 1, 3 and 2 on one fresh one-slot stack (in that order: the first gap is the first job's)."""
    out: dict[str, float] = {}
    with running_stack(1, SAMPLER_ARGS, prefetch) as stack:
        jobs = back_to_back(stack, plan.back_to_back, verbose, "back to back")
        gaps = gaps_ms(jobs)
        out.update(gap=median(gaps), first_gap=gaps[0] if gaps else float("nan"),
                   hook=median(values(jobs, "success", "final")))
        stack.faults(progress_delay=0.3)
        jobs = back_to_back(stack, plan.back_to_back, verbose, "back to back, progress endpoint 300 ms")
        out["hook_slow_instant"] = median(values(jobs, "success", "final"))
        jobs = back_to_back(stack, plan.back_to_back, verbose, "back to back, progress endpoint 300 ms, "
                            "captured tail", patch=CAPTURED_TAIL)
        out["hook_slow"] = median(values(jobs, "success", "final"))
        stack.faults(clear=True)
        wait_for(stack.notify.idle, 30, "the worker idle")
        jobs = one_at_a_time(stack, plan.one_at_a_time, verbose)
        out.update(claim_start=median(values(jobs, "claimed", "start")),
                   hook_single=median(values(jobs, "success", "final")))
    return out


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / MB


def eight_slot_run(prefetch: bool | None, plan: Plan, verbose: bool) -> dict[str, float]:
    """Figures 5 (idle RSS, once start-up settled) and 4 (throughput) on a fresh 8-GPU stack."""
    out: dict[str, float] = {}
    image = padded_png(INPUT_SIZE)
    spec = {"image_b64": base64.b64encode(image).decode()}
    with running_stack(8, ZERO_ARGS, prefetch) as stack:
        ours, comfy = stack.processes()
        samples: list[float] = []

        def settled() -> bool:          # the last 5 samples (1 s) within 1 MB of each other
            samples.append(rss_mb(ours))
            return len(samples) >= 5 and max(samples[-5:]) - min(samples[-5:]) < 1.0

        wait_for(settled, 60, "the idle RSS to settle", 0.25)
        out["rss"] = median(samples[-5:])
        if verbose:
            print(f"    idle: {len(ours)} processes counted (supervisor + workers + helpers), {len(comfy)} ComfyUI "
                  f"left out; RSS each (MB): "
                  + ", ".join(f"{p.pid} {short_cmd(p)} {rss_mb([p]):.0f}" for p in ours))
        before = stack.finished_count()
        calls_before, cpu_before = stack.get("/sim/stats")["task_calls"], cpu_seconds(stack)
        ids = stack.queue(plan.throughput, **spec)
        wait_for(lambda: stack.finished_count() >= before + len(ids), 60 + plan.throughput, "the throughput jobs", 0.2)
        cpu_after, calls_after = cpu_seconds(stack), stack.get("/sim/stats")["task_calls"]
        out["rss_after"] = rss_mb(stack.processes()[0])
        rows = {row["id"]: row for row in stack.get("/sim/videos")}
        finals = {}
        for hook in stack.get("/sim/webhooks"):
            body = hook["body"] if isinstance(hook["body"], dict) else {}
            if body.get("status") in FINAL and hook["video_id"] in rows and hook["video_id"] not in finals:
                finals[hook["video_id"]] = hook["t"]
        failed = [vid for vid in ids if rows[vid]["status"] != "completed"]
        if failed:
            raise RuntimeError(f"throughput: {len(failed)} job(s) not completed, e.g. {rows[failed[0]]}")
        first = min(parse_iso(rows[vid]["dequeued_at"]) for vid in ids)
        last = max(finals[vid] for vid in ids)
        out["throughput"] = len(ids) / (last - first)
        if verbose:
            print_throughput(ids, rows, finals, first, last)
            calls = {code: n - calls_before.get(code, 0) for code, n in calls_after.items()}
            used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
            cpu = ", ".join(f"{name} {sec:.2f} s ({sec / len(ids) * 1000:.1f} ms/job)" for name, sec in used.items())
            print(f"      task calls during the run {calls}; input {len(image)} B; RSS after {out['rss_after']:.0f} MB")
            print(f"      CPU used from queueing to the last final webhook ({sum(used.values()):.2f} s on "
                  f"{os.cpu_count()} cores): {cpu}")
    return out


def print_throughput(ids: list[str], rows: dict[str, dict], finals: dict[str, float], first: float,
                     last: float) -> None:
    """--verbose: how the throughput run went (ramp-up, the middle, the tail)."""
    walls = sorted(finals[v] - parse_iso(rows[v]["dequeued_at"]) for v in ids)
    ends = sorted(finals[v] for v in ids)
    lo, hi = len(ends) // 10, len(ends) - 1 - len(ends) // 10
    middle = (hi - lo) / (ends[hi] - ends[lo]) if ends[hi] > ends[lo] else float("nan")
    print(f"    throughput: {len(ids)} jobs, first claim → last final webhook {last - first:.2f} s; first final "
          f"{(ends[0] - first) * 1000:.0f} ms after the first claim; rate between the 10th and 90th percentile "
          f"final webhooks {middle:.1f} jobs/s; claim → final webhook per job (ms): median "
          f"{median(walls) * 1000:.0f}, p95 {walls[int(0.95 * (len(walls) - 1))] * 1000:.0f}, "
          f"max {walls[-1] * 1000:.0f}")
    claims = sorted(parse_iso(rows[v]["dequeued_at"]) for v in ids)
    spacing = sorted((b - a) * 1000 for a, b in zip(claims, claims[1:]))
    if spacing:
        print(f"      claims one after another (the box claims in turns): spacing between consecutive claims "
              f"median {median(spacing):.0f} ms, p90 {spacing[int(0.9 * (len(spacing) - 1))]:.0f} ms "
              f"(at most {1000 / median(spacing) if median(spacing) else float('inf'):.0f} claims/s at that pace)")
    slowest = sorted(ids, key=lambda v: parse_iso(rows[v]["dequeued_at"]) - finals[v])[:5]
    print("      slowest (claimed at, claim → final webhook, ms): " + ", ".join(
        f"{v} {(parse_iso(rows[v]['dequeued_at']) - first) * 1000:.0f} {(finals[v] - parse_iso(rows[v]['dequeued_at'])) * 1000:.0f}"
        for v in slowest))


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time (user + system) so far of the supervisor, its workers, the simulated ComfyUIs and GmAnimato,
    and this script: where the 2 cores go."""
    ours, comfy = stack.processes()
    groups = {"supervisor": ours[:1], "workers": ours[1:], "ComfyUI sims": comfy,
              "GmAnimato sim": [psutil.Process(stack.gma.pid)], "this script": [psutil.Process()]}
    out = {}
    for name, procs in groups.items():
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        out[name] = total
    return out


def short_cmd(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        args = proc.cmdline()
        for word in ("supervisor.py", "resource_tracker", "forkserver", "multiprocessing"):
            if any(word in a for a in args):
                return word
        return proc.name()
    return "?"


def fleet_figures(runs: int) -> dict[str, float]:
    rows = {row["boxes"]: row for row in fleet_polling.run(FLEET_POLL, 600.0, runs)}
    return {"fleet_rate": rows[1000]["turns_rate"], "fleet_wait": rows[1000]["turns_wait"]}


# ---- the table --------------------------------------------------------------------------------
def verdict(fig: Figure, value: float) -> str:
    if fig.target is None or math.isnan(value):
        return "—"
    if fig.higher_is_better:
        if value >= fig.target:
            return "yes"
        return f"no: {fig.target - value:.3g} {fig.unit} short ({value / fig.target:.0%} of it)"
    if value <= fig.target * fig.slack:
        return "yes"
    return f"no: {value - fig.target:.3g} {fig.unit} over ({value / fig.target:.2f}×)"


def cell(fig: Figure, runs: list[float]) -> str:
    runs = [v for v in runs if not math.isnan(v)]
    if not runs:
        return "—"
    digits = 3 if fig.unit == "s" else 1
    text = f"{statistics.median(runs):,.{digits}f}"
    if len(runs) > 1:
        text += f" [{min(runs):,.{digits}f}–{max(runs):,.{digits}f}]"
    return text


def table(modes: dict[str, dict[str, list[float]]]) -> str:
    names = list(modes)
    head = "| # | figure | unit | target | " + " | ".join(f"{n} | met ({n})" for n in names) + " |"
    lines = [head, "|---|---|---|---|" + "---|---|" * len(names)]
    numbers = {"gap": "1", "claim_start": "2", "hook": "3a", "hook_slow": "3b", "hook_slow_instant": "3b″", "hook_single": "3a′",
               "throughput": "4", "rss": "5", "rss_after": "5′", "fleet_rate": "6a", "fleet_wait": "6b"}
    for fig in FIGURES:
        target = "—" if fig.target is None else ("≥ " if fig.higher_is_better else "≤ ") + f"{fig.target:g}"
        cells = []
        for name in names:
            runs = modes[name].get(fig.key, [])
            value = median([v for v in runs if not math.isnan(v)])
            cells += [cell(fig, runs), verdict(fig, value)]
        lines.append(f"| {numbers[fig.key]} | {fig.name} | {fig.unit} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(modes: dict[str, dict[str, list[float]]], plan: Plan, baseline: bool) -> str:
    first = "; ".join(f"{name}: " + ", ".join(f"{v:.1f}" for v in figs.get("first_gap", []))
                      for name, figs in modes.items())
    lines = [
        f"- Floor of figure 1: real ComfyUI itself leaves {HISTORY_DELAY * 1000:.0f} ms between two queued prompts "
        "(comfyui-protocol/README.md \"On a real GPU\", `ws-queue-two.json`); the simulated ComfyUI is run with "
        f"`--history-delay {HISTORY_DELAY}` to leave the same. The first gap of each run (ms) — {first}.",
        f"- Figures 1-3: one simulated GPU, {plan.back_to_back} jobs queued back to back (3b: twice another "
        f"{plan.back_to_back}, with the simulator's `progress_delay` 0.3 s), then {plan.one_at_a_time} jobs one "
        f"at a time (figures 2, 3a′), in that order on one fresh stack per run; sampler 4 steps × 0.25 s; "
        f"64 KiB videos sent base64 in the webhook (no storage.s3); `api.poll_interval` {POLL:g} s, "
        f"`webhook.progress_interval` {PROGRESS_INTERVAL:g} s. Claim times are GmAnimato's `dequeued_at` "
        "(ms), ComfyUI's times its history timestamps (ms), webhook times the simulator's receive time: one clock.",
        f"- 3b: with `webhook.progress_interval` ({PROGRESS_INTERVAL:g} s) under the step time (0.25 s) every "
        "sampler step sends a progress webhook, the last one as the sampler ends. The worker sends none once "
        "only silent nodes are left (decode, encode, save), so the final webhook waits for that last one only "
        "when those nodes take less than the progress endpoint's 300 ms. As a real ComfyUI ran them for "
        "GmAnimato's workflow (`ws-gmanimato-i2v-vhs.json`: VAEDecode 127 ms, VHS_VideoCombine 794 ms to "
        "`execution_success`; set with the simulator's per-node `sleep`) they take 0.9 s and the wait is "
        "avoided (3b). The simulator's own nodes take ~20 ms (3b″): the final webhook then waits for the sampler's "
        "last progress webhook, as it must (a progress landing after the final one would turn the video back to "
        "processing); only stopping progress earlier, before the sampler's last step, would avoid it.",
        f"- Figures 4-5: 8 simulated GPUs (simulated NVML), ComfyUI `{' '.join(ZERO_ARGS)}`, input image "
        f"{INPUT_SIZE:,} B (base64 in the task), {plan.throughput} jobs queued at once after start-up settled, "
        "outputs base64 (no S3; the template's sampler declares its 4 steps, which take no time); jobs/s = "
        "jobs / (last final webhook − first claim), with both simulators on the same cores. RSS: psutil RSS summed "
        "over the supervisor and every process below it except the simulated ComfyUIs; MB = 2^20 bytes; pages shared "
        "between processes count in each of them.",
        f"- Figure 6: `bench/fleet_polling.py`'s model (`poll_interval` {FLEET_POLL:g} s, workers taking turns), "
        "not measured on processes, and the same whatever `jobs.prefetch` says.",
        f"- Each cell: the median of {plan.runs} run(s) [min–max]; each run's figure is the median over its jobs.",
    ]
    if baseline:
        lines.insert(0, "- **Baseline**: run with `--no-prefetch-key`: the config has no `jobs.prefetch` (code that "
                        "does not know it behaves as prefetch off). Not the issue's final measurement.")
    return "\n".join(lines)


def write_results(path: Path, text: str) -> None:
    """Replace the section (its heading up to the next ``## ``) in place, or append it; the rest is kept."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION_TITLE)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
        return
    end = old.find("\n## ", start + 1)
    rest = old[end + 1:] if end >= 0 else ""
    path.write_text(old[:start] + text.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))


# ---- main -------------------------------------------------------------------------------------
def measure(modes: dict[str, bool | None], plan: Plan, verbose: bool) -> dict[str, dict[str, list[float]]]:
    """Every figure, ``plan.runs`` times per mode (modes alternate, so a slow minute hits both)."""
    results: dict[str, dict[str, list[float]]] = {name: {} for name in modes}
    for index in range(plan.runs):
        for name, prefetch in modes.items():
            print(f"run {index + 1}/{plan.runs}, {name}: one slot ...", flush=True)
            figures = one_slot_run(prefetch, plan, verbose)
            print(f"run {index + 1}/{plan.runs}, {name}: 8 slots ...", flush=True)
            figures.update(eight_slot_run(prefetch, plan, verbose))
            for key, value in figures.items():
                results[name].setdefault(key, []).append(value)
            print("  " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    fleet = fleet_figures(plan.fleet_runs)
    for figures in results.values():
        figures.update({key: [value] for key, value in fleet.items()})
    return results


def section(results: dict[str, dict[str, list[float]]], plan: Plan, baseline: bool, seconds: float) -> str:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    label = " — baseline, no `jobs.prefetch` key" if baseline else ""
    command = " ".join(["bench/pipeline.py", *sys.argv[1:]])
    modes = "without a `jobs.prefetch` key" if baseline else "with `jobs.prefetch` true and false"
    return (f"{SECTION_TITLE}{label} — {day}, {machine()}\n\n"
            f"`.venv/bin/python {command}` ({seconds:.0f} s): the figures of the pipelining issue against the "
            f"simulated GmAnimato and ComfyUI, {modes}.\n\n"
            + table(results) + "\n\n" + notes(results, plan, baseline) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs per figure and mode (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="one run, fewer jobs")
    parser.add_argument("--verbose", action="store_true", help="per-job times, per-process RSS, CPU by process")
    parser.add_argument("--no-prefetch-key", action="store_true",
                        help="leave jobs.prefetch out of the config (code that does not know it): one baseline column")
    parser.add_argument("--no-results", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--results-file", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.runs:
        plan = Plan(args.runs, plan.back_to_back, plan.one_at_a_time, plan.throughput, plan.fleet_runs)
    modes: dict[str, bool | None] = ({"no prefetch key": None} if args.no_prefetch_key
                                     else {"prefetch: true": True, "prefetch: false": False})
    try:
        for prefetch in modes.values():
            check_config(prefetch)
    except ConfigError as exc:
        print(f"config error: {exc}\n(code without jobs.prefetch: run with --no-prefetch-key)", file=sys.stderr)
        return 2
    started = time.monotonic()
    text = section(measure(modes, plan, args.verbose), plan, args.no_prefetch_key, time.monotonic() - started)
    print("\n" + text)
    if not args.no_results:
        write_results(args.results_file, text)
        print(f"written to {args.results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
