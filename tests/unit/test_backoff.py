"""Backoff, claim pacing and webhook verdicts."""
from __future__ import annotations

import random

import pytest

from worker.backoff import backoff_delay
from worker.jobs import pacing as pc
from worker.jobs.api import DELIVERED, PERMANENT, RETRY, webhook_verdict


@pytest.mark.parametrize("attempt, expected", [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)])
def test_backoff_doubles_and_caps(attempt, expected):
    assert backoff_delay(attempt, 1.0, 60.0, jitter=0.0) == expected


def test_backoff_jitter_stays_within_bounds():
    rng = random.Random(7)
    delays = [backoff_delay(3, 1.0, 60.0, 0.2, rng) for _ in range(200)]
    assert min(delays) >= 3.2 and max(delays) <= 4.8
    assert len(set(delays)) > 100


def pacing() -> pc.Pacing:
    return pc.Pacing(poll_interval=5, backoff_cap=30, auth_retry_interval=60)


def test_after_job_poll_at_once_and_empty_waits_poll_interval():
    state, decision = pc.after_claim(pacing(), pc.JOB)
    assert decision.delay == 0.0
    state, decision = pc.after_claim(state, pc.EMPTY)
    assert decision.delay == 5


def test_unavailable_backs_off_logs_once_and_recovers():
    state = pacing()
    delays, logs = [], []
    for _ in range(8):
        state, decision = pc.after_claim(state, pc.UNAVAILABLE, random.Random(1))
        delays.append(decision.delay)
        logs.append(decision.log_it)
    assert logs == [True] + [False] * 7
    assert delays[0] < delays[3] and max(delays) <= 30 * 1.2
    state, decision = pc.after_claim(state, pc.EMPTY)
    assert state.failures == 0 and decision.delay == 5


def test_unauthorized_retries_slowly_and_says_so_once():
    state, first = pc.after_claim(pacing(), pc.UNAUTHORIZED)
    state, second = pc.after_claim(state, pc.UNAUTHORIZED)
    assert (first.delay, first.log_it, second.log_it) == (60, True, False)


@pytest.mark.parametrize("status, verdict", [(200, DELIVERED), (201, DELIVERED), (400, PERMANENT),
                                             (403, PERMANENT), (404, PERMANENT), (413, PERMANENT),
                                             (500, RETRY), (502, RETRY), (429, RETRY), (408, RETRY)])
def test_webhook_verdicts(status, verdict):
    assert webhook_verdict(status) == verdict


@pytest.mark.parametrize("error, verdict", [
    ("SyntaxError: Unexpected end of JSON input", PERMANENT),
    ("TypeError: status.toLowerCase is not a function", PERMANENT),
    ("PrismaClientKnownRequestError: connection pool timeout", RETRY),
    ("", RETRY)])
def test_a_500_that_the_body_caused_is_permanent(error, verdict):
    assert webhook_verdict(500, error) == verdict
    assert webhook_verdict(503, error) == RETRY


def test_lost_tasks_back_off_while_they_keep_coming_and_a_job_resets():
    state = pacing()
    delays = []
    for _ in range(8):
        state, decision = pc.after_claim(state, pc.LOST, random.Random(3))
        delays.append(decision.delay)
    assert delays[0] <= state.poll_interval                 # the first: within poll_interval
    assert delays[3] > 3 * state.poll_interval              # then it grows ...
    assert max(delays) <= state.backoff_cap * 1.2           # ... up to the cap
    state, decision = pc.after_claim(state, pc.JOB)         # a reported bad task is a job: at once
    assert decision.delay == 0.0 and state.failures == 0
    state, decision = pc.after_claim(state, pc.LOST, random.Random(3))
    assert decision.delay <= state.poll_interval
