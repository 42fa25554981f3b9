"""The outbox: decisions (pure) and its work on a real journal, against a scripted GmAnimato client."""
from __future__ import annotations

import random

import pytest

from tests.unit.test_webhooks import RecordingApi
from worker.config import WebhookConfig
from worker.jobs.errors import ApiUnavailable
from worker.jobs.outbox import EXPIRED, Outbox, outbox_delay, outbox_verdict
from worker.jobs.webhooks import GAVE_UP, Delivery, completed_payload, failed_payload, refusal_replacement
from worker.journal.phases import Phase
from worker.journal.store import Journal

CONFIG = WebhookConfig(max_retries=1, retry_delay=0.0, timeout=1.0, expiry=100.0, outbox_max_delay=30.0)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def journal(tmp_path):
    j = Journal.open(tmp_path)
    yield j
    j.close()


def claimed(journal: Journal, clock: Clock) -> int:
    seq = journal.record_claim("gpu0", "{}", clock()).seq
    journal.identify(seq, "local-v", "v", "http://gm/api/i2v-webhook/v", "http://gm/api/i2v-webhook/v", clock())
    return seq


def test_outbox_delay_doubles_with_jitter_up_to_the_cap():
    rng = random.Random(1)
    delays = [outbox_delay(n, 1.0, 30.0, rng) for n in range(1, 9)]
    for n, delay in enumerate(delays, start=1):
        expected = min(30.0, 2.0 ** (n - 1))
        assert 0.8 * expected <= delay <= 1.2 * expected


def test_outbox_verdict():
    assert outbox_verdict(Delivery("delivered", 201, 1), 0, 10, 5) == "delivered"
    assert outbox_verdict(Delivery("permanent", 403, 1), 0, 10, 5) == "permanent"
    assert outbox_verdict(Delivery(GAVE_UP, 503, 1), 0, 10, 5) == EXPIRED
    assert outbox_verdict(Delivery(GAVE_UP, 503, 1), 0, 4, 5) == GAVE_UP


def test_only_a_completed_refused_for_size_or_content_is_replaced():
    replaced = refusal_replacement(completed_payload("local-v", [{"filename": "a.mp4"}]), 413)
    assert replaced["status"] == "failed" and "configure storage.s3" in replaced["error"]
    assert refusal_replacement(completed_payload("local-v", []), 400)["status"] == "failed"
    assert refusal_replacement(completed_payload("local-v", []), 403) is None
    assert refusal_replacement(failed_payload("local-v", "x"), 413) is None


def test_undelivered_inline_goes_to_the_outbox_then_is_delivered(journal):
    clock = Clock()
    api = RecordingApi([503, ApiUnavailable("down"), 201])
    outbox = Outbox(journal, "gpu0", api, CONFIG, clock)
    seq = claimed(journal, clock)
    body = completed_payload("local-v", [{"filename": "a.mp4", "type": "s3_url", "data": "u"}])
    delivery = outbox.deliver(journal.get(seq), body)
    assert (delivery.outcome, delivery.attempts) == (GAVE_UP, 2)
    row = journal.get(seq)
    assert row.phase == Phase.FINAL_QUEUED and row.sends == 2 and row.next_send_at > clock.now
    clock.now = row.next_send_at
    outbox.send_due()
    row = journal.get(seq)
    assert row.phase == Phase.DELIVERED and row.sends == 3 and row.last_http == 201
    assert api.calls == [body] * 3                        # the same body every time


def test_a_permanent_answer_in_the_outbox_is_recorded(journal):
    clock = Clock()
    outbox = Outbox(journal, "gpu0", RecordingApi([500, 500, 404]), CONFIG, clock)
    seq = claimed(journal, clock)
    outbox.deliver(journal.get(seq), failed_payload("local-v", "boom"))
    clock.now += 100 - 1
    outbox.send_due()
    row = journal.get(seq)
    assert row.phase == Phase.REFUSED and row.last_http == 404 and row.closed_at == clock.now


def test_an_undeliverable_webhook_expires(journal):
    clock = Clock()
    outbox = Outbox(journal, "gpu0", RecordingApi([503] * 10), CONFIG, clock)
    seq = claimed(journal, clock)
    outbox.deliver(journal.get(seq), failed_payload("local-v", "boom"))
    clock.now += CONFIG.expiry + 1
    outbox.send_due()
    row = journal.get(seq)
    assert row.phase == Phase.EXPIRED and row.last_http == 503


def test_a_completed_too_large_is_replaced_by_a_failed_and_that_is_recorded(journal):
    clock = Clock()
    api = RecordingApi([413, 201])
    outbox = Outbox(journal, "gpu0", api, CONFIG, clock)
    seq = claimed(journal, clock)
    delivery = outbox.deliver(journal.get(seq), completed_payload("local-v", [{"filename": "a.mp4"}]))
    assert delivery.outcome == "delivered" and delivery.body["status"] == "failed"
    row = journal.get(seq)
    assert row.phase == Phase.DELIVERED and journal.final_body(seq)["status"] == "failed" and row.sends == 2


def test_rows_left_by_a_dead_process_are_adopted_at_start(journal):
    clock = Clock()
    seq = claimed(journal, clock)
    journal.queue_final(seq, failed_payload("local-v", "boom"), clock())   # the process died here
    api = RecordingApi([201])
    outbox = Outbox(journal, "gpu0", api, CONFIG, clock)
    assert outbox.start() == 1
    try:
        from tests.conftest import wait_until
        wait_until(lambda: journal.get(seq).phase == Phase.DELIVERED, 10, 0.02, "the adopted webhook delivered")
    finally:
        assert outbox.stop() == 0
    assert len(api.calls) == 1


def test_the_journal_is_tidied_often_while_the_slot_is_idle_and_seldom_while_a_job_runs():
    from worker.jobs.outbox import TIDY_BUSY_EVERY, TIDY_EVERY, tidy_due
    assert tidy_due(TIDY_EVERY, busy=False) and not tidy_due(TIDY_EVERY - 1, busy=False)
    assert not tidy_due(TIDY_EVERY, busy=True)            # a job's next write would wait behind it
    assert tidy_due(TIDY_BUSY_EVERY, busy=True)
