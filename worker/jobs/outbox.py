"""The final webhook of every job of one slot: on disk before it is sent, sent until it is settled.

:meth:`Outbox.deliver` runs in the job's own thread: it writes the body to the journal, makes the first
``1 + webhook.max_retries`` attempts (one short try on a fast stop) and settles the job — delivered,
refused (the answer recorded), or handed to the outbox's background thread. That thread retries with
backoff and jitter, across restarts (the journal holds the body), until GmAnimato takes it, refuses it
for good, or ``webhook.expiry`` passes. It never blocks claiming. Nothing sends progress for a job whose
final webhook is queued: the job's progress sender is stopped before the body is written.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from worker.backoff import backoff_delay
from worker.config import WebhookConfig
from worker.jobs.api import DELIVERED, PERMANENT, GmAnimatoClient
from worker.jobs.webhooks import (GAVE_UP, CallbackTarget, Delivery, JobWebhooks, refusal_replacement,
                                  send_final)
from worker.journal.phases import Phase
from worker.journal.store import JobRecord, Journal

log = logging.getLogger(__name__)

EXPIRED = "expired"
IDLE_WAKE = 5.0                      # the background thread looks at the journal at least this often
TIDY_EVERY = 10.0                    # ... and tidies it (old blobs, WAL checkpoint) at most this often,
TIDY_BUSY_EVERY = 300.0              # ... while the slot is idle; while it is busy, this often at most


def outbox_delay(sends: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait before the next outbox attempt, after ``sends`` failed attempts in all (pure given ``rng``)."""
    return backoff_delay(max(1, sends), max(base, 0.05), cap, jitter=0.2, rng=rng)


def tidy_due(since: float, busy: bool) -> bool:
    """Tidy the journal now? Its checkpoint holds the journal for a while (hundreds of ms on a slow disk
    with big blobs), and a job's next write would wait behind it: so every ``TIDY_EVERY`` seconds while
    the slot is idle, and only every ``TIDY_BUSY_EVERY`` while it is busy (pure)."""
    return since >= (TIDY_BUSY_EVERY if busy else TIDY_EVERY)


def outbox_verdict(delivery: Delivery, queued_at: float, now: float, expiry: float) -> str:
    """delivered | permanent | expired | gave_up (retry later) for one outbox attempt (pure)."""
    if delivery.outcome in (DELIVERED, PERMANENT):
        return delivery.outcome
    return EXPIRED if now - queued_at >= expiry else GAVE_UP


class Outbox:
    def __init__(self, journal: Journal, slot: str, api: GmAnimatoClient, config: WebhookConfig,
                 clock: Callable[[], float] = time.time, busy: Callable[[], bool] = lambda: False) -> None:
        self.journal, self.slot, self.api, self.config = journal, slot, api, config
        self.clock = clock
        self.busy = busy                 # a job of the slot is in flight: its journal writes must not wait
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._tidied = 0.0

    # ---- the job's own thread ---------------------------------------------------------------------
    def deliver(self, record: JobRecord, body: dict, hooks: JobWebhooks | None = None,
                fast_timeout: float | None = None, files_stored: bool = False) -> Delivery:
        """Write ``body`` as the job's final webhook, send it, settle the job. Never raises for a
        delivery fault. ``fast_timeout``: one short try (a fast stop); the rest is left to the outbox.
        ``files_stored``: the body's files are the job's stored outputs (journaled once)."""
        if hooks is not None:
            hooks.stop_progress()
        record = self.journal.queue_final(record.seq, body, self.clock(), files_stored=files_stored)
        target = hooks.target if hooks is not None else self.target_of(record)
        tries = 1 if fast_timeout else self.config.max_retries + 1
        timeout = fast_timeout or self.config.timeout
        delivery = send_final(self.api, target, body, tries, self.config.retry_delay, timeout)
        return self.settle(record, body, delivery, target, inline=True, tries=tries, timeout=timeout)

    def settle(self, record: JobRecord, body: dict, delivery: Delivery, target: CallbackTarget,
               inline: bool, tries: int | None = None, timeout: float | None = None) -> Delivery:
        """Record what the attempts came to: close the job, queue a replacement, or keep it in the outbox."""
        now = self.clock()
        verdict = delivery.outcome if inline else outbox_verdict(delivery, record.queued_at or now, now,
                                                                 self.config.expiry)
        if verdict == DELIVERED:
            self.journal.close_job(record.seq, Phase.DELIVERED, now, delivery.attempts, delivery.status)
            return delivery
        if verdict == PERMANENT:
            return self.refused(record, body, delivery, target, tries or self.config.max_retries + 1,
                                timeout or self.config.timeout)
        if verdict == EXPIRED:
            self.journal.close_job(record.seq, Phase.EXPIRED, now, delivery.attempts, delivery.status,
                                   delivery.error)
            log.error("Webhook %s for %s expired undelivered after %g s (webhook.expiry); last: %s",
                      body["status"], record.label, self.config.expiry, delivery.error or "-")
            return Delivery(EXPIRED, delivery.status, delivery.attempts, delivery.error, body)
        sends = record.sends + delivery.attempts
        delay = outbox_delay(sends, self.config.retry_delay, self.config.outbox_max_delay)
        self.journal.record_sends(record.seq, delivery.attempts, delivery.status, delivery.error,
                                  now + delay, now)
        if inline:
            log.warning("Webhook %s for %s not delivered after %d attempt(s) (%s); kept in the outbox, "
                        "next try in %.0f s", body["status"], record.label, delivery.attempts,
                        delivery.error or "-", delay)
        else:
            log.debug("Outbox: %s still not delivered (%s); next try in %.1f s", record.label, delivery.error,
                      delay)
        self._wake.set()
        return delivery

    def refused(self, record: JobRecord, body: dict, delivery: Delivery, target: CallbackTarget, tries: int,
                timeout: float) -> Delivery:
        """A permanent answer: a too large or invalid ``completed`` is replaced by a ``failed`` (sent with
        the same number of tries); else the refusal is recorded and the job closed."""
        replacement = refusal_replacement(body, delivery.status)
        now = self.clock()
        if replacement is None:
            self.journal.close_job(record.seq, Phase.REFUSED, now, delivery.attempts, delivery.status,
                                   delivery.error)
            return delivery
        log.error("Job %s: %s; reporting it failed instead", record.label, replacement["error"])
        self.journal.record_sends(record.seq, delivery.attempts, delivery.status, delivery.error, None, now)
        record = self.journal.queue_final(record.seq, replacement, now)
        retry = send_final(self.api, target, replacement, tries, self.config.retry_delay, timeout)
        return self.settle(record, replacement, retry, target, inline=True, tries=tries, timeout=timeout)

    def target_of(self, record: JobRecord) -> CallbackTarget:
        return CallbackTarget(record.callback_url or "", record.fallback_url or "", record.label)

    # ---- the background thread --------------------------------------------------------------------
    def start(self) -> int:
        """Adopt the slot's undelivered final webhooks (left by a dead process) and start sending them;
        returns how many were waiting."""
        waiting = self.journal.adopt_outbox(self.slot, self.clock())
        pending = len(self.journal.outbox(self.slot))
        if pending:
            log.warning("Outbox of %s: %d final webhook(s) from before to deliver", self.slot, pending)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"outbox-{self.slot}")
        self._thread.start()
        return max(waiting, pending)

    def stop(self, timeout: float = 1.0) -> int:
        """Stop the background thread, letting an attempt in flight end (up to ``timeout``; past it the
        attempt is abandoned and the row stays on disk); returns how many final webhooks still wait."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return len(self.journal.outbox(self.slot))

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                wait = self.send_due()
            except Exception:        # a journal fault: say so, keep the thread (the rows stay on disk)
                log.exception("Outbox of %s: unexpected error", self.slot)
                wait = IDLE_WAKE
            self._wake.wait(wait)
            self._wake.clear()

    def send_due(self) -> float:
        """One attempt for every row that is due; returns how long to sleep until the next is."""
        for record in self.journal.outbox(self.slot):
            if self._stopped.is_set():
                break
            if record.next_send_at is not None and record.next_send_at <= self.clock():
                self.send_one(record)
        upcoming = [r.next_send_at for r in self.journal.outbox(self.slot) if r.next_send_at is not None]
        wait = min(IDLE_WAKE, max(0.01, min(upcoming) - self.clock())) if upcoming else IDLE_WAKE
        if wait >= 1.0 and tidy_due(time.monotonic() - self._tidied, self.busy()):
            self._tidied = time.monotonic()
            self.journal.tidy()
        return wait

    def send_one(self, record: JobRecord) -> None:
        body = self.journal.final_body(record.seq) or {}
        if self.clock() - (record.queued_at or self.clock()) >= self.config.expiry:
            self.settle(record, body, Delivery(GAVE_UP, record.last_http, 0, record.last_error or ""),
                        self.target_of(record), inline=False)
            return
        target = self.target_of(record)
        delivery = send_final(self.api, target, body, 1, self.config.retry_delay, self.config.timeout)
        result = self.settle(record, body, delivery, target, inline=False)
        if result.outcome == DELIVERED:
            log.info("Webhook %s for %s delivered from the outbox (HTTP %s, attempt %d)", body.get("status"),
                     record.label, result.status, record.sends + 1)
        elif result.outcome == PERMANENT:
            log.error("Webhook %s for %s refused for good by GmAnimato (HTTP %s); recorded",
                      body.get("status"), record.label, result.status)
