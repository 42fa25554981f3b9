#!/usr/bin/env python3
"""Idle claims of a fleet: how many claims per second GmAnimato sees, and how long a newly queued job
waits for its first claim, for 1, 10, 100 and 1,000 idle 8-GPU boxes (a model: no network).

Before: every worker polls on its own every ``poll_interval`` (boxes started together poll in lockstep;
"random phase" is the kindest case). Now: the workers of a box take turns
(:mod:`worker.jobs.claim_turns`): one claim per box per ``poll_interval`` with ±20 % jitter, the first
at a random point of the first interval — the schedule is built with the worker's own
``first_claim_at``/``next_claim_at``. A claim is answered at once (the API's time is not modelled: at these
rates it is a few ms); a job queued at a random moment of an idle fleet starts at the fleet's next claim.
Each figure is the median of ``--runs`` runs.

    .venv/bin/python bench/fleet_polling.py [--poll 5] [--seconds 600] [--runs 5] [--no-results]
"""
from __future__ import annotations

import argparse
import bisect
import platform
import random
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.jobs import pacing as pc  # noqa: E402
from worker.jobs.claim_turns import first_claim_at, next_claim_at  # noqa: E402

GPUS_PER_BOX = 8
FLEETS = (1, 10, 100, 1000)
ARRIVALS = 20_000
SECTION_TITLE = "## Fleet polling"


def claims_per_worker(boxes: int, poll: float, seconds: float, rng: random.Random, lockstep: bool) -> list[float]:
    """Before: each of ``boxes`` x 8 workers claims every ``poll`` s (all at 0 when in lockstep)."""
    times: list[float] = []
    for _ in range(boxes * GPUS_PER_BOX):
        t = 0.0 if lockstep else rng.uniform(0.0, poll)
        while t < seconds:
            times.append(t)
            t += poll
    return times


def claims_per_box(boxes: int, poll: float, seconds: float, rng: random.Random) -> list[float]:
    """Now: one turn per box, scheduled by the worker's own functions (an idle queue: every claim empty)."""
    times: list[float] = []
    for _ in range(boxes):
        t = first_claim_at(0.0, poll, rng)
        while t < seconds:
            times.append(t)
            t = next_claim_at(t, pc.EMPTY, poll, poll, rng)
    return times


def measure(times: list[float], seconds: float, poll: float, rng: random.Random) -> tuple[float, float]:
    """(claims per second, mean wait of a job queued at a random moment for the next claim)."""
    times.sort()
    waits = []
    for _ in range(ARRIVALS):
        arrival = rng.uniform(poll, seconds - 2 * poll)     # away from the edges of the window
        waits.append(times[bisect.bisect_left(times, arrival)] - arrival)
    return len(times) / seconds, statistics.fmean(waits)


def run(poll: float, seconds: float, runs: int, seed: int = 1) -> list[dict]:
    rows = []
    for boxes in FLEETS:
        figures: dict[str, list[float]] = {}
        for index in range(runs):
            rng = random.Random(seed * 1000 + index)
            for name, times in (("lockstep", claims_per_worker(boxes, poll, seconds, rng, True)),
                                ("phase", claims_per_worker(boxes, poll, seconds, rng, False)),
                                ("turns", claims_per_box(boxes, poll, seconds, rng))):
                rate, wait = measure(times, seconds, poll, rng)
                figures.setdefault(f"{name}_rate", []).append(rate)
                figures.setdefault(f"{name}_wait", []).append(wait)
        rows.append({"boxes": boxes, **{k: statistics.median(v) for k, v in figures.items()}})
    return rows


def table(rows: list[dict], poll: float) -> str:
    lines = [f"`poll_interval` = {poll:g} s, 8 GPUs a box, all idle. Claims/s: what GmAnimato sees. Wait: mean "
             "time from a job being queued to its first claim.",
             "",
             "| boxes | before, lockstep: claims/s | before, lockstep: wait (s) | before, random phase: claims/s | "
             "before, random phase: wait (s) | now (turns): claims/s | now: wait (s) | target: claims/s ≤ | "
             "target: wait ≤ (s) | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        limit_rate = row["boxes"] / poll
        limit_wait = poll / 2 if row["boxes"] == 1000 else None       # the target: 1,000 boxes
        met = row["turns_rate"] <= limit_rate * 1.02 and (limit_wait is None or row["turns_wait"] <= limit_wait)
        lines.append(f"| {row['boxes']:,} | {row['lockstep_rate']:,.1f} | {row['lockstep_wait']:.3f} | "
                     f"{row['phase_rate']:,.1f} | {row['phase_wait']:.3f} | {row['turns_rate']:,.1f} | "
                     f"{row['turns_wait']:.4f} | {limit_rate:,.1f} | {'—' if limit_wait is None else f'{limit_wait:g}'} | "
                     f"{'yes' if met else 'no'} |")
    lines += ["", "One box now waits about `poll_interval` / 2 for a new job (one claim per interval) where its 8 "
              "workers polling apart waited about `poll_interval` / 8 — the price of 8 times fewer claims; on a fleet "
              "the boxes' claims interleave and the wait falls as 1 / boxes. Boxes started together no longer "
              "poll in lockstep (before: every claim of the fleet in one burst, and a job waited `poll_interval` "
              "/ 2 whatever the fleet's size)."]
    return "\n".join(lines)


def machine() -> str:
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or "?"
    return f"{cores}-core {platform.machine()} box, Python {platform.python_version()}"


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    section = (f"{SECTION_TITLE} (bench/fleet_polling.py) — {day}, {machine()}\n\n"
               "A model, no network: the claim schedule of every worker (before) or box (now, built with "
               "`worker.jobs.claim_turns`), and jobs queued at random moments. Each figure is the median of "
               "several runs of 600 simulated seconds.\n\n" + text + "\n")
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION_TITLE)
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[:start] + old[end + 1:] if end >= 0 else old[:start]
    path.write_text(old.rstrip("\n") + "\n\n" + section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-results", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    text = table(run(args.poll, args.seconds, args.runs), args.poll)
    print(text)
    if not args.no_results:
        write_results(text)
        print("\nwritten to bench/RESULTS.md")


if __name__ == "__main__":
    main()
