"""One box, one idle claim per ``poll_interval``: the workers of a box take turns to ask GmAnimato.

Every claim is a database transaction on GmAnimato. Polling on its own, each worker of an idle 8-GPU
box would ask every ``poll_interval``: 8 claims per interval, in lockstep with every box started at the
same time. Instead the supervisor gives its workers one shared turn (:class:`SharedTurn`: a time in
shared memory and a lock, made in the supervisor before the workers are spawned): a worker may claim
only once the box's next claim time has come, and it reserves the turn while it asks. What the answer
was sets the box's next claim time (:func:`next_claim_at`, pure): a job — at once (the next idle worker
claims right away: more may be queued); an empty queue — ``poll_interval`` later with ±20 % jitter
(boxes drift apart instead of polling in lockstep); GmAnimato down, a bad secret, lost tasks — the
worker's own backoff (:mod:`worker.jobs.pacing`), now for the whole box. A reservation lapses after
``lease`` seconds, so a worker that died while asking does not stop its box. The first turn comes at
a random point of the first ``poll_interval`` (a box restarted with others does not start in step).

An idle worker goes first: a worker that wants to *prefetch* (claim the job to queue behind its running
one, :mod:`worker.jobs.pipeline`) is refused the turn while another worker of the box has asked for one
in the last ``IDLE_PRESENCE`` seconds with nothing to run — a queued job goes to the idle GPU, not
behind a busy one. Each worker has a seat (:meth:`SharedTurn.seat`) where it notes when it last asked
while idle; a worker that got a job clears its own.

``local_worker.py`` has no supervisor and no turn: it paces itself as before.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
from collections.abc import Iterator
from typing import Any, NamedTuple

from worker.jobs import pacing as pc

JITTER = 0.2
RECHECK = 0.05                 # how often a waiting worker looks again while another one asks
IDLE_PRESENCE = 2.5            # an idle worker asks at least every second or so while it waits
PREFETCH_RECHECK = 0.5         # a prefetch refused for an idle worker looks again this much later


class Turn(NamedTuple):
    go: bool                   # this worker may claim now (the turn is reserved for it)
    next_at: float             # the box's next claim time, as it now stands
    wait: float                # otherwise, how long to wait before asking again


def take_turn(next_at: float, reserved: bool, now: float, lease: float, prefetch: bool = False,
              others_idle_at: float = float("-inf")) -> Turn:
    """May a worker claim at ``now``? Yes once ``next_at`` has come — for a prefetch, only if no other
    worker asked while idle since ``now - IDLE_PRESENCE`` (``others_idle_at``: the latest time one
    did) — ; the turn is then reserved until ``now + lease`` (pure)."""
    if prefetch and now - others_idle_at < IDLE_PRESENCE:
        return Turn(False, next_at, PREFETCH_RECHECK)
    if now >= next_at:
        return Turn(True, now + lease, 0.0)
    return Turn(False, next_at, min(next_at - now, RECHECK) if reserved else next_at - now)


def next_claim_at(now: float, outcome: str, delay: float, poll_interval: float,
                  rng: random.Random | None = None) -> float:
    """The box's next claim time after a claim whose outcome was ``outcome`` and whose own pacing
    asked for ``delay`` (pure but for the jitter's randomness)."""
    if outcome == pc.JOB:
        return now
    if outcome == pc.EMPTY:
        return now + poll_interval * (1.0 + (rng or random).uniform(-JITTER, JITTER))
    return now + delay


def first_claim_at(now: float, poll_interval: float, rng: random.Random | None = None) -> float:
    return now + (rng or random).uniform(0.0, poll_interval)


class SharedTurn:
    """The box's turn across processes: ``next_at`` (``time.monotonic()``, one clock for every process
    on Linux) and ``reserved`` in shared memory, changed under an ``flock`` on ``lock_path`` (released by
    the kernel when its holder dies, so a worker killed mid-turn cannot wedge the box). Made by the
    supervisor before its workers are spawned, and handed to each at its start."""

    def __init__(self, ctx: Any, first_at: float, lock_path: str, seats: int = 1) -> None:
        self._next_at = ctx.RawValue("d", first_at)
        self._not_before = ctx.RawValue("d", float("-inf"))   # a box-wide backoff no give_back undoes
        self._reserved = ctx.RawValue("b", 0)
        self._idle_at = ctx.RawArray("d", [float("-inf")] * max(1, seats))  # per seat: last idle ask
        self.lock_path = lock_path
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}          # each process opens the lock file itself

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd is None:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def seat(self, index: int) -> "TurnSeat":
        return TurnSeat(self, index % len(self._idle_at))

    def take(self, now: float, lease: float, prefetch: bool = False, seat: int = 0) -> Turn:
        with self._locked():
            if not prefetch:
                self._idle_at[seat] = now
            others = max((at for i, at in enumerate(self._idle_at) if i != seat), default=float("-inf"))
            next_at = max(self._next_at.value, self._not_before.value)
            turn = take_turn(next_at, bool(self._reserved.value), now, lease, prefetch, others)
            if turn.go:
                self._next_at.value, self._reserved.value = turn.next_at, 1
            return turn

    def postpone(self, next_at: float) -> None:
        """No claim of the box before ``next_at`` (a turn handed on too soon: the job was lost), whatever
        the workers that claim meanwhile give back."""
        with self._locked():
            self._not_before.value = max(self._not_before.value, next_at)

    def give_back(self, next_at: float, got_job: bool = False, seat: int = 0) -> None:
        """End the turn; ``got_job``: the worker that had it is busy now, no longer idle."""
        with self._locked():
            self._next_at.value, self._reserved.value = next_at, 0
            if got_job:
                self._idle_at[seat] = float("-inf")


class TurnSeat(NamedTuple):
    """One worker's place at the box's turn (picklable: it goes to the worker process)."""

    turn: SharedTurn
    index: int

    def take(self, now: float, lease: float, prefetch: bool = False) -> Turn:
        return self.turn.take(now, lease, prefetch, self.index)

    def give_back(self, next_at: float, got_job: bool = False) -> None:
        self.turn.give_back(next_at, got_job, self.index)

    def postpone(self, next_at: float) -> None:
        self.turn.postpone(next_at)
