"""The box's claim turn: when a worker may claim, and what the answer means for the next claim."""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

from worker.jobs import pacing as pc
from worker.jobs.claim_turns import RECHECK, SharedTurn, first_claim_at, next_claim_at, take_turn


def test_the_turn_comes_at_its_time_and_is_reserved_for_one():
    assert take_turn(10.0, False, 9.0, 35.0) == (False, 10.0, 1.0)
    assert take_turn(10.0, False, 10.0, 35.0) == (True, 45.0, 0.0)             # reserved until the lease ends
    assert take_turn(45.0, True, 11.0, 35.0) == (False, 45.0, RECHECK)        # another asks: look again soon
    assert take_turn(45.0, True, 45.0, 35.0).go                                # a dead holder's lease lapses


def test_after_a_job_the_next_claim_is_at_once_after_empty_one_poll_interval_later():
    rng = random.Random(5)
    assert next_claim_at(100.0, pc.JOB, 0.0, 5.0, rng) == 100.0
    empties = [next_claim_at(100.0, pc.EMPTY, 5.0, 5.0, rng) - 100.0 for _ in range(200)]
    assert 4.0 <= min(empties) < 4.3 and 5.7 < max(empties) <= 6.0            # jitter: boxes drift apart
    assert next_claim_at(100.0, pc.UNAVAILABLE, 17.0, 5.0, rng) == 117.0     # the worker's backoff, box-wide
    assert next_claim_at(100.0, pc.LOST, 9.0, 5.0, rng) == 109.0
    firsts = [first_claim_at(0.0, 5.0, rng) for _ in range(200)]
    assert 0.0 <= min(firsts) < 0.5 and 4.5 < max(firsts) <= 5.0


def _take_and_die(turn: SharedTurn, ready) -> None:
    turn.take(time.monotonic(), 1000.0)
    turn._locked().__enter__()          # hold the lock, then be killed with it held
    ready.set()
    time.sleep(60)


@pytest.mark.timeout(60)
def test_a_worker_killed_while_it_holds_the_lock_does_not_wedge_the_box(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    turn = SharedTurn(ctx, time.monotonic(), str(tmp_path / "claim-turn.lock"))
    ready = ctx.Event()
    child = ctx.Process(target=_take_and_die, args=(turn, ready))
    child.start()
    try:
        assert ready.wait(30)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        turn.give_back(time.monotonic())            # the kernel released the dead holder's lock
        assert turn.take(time.monotonic(), 1000.0).go
        assert not turn.take(time.monotonic(), 1000.0).go   # shared: the first take reserved it
    finally:
        if child.is_alive():
            child.kill()
