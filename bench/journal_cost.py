#!/usr/bin/env python3
"""What the journal costs one job: wall time of its writes, and fsyncs (counted with strace).

Each simulated job makes the writes a real one makes, in order: claim (with the task), ids, attempt,
inputs uploaded, prompt queued, outputs stored, final queued, delivered. Three cases: a small task and
an S3 URL; a task carrying a base64 image of ``--task-kib`` KiB (GmAnimato's default base64 image mode)
and an S3 URL; the same with the video itself inline (no bucket: ``--video-kib`` KiB of base64 in the
outputs and the webhook). The journal lives in ``--dir`` (default: a folder under bench/, on the disk
the worker would use; /tmp may be a RAM disk where fsync is free). ``tidy`` (old blobs, WAL
checkpoint) runs in the background in the worker and is timed apart.

    .venv/bin/python bench/journal_cost.py [--jobs 300] [--task-kib 1024] [--write-results]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.journal.phases import Phase  # noqa: E402
from worker.journal.store import Journal  # noqa: E402

WRITES_PER_JOB = 8


def b64(kib: int) -> str:
    return base64.b64encode(os.urandom(kib * 768)).decode()              # base64 of 3/4 KiB -> 1 KiB


def task_text(index: int, task_kib: int) -> str:
    image = b64(task_kib)
    return json.dumps({"id": f"local-bench{index}", "input": {
        "images": [{"name": f"bench{index}.png", "image": f"data:image/png;base64,{image}"}],
        "workflow": {"44": {"class_type": "WanMoeKSampler", "inputs": {}}}, "node_weights": {"44": 60}}})


def one_job(journal: Journal, index: int, task: str, video: str) -> float:
    started = time.perf_counter()
    now = time.time()
    seq = journal.record_claim("gpu0", task, now).seq
    journal.identify(seq, f"local-bench{index}", f"bench{index}", "http://gm/cb", "http://gm/cb", now)
    journal.start_attempt(seq, now)
    journal.inputs_uploaded(seq, now)
    journal.prompt_queued(seq, f"local-bench{index}-p", "client", "http://127.0.0.1:8188", now)
    files = [{"filename": "Wan22_00001_.mp4", "type": "base64", "data": video} if video else
             {"filename": "Wan22_00001_.mp4", "type": "s3_url", "data": "http://s3/videos/k/Wan22_00001_.mp4"}]
    journal.outputs_stored(seq, files, now)
    journal.queue_final(seq, {"id": f"local-bench{index}", "status": "completed", "files": files}, now,
                        files_stored=True)
    journal.close_job(seq, Phase.DELIVERED, now, 1, 201)
    return time.perf_counter() - started


def measure(folder: Path, jobs: int, task_kib: int, video_kib: int) -> tuple[list[float], list[float]]:
    """Per-job times of the job's own writes, and of tidy() after each job."""
    journal = Journal.open(folder)
    tasks = [task_text(i, task_kib) for i in range(min(jobs, 20))]
    video = b64(video_kib) if video_kib else ""
    times, tidies = [], []
    for i in range(jobs):
        times.append(one_job(journal, i, tasks[i % len(tasks)], video))
        started = time.perf_counter()
        journal.tidy()
        tidies.append(time.perf_counter() - started)
    journal.close()
    return times, tidies


def count_fsyncs(folder: Path, jobs: int, task_kib: int, video_kib: int) -> int | None:
    """fsync + fdatasync calls of ``jobs`` jobs (minus those of opening the journal), or None without strace."""
    if not shutil.which("strace"):
        return None

    def calls(count: int) -> int:
        target = folder / f"strace-{count}"
        out = subprocess.run(["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", sys.executable,
                              __file__, "--inner", str(count), "--task-kib", str(task_kib), "--video-kib",
                              str(video_kib), "--dir", str(target)],
                             capture_output=True, text=True, timeout=600)
        total = 0
        for name in ("fsync", "fdatasync"):
            match = re.search(rf"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?{name}\s*$", out.stderr, re.M)
            total += int(match.group(1)) if match else 0
        return total

    return calls(jobs) - calls(0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--task-kib", type=int, default=1024)
    parser.add_argument("--video-kib", type=int, default=5120)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write-results", action="store_true", help="replace the section in bench/RESULTS.md")
    args = parser.parse_args()
    if args.inner is not None:              # the child run under strace
        measure(args.dir, args.inner, args.task_kib, args.video_kib)
        return 0
    base = args.dir or Path(tempfile.mkdtemp(prefix="journal-bench-", dir=ROOT / "bench"))
    try:
        rows = []
        for case, (task_kib, video_kib) in enumerate(((1, 0), (args.task_kib, 0), (args.task_kib, args.video_kib))):
            jobs = args.jobs if not video_kib else max(20, args.jobs // 5)
            times, tidies = measure(base / f"time-{case}", jobs, task_kib, video_kib)
            counted = min(jobs, 100)
            fsyncs = count_fsyncs(base, counted, task_kib, video_kib)
            rows.append((task_kib, video_kib, jobs, statistics.median(times) * 1000, percentile(times, 0.95) * 1000,
                         None if fsyncs is None else fsyncs / counted, statistics.median(tidies) * 1000))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    table = render(rows, args.jobs)
    print(table)
    if args.write_results:
        write_results(table, args)
    return 0


def render(rows: list[tuple], jobs: int) -> str:
    lines = ["| task | output in the webhook | jobs | journal time per job, median (ms) | p95 (ms) | fsyncs per job "
             "(incl. tidy) | tidy, background (ms) | target |", "|---|---|---|---|---|---|---|---|"]
    for task_kib, video_kib, count, median, p95, fsyncs, tidy in rows:
        shown = "n/a (no strace)" if fsyncs is None else f"{fsyncs:.1f}"
        output = f"{video_kib} KiB base64 video" if video_kib else "S3 URL"
        lines.append(f"| {task_kib} KiB | {output} | {count} | {median:.2f} | {p95:.2f} | {shown} | {tidy:.1f} | "
                     "under 1 % of a 60 s job (600 ms) |")
    return "\n".join(lines) + f"\n\n{WRITES_PER_JOB} committed writes per job."


def write_results(table: str, args: argparse.Namespace) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text()
    heading = "## bench/journal_cost.py"
    section = (f"{heading} — {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core {platform.machine()} box, "
               f"{platform.system()} (SQLite {__import__('sqlite3').sqlite_version}, WAL, synchronous=FULL)\n\n"
               f"`.venv/bin/python bench/journal_cost.py --jobs {args.jobs} --task-kib {args.task_kib} --video-kib "
               f"{args.video_kib}`: the journal's writes for one job, from its claim to its delivered final webhook, "
               "on this machine's disk. fsyncs are counted with `strace -c` (fsync + fdatasync). A base64 video "
               "(no bucket) is written once, durably, before the webhook: that write is the cost of not losing "
               "it; with S3 only its URL is.\n\n" + table + "\n")
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
