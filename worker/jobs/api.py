"""GmAnimato over HTTP: claim a task, post a webhook (contract §1, §2).

``claim`` returns the task JSON, or None when the queue is empty (404). 401 and redirects raise
:class:`AuthError` (fix the configuration; retry slowly), 5xx and network errors raise
:class:`ApiUnavailable` (back off). Redirects are never followed: a mistyped path answers 303 to
``/login``. ``post_webhook`` returns a :class:`WebhookAnswer` (status and, for errors, GmAnimato's
``error`` text); :func:`webhook_verdict` (pure) says whether an answer is delivered, permanent or worth
retrying. Each thread gets its own HTTP session (requests' sessions are not thread-safe).

Every answer is read in bounded memory (:mod:`handler.bounded`): a claim answer up to
``MAX_TASK_BYTES`` (it carries base64 images), a webhook answer up to ``MAX_ANSWER_BYTES``. A 200 claim
answer that is an HTML page is a misconfiguration (:class:`AuthError`); one that is not a readable JSON
task (truncated, malformed, too deep, too large) is a job claimed and lost: :class:`LostTask` carries
the ids that could still be read from its head, so the job can be reported failed.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, NamedTuple

import requests

from handler.bounded import BrokenOff, TooLarge, TooSlow, describe_size, error_text, read_capped
from handler.errors import describe_network_error
from handler.untrusted import display_url, safe_text
from worker.jobs import signing
from worker.jobs.errors import ApiRefused, ApiUnavailable, LostTask
from worker.jobs.task import salvage_ids

log = logging.getLogger(__name__)

TASK_PATH = "/api/worker/task"
DELIVERED, PERMANENT, RETRY = "delivered", "permanent", "retry"
# A 500 whose error is one of these is the route failing on the body itself (contract §2): sending the
# same body again fails the same way. Any other 500 (a database error) may pass.
PERMANENT_500 = ("SyntaxError", "TypeError")
MAX_TASK_BYTES = 256 * 1024 * 1024     # a claim answer: the workflow and, by default, base64 images
MAX_ANSWER_BYTES = 64 * 1024           # any other answer: GmAnimato's are a few hundred bytes
ANSWER_READ_TIME = 2.0                 # a 2xx answer's body is read this long at most (to reuse its connection)
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]{1,200})"')


class WebhookAnswer(NamedTuple):
    status: int
    error: str = ""          # GmAnimato's ``error`` field of a non-2xx answer, cut short


class AuthError(ApiRefused):
    """GmAnimato refused our credentials or our URL: a person must fix the configuration."""


class ServerMisconfigured(ApiRefused):
    """GmAnimato answered 500 for a setup fault of its own (secret or default workflow missing).

    ``orphaned`` is True when the server had already claimed a job before failing (contract §1): that
    job now stays ``processing`` on the server and no worker can report it."""

    def __init__(self, message: str, status: int | None = None, orphaned: bool = False) -> None:
        super().__init__(message, status)
        self.orphaned = orphaned


class GmAnimatoClient:
    def __init__(self, base_url: str, secret: str, timeout: float = 30.0,
                 session: requests.Session | None = None, signing_key: bytes = b"") -> None:
        self.base_url = base_url.rstrip("/")
        self.shown_url = display_url(self.base_url)
        self._secret = secret
        self._signing_key = signing_key
        self.timeout = timeout
        self._shared = session
        self._local = threading.local()
        # one connection pool for every thread's session: a job's final webhook, sent from its own thread,
        # rides the connection the claims and progress keep warm (no new TCP/TLS handshake per job)
        self._adapter = requests.adapters.HTTPAdapter(pool_maxsize=8)

    @property
    def session(self) -> requests.Session:
        """This thread's session (or the one given), on the client's shared connection pool."""
        if self._shared is not None:
            return self._shared
        if not hasattr(self._local, "session"):
            session = requests.Session()
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
            self._local.session = session
        return self._local.session

    def __repr__(self) -> str:
        return f"GmAnimatoClient({self.shown_url!r})"

    def claim(self) -> Any:
        """Claim the oldest queued job: its decoded task JSON (any JSON value: the caller checks it), or
        None when the queue is empty. Raises :class:`LostTask` for a 200 answer that cannot be read."""
        url = self.base_url + TASK_PATH
        try:
            response = self.session.get(url, headers={"x-worker-secret": self._secret},
                                        timeout=self.timeout, allow_redirects=False, stream=True)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"GmAnimato at {self.shown_url} is unreachable "
                                 f"({describe_network_error(exc)})") from exc
        with response:
            return self._claim_result(response)

    def _claim_result(self, response: requests.Response) -> Any:
        status = response.status_code
        if status == 200:
            return self._read_task(response)
        if status == 404:
            return None
        if status == 401:
            raise AuthError("GmAnimato answered 401 Unauthorized: api.secret (WORKER_TASK_SECRET) does "
                            "not match the server's WORKER_TASK_SECRET", status)
        if 300 <= status < 400:
            raise AuthError(f"GET {TASK_PATH} was redirected to {display_url(response.headers.get('Location', '?'))}: "
                            f"is api.url ({self.shown_url}) the GmAnimato origin?", status)
        if status >= 500:
            self._raise_server_error(response)
        raise ApiUnavailable(f"GmAnimato answered HTTP {status} to the task claim: {_body(response)}")

    def _read_task(self, response: requests.Response) -> Any:
        """A 200 claim answer: the decoded task, an HTML page (AuthError), or LostTask."""
        try:
            raw = read_capped(response, MAX_TASK_BYTES, time.monotonic() + max(60.0, 4 * self.timeout))
        except TooLarge as exc:
            raise LostTask(f"the claimed task is larger than {describe_size(MAX_TASK_BYTES)}; it was not read",
                           _salvaged(exc.head, self.base_url)) from None
        except Exception as exc:       # too slow, or the connection broke in the middle of the task
            raise LostTask(f"the claimed task could not be read whole ({type(exc).__name__})",
                           _salvaged(getattr(exc, "head", b""), self.base_url)) from None
        if looks_like_html(raw, response.headers.get("Content-Type", "")):
            raise AuthError(f"GET {TASK_PATH} answered 200 with an HTML page, not a task: is api.url "
                            f"({self.shown_url}) the GmAnimato origin (not a login page or a proxy)?", 200)
        try:
            task = json.loads(raw)
            if task is None:
                raise LostTask("the claim answered 200 with JSON null, not a task", {})
            return task
        except (ValueError, RecursionError) as exc:
            why = "nested too deep to decode" if isinstance(exc, RecursionError) else \
                f"not valid JSON ({len(raw)} bytes{', cut short' if bytes(raw[-64:]).rstrip()[-1:] not in (b'}', b']') else ''})"
            raise LostTask(f"the claimed task is {why}", _salvaged(raw, self.base_url)) from None

    def _raise_server_error(self, response: requests.Response) -> None:
        """Map a 5xx of the task route: a known server setup fault, or a transient error."""
        try:
            doc = json.loads(error_text(response, MAX_ANSWER_BYTES))
            error = safe_text(doc.get("error", ""), 300) if isinstance(doc, dict) else ""
        except (ValueError, RecursionError):
            error = ""
        if error == "Worker secret not configured":
            raise ServerMisconfigured("GmAnimato has no WORKER_TASK_SECRET configured (HTTP 500); "
                                      "set it on the server", response.status_code)
        if error.startswith("No ") and error.endswith(" workflow configured"):
            raise ServerMisconfigured(
                f"GmAnimato answered HTTP {response.status_code} {error!r}: it claimed a job and then "
                "failed, so that job stays processing there; configure a default workflow on the server",
                response.status_code, orphaned=True)
        if error:
            exc = ApiUnavailable(f"GmAnimato answered HTTP {response.status_code} {error[:200]!r} to the "
                                 "task claim; it had probably claimed a job already, which now stays "
                                 "processing there (contract §1)")
            exc.orphaned = True
            raise exc
        raise ApiUnavailable(f"GmAnimato answered HTTP {response.status_code} to the task claim: "
                             f"{_body(response)}")

    def post_webhook(self, url: str, body: dict[str, Any], timeout: Any = None,
                     message_id: str = "") -> WebhookAnswer:
        """POST one webhook; returns its answer (its body read only up to ``MAX_ANSWER_BYTES``). Network
        errors raise :class:`ApiUnavailable`. ``message_id`` names the message when signing is on."""
        try:
            payload = signing.encode_body(body)
            headers = {"Content-Type": "application/json"}
            if self._signing_key:
                headers.update(signing.signed_headers(self._signing_key, message_id or signing.fresh_message_id(),
                                                      int(time.time()), payload))
            with self.session.post(url, data=payload, headers=headers, timeout=timeout or self.timeout,
                                   allow_redirects=False, stream=True) as response:
                if response.status_code < 300:
                    drain_for_reuse(response, MAX_ANSWER_BYTES, ANSWER_READ_TIME)
                    return WebhookAnswer(response.status_code)
                text = error_text(response, MAX_ANSWER_BYTES)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"webhook to {display_url(url)} failed ({describe_network_error(exc)})") from exc
        log.debug("webhook %s answered %s: %r", display_url(url), response.status_code, text[:200])
        return WebhookAnswer(response.status_code, _error_of(text))


def drain_for_reuse(response: requests.Response, limit: int, seconds: float) -> None:
    """Read a 2xx answer we have no use for (GmAnimato's: a few KB), so its connection goes back to the
    pool for the next webhook; one over ``limit`` bytes or ``seconds`` is left, and its connection
    closed. Never raises: the answer was a delivery whatever its body."""
    try:
        read_capped(response, limit, time.monotonic() + seconds)
    except (TooLarge, TooSlow, BrokenOff, requests.RequestException):
        pass


def as_answer(answer: Any) -> WebhookAnswer:
    """A bare status code (as simple test clients give) or a WebhookAnswer -> WebhookAnswer."""
    return answer if isinstance(answer, WebhookAnswer) else WebhookAnswer(int(answer))


def webhook_verdict(status: int, error: str = "") -> str:
    """2xx delivered; 5xx, 408 and 429 worth retrying, except a 500 that says the body itself broke the
    route (``SyntaxError``/``TypeError``); any other answer is final (400/403/404/413...)."""
    if 200 <= status < 300:
        return DELIVERED
    if status == 500 and error.startswith(PERMANENT_500):
        return PERMANENT
    if status >= 500 or status in (408, 429):
        return RETRY
    return PERMANENT


def looks_like_html(raw: bytes, content_type: str) -> bool:
    """An HTML page (a login form, a proxy's error page), not a JSON answer (pure)."""
    return "html" in content_type.lower() or bytes(raw[:1024]).lstrip()[:1] == b"<"


def _salvaged(head: bytes, api_url: str) -> dict:
    """The ids of a task that cannot be decoded: its leading ``"id"``, if it is an issued ``local-`` id."""
    match = _LEADING_ID.match(bytes(head[:4096]))
    return salvage_ids({"id": match.group(1).decode("utf-8", "replace")}, api_url) if match else {}


def _error_of(text: str) -> str:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return safe_text(text, 200)
    error = doc.get("error") if isinstance(doc, dict) else None
    return safe_text(error if error is not None else text, 200)


def _body(response: requests.Response) -> str:
    return repr(safe_text(error_text(response, MAX_ANSWER_BYTES), 200))
