"""When to ask GmAnimato for the next task, and whether to say so (pure, no I/O).

After a job: at once. Empty queue (404): ``poll_interval``. GmAnimato unreachable or 5xx: exponential
backoff with jitter, capped, back to normal after the first answer. 401/redirect: one error line, then
a slow retry every ``auth_retry_interval`` without repeating the line until something changes. A
claimed task that could not be read nor reported (lost): ``poll_interval``, doubling while such answers
keep coming (capped at ``backoff_cap``), so a broken server cannot make the worker hot-loop; a bad task
that was reported counts as a job (the next claim follows at once: good jobs may wait behind it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from worker.backoff import backoff_delay

JOB, EMPTY, UNAVAILABLE, UNAUTHORIZED, LOST = "job", "empty", "unavailable", "unauthorized", "lost"


@dataclass(frozen=True)
class Pacing:
    poll_interval: float
    backoff_cap: float
    auth_retry_interval: float
    failures: int = 0            # consecutive unavailable (or lost) answers
    last_outcome: str = ""


@dataclass(frozen=True)
class Decision:
    delay: float
    log_it: bool                 # first time this outcome is seen in a row


def after_claim(pacing: Pacing, outcome: str, rng: random.Random | None = None) -> tuple[Pacing, Decision]:
    """Fold one claim outcome; returns the new pacing and how long to wait before the next claim."""
    repeated = outcome == pacing.last_outcome
    if outcome == JOB:
        return replace(pacing, failures=0, last_outcome=outcome), Decision(0.0, False)
    if outcome == EMPTY:
        return replace(pacing, failures=0, last_outcome=outcome), Decision(pacing.poll_interval, False)
    if outcome == UNAUTHORIZED:
        return (replace(pacing, failures=0, last_outcome=outcome),
                Decision(pacing.auth_retry_interval, not repeated))
    failures = pacing.failures + 1 if repeated or outcome == UNAVAILABLE else 1
    if outcome == LOST:
        delay = backoff_delay(failures, pacing.poll_interval, max(pacing.backoff_cap, pacing.poll_interval), 0.2, rng)
        if failures == 1:
            delay = min(delay, pacing.poll_interval)      # the first: the next claim within poll_interval
        return replace(pacing, failures=failures, last_outcome=outcome), Decision(delay, not repeated)
    delay = backoff_delay(failures, min(1.0, pacing.backoff_cap), pacing.backoff_cap, 0.2, rng)
    return replace(pacing, failures=failures, last_outcome=outcome), Decision(delay, not repeated)
