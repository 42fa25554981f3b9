#!/usr/bin/env python3
"""Peak memory of the worker process while it moves large files, against the simulators.

Starts the simulated GmAnimato and ComfyUI, a moto S3 server and a small "big answer" HTTP server as
real processes, then runs the real ``local_worker.py`` once per case (a fresh process, a fresh
``state_dir``), sampling its RSS with psutil every 50 ms from the moment the job is queued until its
final webhook has arrived, and reading the kernel's exact peak (``VmHWM``) before it is stopped. Cases:

1. a 1 GiB output delivered to S3 (seconds, final webhook ``completed``, S3 object size checked);
2. a 300 MB output delivered to S3;
3. a 100 MB output with no bucket: fails (larger than ``storage.base64_max_mb``, "configure storage.s3");
4. a webhook answered with a 300 MB body (callback on a host listed in ``api.callback_hosts``);
5. an input image URL serving 300 MB (no Content-Length): cut at ``inputs.max_mb`` = 100, job fails;
6. an input image URL serving 95 MB (no Content-Length): under the cap, downloaded, uploaded to ComfyUI.

Prints a markdown table (peak RSS next to its target) and writes it as the "Memory bounds" section of
``bench/RESULTS.md`` (replacing an older one, keeping the hand-written notes under its marker line); a
trial run (``--only``, ``--big-output`` other than 1 GiB, ``--no-results``) leaves RESULTS.md alone. Every
file lives in one temp folder, removed at the end. Exit code 1 when a target is missed. About 40 s on 2 cores.

    .venv/bin/python bench/memory_bounds.py [--big-output BYTES] [--only CASE ...] [--no-results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1024 * 1024                     # the project's "MB" (inputs.max_mb, storage.base64_max_mb)
GIB = 1024 * MB
SAMPLE_EVERY = 0.05
OUTPUT_NODE = "16"                   # VHS_VideoCombine in the i2v template
BIG_ANSWER = 300 * MB
SECRET = "bench-" + secrets.token_hex(4)
READY = re.compile(r"listening on (http://\S+)")
SECTION_TITLE = "## Memory bounds"
NOTES_MARKER = "<!-- notes below are kept when bench/memory_bounds.py rewrites this section -->"


# ---------------------------------------------------------------- the big-answer server (own process)
def serve_big(log_path: str, size: int) -> None:
    """``POST <any>``: record the JSON body (one line in ``log_path``), answer 200 with ``size`` bytes.
    ``GET <any>``: answer 200 with a PNG signature and then zeros, ``size`` bytes in all (``/bytes/<n>``
    in the path: ``n`` bytes instead, for either method). Both bodies are streamed in 1 MiB pieces with
    no Content-Length (HTTP/1.0, the end is the connection's close), so a client learns the size only by
    reading it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    piece = bytes(MB)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:       # quiet
            pass

        def stream(self, head: bytes, content_type: str) -> int:
            match = re.search(r"/bytes/(\d+)", self.path)
            total = int(match.group(1)) if match else size
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            sent = 0
            try:
                first = head + piece[len(head):]
                self.wfile.write(first)
                sent = len(first)
                while sent < total:
                    chunk = piece[: min(MB, total - sent)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return sent

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            record = {"t": time.time(), "path": self.path,
                      "id": body.get("id") if isinstance(body, dict) else None,
                      "status": body.get("status") if isinstance(body, dict) else None,
                      "error": body.get("error") if isinstance(body, dict) else None}
            with lock, open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            self.stream(b"", "application/json")

        def do_GET(self) -> None:
            self.stream(b"\x89PNG\r\n\x1a\n", "image/png")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


# ---------------------------------------------------------------- helpers
def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    import requests
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class RssSampler:
    """Samples one process's RSS every ``SAMPLE_EVERY`` seconds in a thread: (monotonic time, bytes)."""

    def __init__(self, pid: int) -> None:
        import psutil
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        import psutil
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(SAMPLE_EVERY)

    def window(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in list(self.samples) if start <= t <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Case:
    key: str
    title: str                      # the table's first column
    target_mb: float
    spec: dict                      # POST /sim/jobs body (without video_id)
    s3: bool = True
    callback: bool = False          # webhooks go to the big-answer server
    expect: str = "completed"       # final status
    expect_text: str = ""           # in the failed error
    note: str = ""
    result: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the stack
class Stack:
    def __init__(self, tmp: Path, big_output: int) -> None:
        self.tmp = tmp
        self.big_output = big_output
        self.procs: list = []
        self.gma = self.comfy = self.big = None
        self.moto: subprocess.Popen | None = None
        self.s3_endpoint = ""
        self.s3 = None
        self.big_log = tmp / "big-answers.jsonl"

    def start(self) -> None:
        import boto3

        from worker.sim.launch import COMFYUI_READY, GMANIMATO_READY, start_sim

        self.gma = start_sim("worker.sim.gmanimato", ["--port", "0", "--secret", SECRET], GMANIMATO_READY)
        self.procs.append(self.gma)
        self.comfy = start_sim("worker.sim.comfyui", [
            "--port", "0", "--cpu", "--base-directory", str(self.tmp / "comfy"), "--steps", "2",
            "--step-time", "0.02", "--node-time", "0.005", "--preview-method", "none"], COMFYUI_READY, timeout=30)
        self.procs.append(self.comfy)
        self.big = start_sim("bench.memory_bounds", ["--serve-big", str(self.big_log), str(BIG_ANSWER)], READY)
        self.procs.append(self.big)
        port = free_port()
        self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp)
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(self.s3_endpoint + "/moto-api/"), 30, "the moto S3 server")
        self.s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
        self.s3.create_bucket(Bucket="videos")

    def stop(self) -> None:
        if self.moto is not None:
            stop_process(self.moto)
        for sim in reversed(self.procs):
            sim.stop()

    # ---- GmAnimato sim
    def get(self, path: str, **params):
        import requests
        response = requests.get(self.gma.url + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def add_job(self, spec: dict) -> str:
        import requests
        response = requests.post(f"{self.gma.url}/sim/jobs", json=spec, timeout=10)
        if response.status_code != 201:
            raise RuntimeError(f"POST /sim/jobs answered {response.status_code}: {response.text[:300]}")
        return response.json()["video_id"]

    def gma_final(self, video_id: str) -> dict | None:
        for hook in self.get("/sim/webhooks", video_id=video_id):
            body = hook["body"]
            if isinstance(body, dict) and body.get("status") in ("completed", "failed") \
                    and hook["status"] and 200 <= hook["status"] < 300:
                return {**body, "_t": hook["t"], "_http": hook["status"]}
        return None

    def big_finals(self, job_id: str) -> list[dict]:
        if not self.big_log.exists():
            return []
        rows = [json.loads(line) for line in self.big_log.read_text(encoding="utf-8").splitlines() if line]
        return [r for r in rows if r["id"] == job_id and r["status"] in ("completed", "failed")]

    def big_posts(self, job_id: str) -> int:
        if not self.big_log.exists():
            return 0
        return sum(1 for line in self.big_log.read_text(encoding="utf-8").splitlines()
                   if line and json.loads(line)["id"] == job_id)

    def task_polls(self) -> int:
        return sum(self.get("/sim/stats")["task_calls"].values())

    # ---- a worker run
    def worker_config(self, case: Case) -> dict:
        tree: dict = {
            "api": {"url": self.gma.url, "secret": SECRET, "poll_interval": 0.2, "backoff_cap": 2},
            "webhook": {"max_retries": 2, "progress_interval": 0.5, "retry_delay": 0.2},
            "logging": {"level": "info"},
        }
        if case.s3:
            tree["storage"] = {"s3": {"endpoint_url": self.s3_endpoint, "bucket": "videos",
                                      "access_key_id": "testing", "secret_access_key": "testing",
                                      "region": "us-east-1"}}
        if case.callback:
            tree["api"]["callback_hosts"] = [self.big.url.split("//", 1)[1]]
        return tree

    def run_case(self, case: Case) -> None:
        import yaml

        folder = self.tmp / f"case-{case.key}"
        folder.mkdir()
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump(self.worker_config(case)))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUCKET_", "WORKER_", "GMANIMATO_", "COMFY_", "STATE_DIRECTORY"))}
        env.update({"COMFY_HOST": self.comfy.url.split("//", 1)[1], "STATE_DIRECTORY": str(folder / "state"),
                    "WORKER_SENTINEL_FILE": str(folder / ".worker_stop"), "PYTHONUNBUFFERED": "1"})
        polls = self.task_polls()
        with open(folder / "worker.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, "local_worker.py", "--config", str(config)], cwd=ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = RssSampler(worker.pid)
            try:
                self.measure(case, worker, sampler, folder, polls)
            finally:
                sampler.stop()
                stop_process(worker, 30)
        result = case.result
        result["exit"] = worker.returncode
        result["journal"] = journal_row(folder / "state" / "journal.sqlite3", result.get("job_id", ""))

    def measure(self, case: Case, worker: subprocess.Popen, sampler: RssSampler, folder: Path, polls: int) -> None:
        """Idle RSS, then one job from its queuing to its final webhook (+0.5 s): into ``case.result``."""
        result = case.result
        # idle: the worker has polled the empty queue at least twice; then one quiet second
        wait_for(lambda: worker.poll() is not None or self.task_polls() >= polls + 2, 30, "the worker's polls")
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}: "
                               f"{(folder / 'worker.log').read_text(errors='replace')[-2000:]}")
        quiet_from = time.monotonic()
        time.sleep(1.0)
        idle = sampler.window(quiet_from, time.monotonic())
        result["idle"] = sorted(idle)[len(idle) // 2] if idle else 0

        video_id = "membench" + secrets.token_hex(8)
        spec = json.loads(json.dumps(case.spec).replace("{video_id}", video_id))
        started = time.monotonic()
        self.add_job({**spec, "video_id": video_id})
        job_id = f"local-{video_id}"
        what = f"the final webhook of {case.key}"
        if case.callback:
            final = wait_for(lambda: (self.big_finals(job_id) or [None])[0], 240, what, 0.05)
        else:
            final = wait_for(lambda: self.gma_final(video_id), 240, what, 0.05)
        ended = time.monotonic()
        time.sleep(0.5)                      # the journal's record of the delivery, a retry if any
        peak_window = sampler.window(started, time.monotonic())
        hwm = high_water_mark(worker.pid)
        result.update(video_id=video_id, job_id=job_id, final=final, seconds=ended - started,
                      sampled_peak=max(peak_window), hwm=hwm, peak=max([max(peak_window), hwm or 0]),
                      samples=len(peak_window))
        if case.callback:
            result["finals_received"] = len(self.big_finals(job_id))
            result["posts_received"] = self.big_posts(job_id)

    def history(self, prompt_id: str) -> dict:
        import requests
        return requests.get(f"{self.comfy.url}/history/{prompt_id}", timeout=10).json().get(prompt_id, {})


def high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS of the process over its whole life (``VmHWM``), in bytes; None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def journal_row(path: Path, job_id: str) -> dict:
    """The job's journal row (phase, sends, last_http, prompt_id), read after the worker exited."""
    if not path.exists() or not job_id:
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT phase, sends, last_http, prompt_id FROM jobs WHERE job_id = ?",
                               (job_id,)).fetchone()
            return dict(row) if row else {}
    except sqlite3.Error as exc:
        return {"error": str(exc)}


# ---------------------------------------------------------------- cases and checks
def make_cases(big_output: int) -> list[Case]:
    def output(size: int) -> dict:
        return {"template": "i2v", "patch": {OUTPUT_NODE: {"_meta": {"sim": {"output_size": size}}}}}

    gib = f"{big_output / GIB:g} GiB" if big_output >= GIB else f"{big_output / MB:g} MB"
    return [
        Case("s3-big", f"{gib} output to S3", 150, output(big_output)),
        Case("s3-300", "300 MB output to S3", 150, output(300 * MB)),
        Case("inline-100", "100 MB output, no bucket (base64, storage.base64_max_mb 32)", 150, output(100 * MB),
             s3=False, expect="failed", expect_text="configure storage.s3"),
        Case("answer-300", "webhook answered with a 300 MB body (callback in api.callback_hosts)", 150,
             {"template": "i2v", "input_patch": {"callback_url": "{big}/big"}}, callback=True),
        Case("input-300", "input image URL serving 300 MB, no Content-Length (inputs.max_mb 100)", 250,
             {"template": "i2v", "input_patch": {"images": [{"name": "{video_id}.png", "image": "{big}/big.png"}]}},
             expect="failed", expect_text="larger than 100 MB",
             note="inputs are held in memory up to inputs.max_mb, so the bound is higher"),
        Case("input-95", "input image URL serving 95 MB, no Content-Length (accepted: under inputs.max_mb)", 250,
             {"template": "i2v", "input_patch": {"images": [{"name": "{video_id}.png",
                                                            "image": f"{{big}}/bytes/{95 * MB}.png"}]}},
             note="as above"),
    ]


def check(case: Case, stack: Stack, big_output: int) -> list[str]:
    """What the case must show besides its peak; returns the problems (empty: all good)."""
    r, problems = case.result, []
    final = r.get("final") or {}
    if final.get("status") != case.expect:
        problems.append(f"final status {final.get('status')!r}, expected {case.expect!r} ({final.get('error', '')})")
    if case.expect_text and case.expect_text not in (final.get("error") or ""):
        problems.append(f"error {final.get('error')!r} does not say {case.expect_text!r}")
    phase = r.get("journal", {}).get("phase")
    if phase != "delivered":
        problems.append(f"journal phase {phase!r}, expected 'delivered'")
    if case.callback and r.get("finals_received") != 1:
        problems.append(f"{r.get('finals_received')} final webhooks reached the callback, expected 1")
    if case.key.startswith("s3-") and final.get("status") == "completed":
        files = final.get("files") or []
        url = files[0]["data"] if files else ""
        key = url.split("/videos/", 1)[-1]
        try:
            size = stack.s3.head_object(Bucket="videos", Key=key)["ContentLength"]
        except Exception as exc:                     # noqa: BLE001 (reported, not raised)
            size = None
            problems.append(f"head_object {key}: {exc}")
        expected = big_output if case.key == "s3-big" else 300 * MB
        r["s3_size"] = size
        if size is not None and size != expected:
            problems.append(f"S3 object is {size} bytes, expected {expected}")
        prompt_id = r.get("journal", {}).get("prompt_id")
        history = stack.history(prompt_id) if prompt_id else {}
        times = {name: data.get("timestamp") for name, data in history.get("status", {}).get("messages", [])}
        if times.get("execution_success") and final.get("_t"):
            r["deliver_s"] = final["_t"] - times["execution_success"] / 1000.0
        try:
            stack.s3.delete_object(Bucket="videos", Key=key)      # moto keeps objects in its memory
        except Exception as exc:                                   # noqa: BLE001 (only tidying)
            print(f"   (could not delete s3://videos/{key}: {exc})", flush=True)
    return problems


def outcome_text(case: Case, big_output: int) -> str:
    r = case.result
    final = r.get("final") or {}
    status = final.get("status", "no final webhook")
    parts = [f"`{status}`"]
    if case.key.startswith("s3-") and "s3_size" in r:
        parts.append(f"S3 object {r['s3_size']:,} B" + (" (= expected)" if r["s3_size"] in (big_output, 300 * MB)
                                                       else ""))
    if "deliver_s" in r:
        parts.append(f"stored + webhook {r['deliver_s']:.1f} s after ComfyUI finished")
    if case.callback:
        parts.append(f"{r.get('posts_received', 0)} POSTs answered with 300 MB each, "
                     f"final received {r.get('finals_received', 0)}×")
    if final.get("error"):
        error = final["error"]
        parts.append(f'"{error[:110]}{"…" if len(error) > 110 else ""}"')
    phase = r.get("journal", {}).get("phase")
    parts.append(f"journal: {phase}")
    return "; ".join(parts)


def machine_line() -> str:
    import psutil

    def run(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    date = run(["date", "-u", "+%Y-%m-%d"])
    cores = run(["nproc"])
    ram = psutil.virtual_memory().total / GIB
    python = run([sys.executable, "--version"]) or f"Python {platform.python_version()}"
    return f"{date}, {cores}-core {platform.machine()} box, {ram:.0f} GiB RAM, {python}, {platform.system()}"


def table(cases: list[Case], baseline: dict, big_output: int) -> str:
    lines = [("| case | outcome | idle RSS before the job (MB) | peak worker RSS (MB) | sampled peak (MB) "
              "| target (MB) | met | s |"),
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| baseline: worker idle after start (S3 configured; {baseline.get('inline', 0) / MB:.0f} MB "
                 f"with no bucket) | polling an empty queue | {baseline.get('s3', 0) / MB:.0f} | "
                 f"| | | | |")
    for case in cases:
        r = case.result
        if "peak" not in r:
            lines.append(f"| {case.title} | did not finish: {r.get('error', '?')} | | | | ≤ {case.target_mb:g} "
                         "| no | |")
            continue
        met = "yes" if r["peak"] <= case.target_mb * MB and not r.get("problems") else "**no**"
        target = f"≤ {case.target_mb:g}" + (f" ({case.note})" if case.note else "")
        outcome = outcome_text(case, big_output)
        if r.get("problems"):
            outcome += "; **" + "; ".join(r["problems"]) + "**"
        lines.append(f"| {case.title} | {outcome} | {r['idle'] / MB:.0f} | {r['peak'] / MB:.0f} | "
                     f"{r['sampled_peak'] / MB:.0f} | {target} | {met} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def write_results(section: str) -> None:
    """Append the section, or replace the one there; notes written by hand below ``NOTES_MARKER`` in the old
    section are kept."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(SECTION_TITLE)), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        kept_after = "\n".join(lines[end:])
        notes = next((i for i in range(start, end) if lines[i].strip() == NOTES_MARKER), None)
        if notes is not None:
            section = section.rstrip("\n") + "\n\n" + "\n".join(lines[notes:end]).rstrip("\n") + "\n"
        new = "\n".join(lines[:start]).rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
        if kept_after.strip():
            new += "\n" + kept_after.rstrip("\n") + "\n"
    path.write_text(new, encoding="utf-8")


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-output", type=int, default=GIB, help="bytes of case 1's output (default 1 GiB)")
    parser.add_argument("--no-results", action="store_true", help="print the table only; leave RESULTS.md alone")
    parser.add_argument("--only", action="append", default=[], help="run only these case keys (repeatable)")
    parser.add_argument("--serve-big", nargs=2, metavar=("LOG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_big:
        serve_big(args.serve_big[0], int(args.serve_big[1]))
        return 0

    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="memory-bounds-"))
    stack = Stack(tmp, args.big_output)
    cases = [c for c in make_cases(args.big_output) if not args.only or c.key in args.only]
    baseline: dict = {}
    try:
        stack.start()
        for case in cases:
            case.spec = json.loads(json.dumps(case.spec).replace("{big}", stack.big.url))
            print(f"-- {case.key}: {case.title}", flush=True)
            try:
                stack.run_case(case)
                case.result["problems"] = check(case, stack, args.big_output)
            except Exception as exc:                 # noqa: BLE001 (one case failing must not hide the others)
                case.result["error"] = f"{type(exc).__name__}: {exc}"
                print(f"   failed: {case.result['error']}", flush=True)
                continue
            baseline.setdefault("s3" if case.s3 else "inline", case.result["idle"])
            r = case.result
            print(f"   idle {r['idle'] / MB:.0f} MB, peak {r['peak'] / MB:.0f} MB (sampled "
                  f"{r['sampled_peak'] / MB:.0f}; target {case.target_mb:g}), "
                  f"{r['seconds']:.1f} s, {outcome_text(case, args.big_output)}"
                  + (f"; PROBLEMS: {r['problems']}" if r["problems"] else ""), flush=True)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    body = table(cases, baseline, args.big_output)
    heading = f"{SECTION_TITLE} (bench/memory_bounds.py) — {machine_line()}"
    intro = (
        "`.venv/bin/python bench/memory_bounds.py`: the real `local_worker.py` (a fresh process per case) "
        "against the simulated GmAnimato and ComfyUI (`--cpu`), a moto S3 server and a local server that "
        "answers every request with 300 MB (streamed, no Content-Length). The worker's RSS is sampled with "
        f"psutil every {SAMPLE_EVERY * 1000:.0f} ms from the moment the job is queued until its final webhook "
        "has arrived (+0.5 s): \"sampled peak\". \"peak\" is the larger of that and the kernel's high-water "
        "mark of the process (`VmHWM` in `/proc/<pid>/status`: exact, over its whole life, i.e. startup, idle "
        "and the one job; short spikes slip between samples). MB = 2^20 bytes, as in the config's `*_mb` "
        "keys. `s`: job queued to final "
        "webhook received (it includes ComfyUI writing the file). Every case also checks that the journal "
        "recorded the final webhook as delivered."
    )
    missed = [c for c in cases if "peak" not in c.result or c.result["peak"] > c.target_mb * MB
              or c.result.get("problems")]
    summary = ("All targets met." if not missed else
               "Missed: " + ", ".join(f"{c.key} ({c.result.get('peak', 0) / MB:.0f} MB)" for c in missed) + ".")
    section = f"{heading}\n\n{intro}\n\n{body}\n\n{summary}\n"
    print()
    print(section)
    print(f"(bench wall time {time.monotonic() - began:.0f} s)")
    if not args.no_results and not args.only and args.big_output == GIB:
        write_results(section)
        print("written to bench/RESULTS.md")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
