"""A slot's overlapping jobs: when the next job may be claimed, how long the running one has left, and
the lanes that run them (pure decisions, and the thread-safe state behind them)."""
from __future__ import annotations

import threading

import pytest

from handler.errors import ComfyUnavailable, ExecutionFailed, InputError, StorageError
from worker.jobs.pipeline import (IDLE, MAX_DELIVERING, PREFETCH, JobLanes, SlotLoad, claim_kind, slot_fault,
                                  time_left)


def test_time_left_counts_the_points_since_the_sampler_began_over_the_time_since_the_prompt_began():
    assert time_left(10.0, 10.0, 3.0) is None            # one step seen: no gain yet
    assert time_left(10.0, 40.0, 3.0) == pytest.approx(6.0)   # 30 points in 3 s, 60 to go
    assert time_left(10.0, 80.0, 7.0) == pytest.approx(2.0)
    assert time_left(10.0, 100.0, 7.0) == 0.0
    assert time_left(10.0, 40.0, -1.0) is None           # a clock step back gives no estimate
    assert time_left(10.0, 11.0, 3.0) == pytest.approx(267.0)   # two frames at once: no fast rate


@pytest.mark.parametrize("load, prefetch, faulted, expected", [
    (SlotLoad(0, 0, None), True, False, IDLE),
    (SlotLoad(0, 1, None), False, True, IDLE),                   # delivering behind the GPU: claim anyway
    (SlotLoad(0, MAX_DELIVERING, None), True, False, None),      # ... but not an unbounded backlog
    (SlotLoad(1, 0, 3.0), True, False, PREFETCH),                # near its end: queue the next behind it
    (SlotLoad(1, 0, 3.0), False, False, None),                   # jobs.prefetch: false
    (SlotLoad(1, 0, 3.0), True, True, None),                     # the last job failed for the slot's fault
    (SlotLoad(1, 0, 30.0), True, False, None),                   # minutes away: no hoarding
    (SlotLoad(1, 0, None), True, False, None),                   # not started, or no progress yet
    (SlotLoad(2, 0, 0.0), True, False, None),                    # one executing, one queued: enough
])
def test_claim_kind(load, prefetch, faulted, expected):
    assert claim_kind(load, prefetch, 10.0, faulted) == expected


def test_what_counts_as_the_slots_fault():
    assert slot_fault(ComfyUnavailable("gone")) and slot_fault(StorageError("503"))
    assert slot_fault(RuntimeError("a bug of ours"))
    assert not slot_fault(InputError("bad image")) and not slot_fault(ExecutionFailed("node raised"))
    assert not slot_fault(None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lanes_track_the_gpu_and_the_deliveries():
    clock = Clock()
    lanes = JobLanes(clock)
    go = {name: threading.Event() for name in ("a", "b")}
    lanes.start("a", lambda: go["a"].wait(10), "job-a")
    assert lanes.load() == SlotLoad(1, 0, None)          # claimed, not started: nothing known yet
    lanes.started("a")
    lanes.progressed("a", 10.0, in_node=False)            # loaders: quick for their weight, not a rate
    assert lanes.load().head_left is None
    clock.now += 1.0
    lanes.progressed("a", 20.0, in_node=True)             # the sampler's first step: the base
    clock.now += 5.0
    lanes.progressed("a", 80.0, in_node=True)             # 60 points in the 6 s since the start: 2 s to go
    assert lanes.load().head_left == pytest.approx(2.0)
    clock.now += 6.0                                      # no frame since: the rate falls, the estimate grows
    assert lanes.load().head_left == pytest.approx(4.0)
    lanes.start("b", lambda: go["b"].wait(10), "job-b")
    assert lanes.load().on_gpu == 2
    lanes.release("a")                                    # execution_success: a delivers, b has the GPU
    assert lanes.load() == SlotLoad(1, 1, None)
    lanes.progressed("unknown", 50.0, True)                   # a recovered job, not run through the lanes
    go["a"].set()
    go["b"].set()
    assert lanes.join(10)
    assert lanes.load() == SlotLoad(0, 0, None) and not lanes.busy()


def test_a_job_thread_that_lets_an_exception_out_hands_it_to_the_loop():
    lanes = JobLanes()

    def broken() -> None:
        raise OSError("journal disk full")

    lanes.start("a", broken, "job-a")
    assert lanes.join(10)
    assert not lanes.busy()                               # its lane is freed
    with pytest.raises(OSError, match="disk full"):
        lanes.raise_failure()
    lanes.raise_failure()                                 # raised once


def test_wait_returns_when_a_job_moves():
    lanes = JobLanes()
    release = threading.Event()
    lanes.start("a", lambda: release.wait(10), "job-a")
    woke = threading.Event()

    def waiter() -> None:
        lanes.wait(30)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    lanes.release("a")                                    # may come before the waiter waits: poke again
    while not woke.wait(0.05):
        lanes.poke()
    release.set()
    thread.join(10)
    assert lanes.join(10)


def test_a_job_whose_comfyui_went_away_forgets_its_estimate_and_blocks_prefetch_until_it_completes():
    clock = Clock()
    lanes = JobLanes(clock)
    done = threading.Event()
    lanes.start("a", lambda: done.wait(10), "job-a")
    lanes.started("a")
    lanes.progressed("a", 20.0, in_node=True)
    clock.now += 4.0
    lanes.progressed("a", 95.0, in_node=True)
    assert lanes.load().head_left == pytest.approx(4.0 * 5 / 75) and not lanes.load().faulted
    lanes.faulted("a")                                    # ComfyUI died at 95 %: it starts again from 0
    assert lanes.load().head_left is None and lanes.load().faulted
    lanes.started("a")
    lanes.progressed("a", 20.0, in_node=True)
    clock.now += 1.0
    lanes.progressed("a", 90.0, in_node=True)
    assert lanes.load().faulted                           # still: nothing queued behind it yet
    lanes.recovered("a")                                  # its prompt succeeded on the ComfyUI that came back
    assert not lanes.load().faulted
    done.set()
    assert lanes.join(10)
