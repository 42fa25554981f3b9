"""GmAnimato webhooks of one job: payloads (pure), throttling (pure), ordered delivery.

Rules (contract §2, §3): progress is ``status: processing`` with the progress object, sent at most once
per ``progress_interval`` plus once per node change, never retried, and **never after the final
webhook** (the server has no state guard: a late progress turns a completed video back to processing).
The final webhook is ``completed`` with files or ``failed`` with ``error``/``details``; it is retried
with backoff on 5xx, timeouts and connection errors, and not on 400/403/404/413. All webhooks of a job
go out in order, one at a time: :class:`JobWebhooks` sends a job's progress and stops it for good before
the final body is written and sent (:func:`send_final`, by :mod:`worker.jobs.outbox`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from handler.untrusted import display_url, safe_text
from worker.backoff import backoff_delay
from worker.jobs.api import DELIVERED, PERMANENT, GmAnimatoClient, as_answer, webhook_verdict
from worker.jobs.errors import ApiUnavailable
from worker.jobs.signing import message_id

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000


def progress_payload(job_id: str, snapshot: dict) -> dict:
    return {"id": job_id, "status": "processing", "progress": dict(snapshot)}


def completed_payload(job_id: str, files: list[dict]) -> dict:
    return {"id": job_id, "status": "completed", "files": list(files)}


def failed_payload(job_id: str, error: str, details: list[str] | None = None) -> dict:
    """A ``failed`` body; its texts are made safe (one line each, no credentials or queries in URLs)."""
    body = {"id": job_id, "status": "failed", "error": safe_text(error, MAX_ERROR_LENGTH)}
    if details:
        body["details"] = [safe_text(d, MAX_ERROR_LENGTH) for d in details[:20]]
    return body


def progress_due(last_sent: float | None, now: float, interval: float, node_changed: bool) -> bool:
    """Send a progress webhook now? Yes on a node change, or when ``interval`` has passed."""
    return last_sent is None or node_changed or now - last_sent >= interval


@dataclass(frozen=True)
class Delivery:
    """How a run of final-webhook attempts ended: ``delivered``, ``permanent`` (refused for good) or
    ``gave_up`` (every attempt failed in a way that may pass: the outbox keeps trying)."""

    outcome: str
    status: int | None
    attempts: int
    error: str = ""
    body: dict | None = field(default=None, compare=False, repr=False)   # the body these attempts sent


GAVE_UP = "gave_up"


def refusal_replacement(body: dict, status: int | None) -> dict | None:
    """A ``completed`` refused for good for its size or content (413, 400) becomes a small ``failed``
    one, so GmAnimato never keeps the job processing; any other refusal stands (pure)."""
    if body.get("status") != "completed" or status not in (400, 413):
        return None
    reason = ("the result webhook was too large for GmAnimato (HTTP 413); configure storage.s3 so videos "
              "travel as URLs, not base64" if status == 413 else "GmAnimato refused the result webhook (HTTP 400)")
    return failed_payload(str(body.get("id", "")), reason)


class CallbackTarget:
    """Where a job's webhooks go: the task's callback URL, switched once to the one derived from
    ``api.url`` (which answered our claim, so it is reachable) when the task's redirects or is unreachable."""

    def __init__(self, url: str, fallback_url: str = "", label: str = "") -> None:
        self.url, self.fallback_url, self.label = url, fallback_url, label

    def use_fallback(self, why: str) -> bool:
        """Switch to the derived URL; True when switched."""
        if not self.fallback_url or self.fallback_url == self.url:
            return False
        log.warning("job %s: %s %s; using %s instead", self.label, display_url(self.url), why,
                    display_url(self.fallback_url))
        self.url = self.fallback_url
        return True


def send_final(api: GmAnimatoClient, target: CallbackTarget, body: dict, tries: int, retry_delay: float,
               timeout: float, sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Up to ``tries`` attempts with backoff; stops at a delivery or a permanent answer. Never raises."""
    status: int | None = None
    error = ""
    msg_id = message_id(body)          # the same for every attempt of this body, in any process
    for attempt in range(1, tries + 1):
        if attempt > 1:
            sleep(backoff_delay(attempt - 1, retry_delay, 60.0))
        try:
            answer = as_answer(api.post_webhook(target.url, body, timeout=timeout, message_id=msg_id))
        except ApiUnavailable as exc:
            error = exc.message
            log.warning("job %s: %s webhook attempt %d failed: %s", target.label, body["status"], attempt, exc)
            target.use_fallback("is unreachable")
            continue
        status = answer.status
        verdict = webhook_verdict(status, answer.error)
        if verdict == DELIVERED:
            return Delivery(DELIVERED, status, attempt, body=body)
        if 300 <= status < 400 and target.use_fallback(f"answered a redirect (HTTP {status})"):
            continue
        error = f"HTTP {status}" + (f" {answer.error!r}" if answer.error else "")
        if verdict == PERMANENT:
            return Delivery(PERMANENT, status, attempt, error, body)
        log.warning("job %s: %s webhook attempt %d answered HTTP %s", target.label, body["status"],
                    attempt, status)
    return Delivery(GAVE_UP, status, tries, error, body)


class JobWebhooks:
    """One job's progress webhooks, coalesced in a background thread, and where its webhooks go.
    :meth:`stop_progress` ends progress for good (waiting for one in flight); the final webhook is then
    sent with :func:`send_final` to ``target`` (the outbox does that)."""

    def __init__(self, api: GmAnimatoClient, url: str, job_id: str, progress_interval: float,
                 timeout: float = 30.0, fallback_url: str = "") -> None:
        self.api, self.job_id = api, job_id
        self.target = CallbackTarget(url, fallback_url, job_id)
        self.progress_interval, self.timeout = progress_interval, timeout
        self._cond = threading.Condition()
        self._pending: dict | None = None
        self._closed = False
        self._quiet = False
        self._last_sent: float | None = None
        self._thread = threading.Thread(target=self._progress_loop, daemon=True,
                                        name=f"progress-{job_id}")
        self._thread.start()

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def progress_timeout(self) -> tuple[float, float]:
        """(connect, read) seconds of one progress request: progress is never worth a long wait."""
        return 5.0, min(10.0, self.timeout)

    def progress(self, snapshot: dict, node_changed: bool) -> bool:
        """Offer a progress snapshot; True when it is due and will be sent (replacing an older one)."""
        with self._cond:
            if self._closed or self._quiet or not progress_due(self._last_sent, time.monotonic(),
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
            answer = as_answer(self.api.post_webhook(self.target.url, body, timeout=self.progress_timeout))
        except ApiUnavailable as exc:
            log.debug("job %s: progress webhook not delivered (%s)", self.job_id, exc)
            return
        if webhook_verdict(answer.status, answer.error) != DELIVERED:
            log.debug("job %s: progress webhook answered %s", self.job_id, answer.status)

    def end_progress(self) -> None:
        """Send no more progress for now (the tail of a start; one in flight goes on, and
        :meth:`stop_progress` waits for it); :meth:`resume_progress` takes it back for a new start."""
        with self._cond:
            self._quiet = True
            self._pending = None

    def resume_progress(self) -> None:
        with self._cond:
            self._quiet = False

    def stop_progress(self) -> None:
        """No progress webhook leaves after this returns (one in flight is waited for)."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify()
        if self._thread is threading.current_thread():
            return
        self._thread.join(timeout=sum(self.progress_timeout) + 1)   # longer than any one progress request
        if self._thread.is_alive():
            log.warning("job %s: a progress webhook is still in flight after its own timeout; sending the "
                        "final one", self.job_id)
