"""GmAnimato webhooks of one job: payloads (pure), throttling (pure), ordered delivery.

Rules (contract §2, §3): progress is ``status: processing`` with the progress object, sent at most once
per ``progress_interval`` plus once per node change, never retried, and **never after the final
webhook** (the server has no state guard: a late progress turns a completed video back to processing).
The final webhook is ``completed`` with files or ``failed`` with ``error``/``details``; it is retried
with backoff on 5xx, timeouts and connection errors, and not on 400/403/404/413. All webhooks of a job
go out in order, one at a time: :class:`JobWebhooks` owns a job's sending.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from handler.errors import ApiUnavailable
from worker.backoff import backoff_delay
from worker.jobs.api import DELIVERED, PERMANENT, GmAnimatoClient, webhook_verdict

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000


def progress_payload(job_id: str, snapshot: dict) -> dict:
    return {"id": job_id, "status": "processing", "progress": dict(snapshot)}


def completed_payload(job_id: str, files: list[dict]) -> dict:
    return {"id": job_id, "status": "completed", "files": list(files)}


def failed_payload(job_id: str, error: str, details: list[str] | None = None) -> dict:
    body = {"id": job_id, "status": "failed", "error": error[:MAX_ERROR_LENGTH]}
    if details:
        body["details"] = [str(d)[:MAX_ERROR_LENGTH] for d in details[:20]]
    return body


def progress_due(last_sent: float | None, now: float, interval: float, node_changed: bool) -> bool:
    """Send a progress webhook now? Yes on a node change, or when ``interval`` has passed."""
    return last_sent is None or node_changed or now - last_sent >= interval


@dataclass(frozen=True)
class Delivery:
    """How a final webhook ended: ``delivered``, ``permanent`` (refused for good) or ``gave_up``."""

    outcome: str
    status: int | None
    attempts: int


class JobWebhooks:
    """Sends one job's webhooks in order. Progress is coalesced in a background thread; ``final``
    stops progress for good (waiting for any progress in flight), then delivers with retries."""

    def __init__(self, api: GmAnimatoClient, url: str, job_id: str, max_retries: int,
                 progress_interval: float, retry_delay: float = 1.0, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, fallback_url: str = "") -> None:
        self.api, self.url, self.job_id = api, url, job_id
        self.fallback_url = fallback_url   # the derived callback, tried once if the task's redirects
        self.max_retries, self.progress_interval = max_retries, progress_interval
        self.retry_delay, self.timeout, self._sleep = retry_delay, timeout, sleep
        self._cond = threading.Condition()
        self._pending: dict | None = None
        self._closed = False
        self._last_sent: float | None = None
        self._thread = threading.Thread(target=self._progress_loop, daemon=True,
                                        name=f"progress-{job_id}")
        self._thread.start()

    def progress(self, snapshot: dict, node_changed: bool) -> bool:
        """Offer a progress snapshot; True when it is due and will be sent (replacing an older one)."""
        with self._cond:
            if self._closed or not progress_due(self._last_sent, time.monotonic(),
                                                self.progress_interval, node_changed):
                return False
            self._last_sent = time.monotonic()
            self._pending = progress_payload(self.job_id, snapshot)
            self._cond.notify()
            return True

    def _progress_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                body, self._pending = self._pending, None
            self._send_progress(body)

    def _send_progress(self, body: dict) -> None:
        try:
            status = self.api.post_webhook(self.url, body, timeout=(5.0, min(10.0, self.timeout)))
        except ApiUnavailable as exc:
            log.debug("job %s: progress webhook not delivered (%s)", self.job_id, exc)
            return
        if webhook_verdict(status) != DELIVERED:
            log.debug("job %s: progress webhook answered %s", self.job_id, status)

    def stop_progress(self) -> None:
        """No progress webhook leaves after this returns (one in flight is waited for)."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify()
        self._thread.join(timeout=min(30.0, self.timeout + 1))
        if self._thread.is_alive():
            log.warning("job %s: a progress webhook is still in flight after 30 s; sending the final one",
                        self.job_id)

    def use_fallback(self, why: str) -> bool:
        """Switch once from the task's callback URL to the one derived from api.url (which answered
        our claim, so it is reachable); True when switched."""
        if not self.fallback_url or self.fallback_url == self.url:
            return False
        log.warning("job %s: %s %s; using %s instead", self.job_id, self.url, why, self.fallback_url)
        self.url = self.fallback_url
        return True

    def final(self, body: dict) -> Delivery:
        """Deliver the final webhook with retries; never raises."""
        self.stop_progress()
        status: int | None = None
        for attempt in range(1, self.max_retries + 2):
            if attempt > 1:
                self._sleep(backoff_delay(attempt - 1, self.retry_delay, 60.0))
            try:
                status = self.api.post_webhook(self.url, body, timeout=self.timeout)
            except ApiUnavailable as exc:
                log.warning("job %s: %s webhook attempt %d failed: %s", self.job_id, body["status"], attempt, exc)
                self.use_fallback("is unreachable")
                continue
            verdict = webhook_verdict(status)
            if verdict == DELIVERED:
                return Delivery(DELIVERED, status, attempt)
            if 300 <= status < 400 and self.use_fallback(f"answered a redirect (HTTP {status})"):
                continue
            if verdict == PERMANENT:
                return Delivery(PERMANENT, status, attempt)
            log.warning("job %s: %s webhook attempt %d answered HTTP %s", self.job_id, body["status"],
                        attempt, status)
        return Delivery("gave_up", status, self.max_retries + 1)
