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


def test_a_prefetch_gives_way_to_an_idle_worker():
    from worker.jobs.claim_turns import IDLE_PRESENCE, PREFETCH_RECHECK
    assert take_turn(10.0, False, 10.0, 35.0, prefetch=True, others_idle_at=9.0) == (False, 10.0, PREFETCH_RECHECK)
    assert take_turn(10.0, False, 10.0, 35.0, prefetch=True, others_idle_at=10.0 - IDLE_PRESENCE).go
    assert take_turn(10.0, False, 10.0, 35.0, prefetch=False, others_idle_at=9.9).go   # idle: no matter


def test_seats_say_which_workers_are_idle(tmp_path):
    turn = SharedTurn(multiprocessing.get_context("spawn"), 0.0, str(tmp_path / "claim-turn.lock"), seats=2)
    busy, idle = turn.seat(0), turn.seat(1)
    now = time.monotonic()
    assert busy.take(now, 30.0).go                        # seat 0 claims while idle ...
    busy.give_back(now, got_job=True)                     # ... gets a job: no longer idle
    assert busy.take(now, 30.0, prefetch=True).go         # its own old idle ask does not stop its prefetch
    busy.give_back(now, got_job=True)
    assert not idle.take(now - 1.0, 30.0).go              # seat 1 asks while idle (not its turn yet)
    assert not busy.take(now, 30.0, prefetch=True).go     # so the busy seat's prefetch waits
    assert idle.take(now, 30.0).go
    idle.give_back(now, got_job=True)                     # the idle one took the job
    assert busy.take(now, 30.0, prefetch=True).go


def test_a_turn_handed_on_too_soon_can_be_put_off_but_never_brought_forward(tmp_path):
    seat = SharedTurn(multiprocessing.get_context("spawn"), 0.0, str(tmp_path / "claim-turn.lock")).seat(0)
    now = time.monotonic()
    seat.give_back(now, got_job=True)                     # handed on at once: the answer looked like a job
    seat.postpone(now + 9.0)                              # ... but it was a lost one: back off box-wide
    assert not seat.take(now + 1.0, 30.0).go
    seat.postpone(now + 2.0)
    assert not seat.take(now + 3.0, 30.0).go and seat.take(now + 9.0, 30.0).go


def test_a_postponed_box_stays_postponed_whatever_another_worker_gives_back(tmp_path):
    turn = SharedTurn(multiprocessing.get_context("spawn"), 0.0, str(tmp_path / "claim-turn.lock"), seats=2)
    lost, other = turn.seat(0), turn.seat(1)
    now = time.monotonic()
    lost.give_back(now, got_job=True)                     # handed on: the answer looked like a job
    assert other.take(now, 30.0).go                       # another worker claims meanwhile
    lost.postpone(now + 9.0)                              # the first one's job was lost: back off box-wide
    other.give_back(now, got_job=True)                    # the other's answer was a job: "at once" ...
    assert not lost.take(now + 1.0, 30.0).go and not other.take(now + 1.0, 30.0).go   # ... still waits
    assert other.take(now + 9.0, 30.0).go
