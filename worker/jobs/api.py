"""GmAnimato over HTTP: claim a task, post a webhook (contract §1, §2).

``claim`` returns the task JSON, or None when the queue is empty (404). 401 and redirects raise
:class:`AuthError` (fix the configuration; retry slowly), 5xx and network errors raise
:class:`ApiUnavailable` (back off). Redirects are never followed: a mistyped path answers 303 to
``/login``. ``post_webhook`` returns a :class:`WebhookAnswer` (status and, for errors, GmAnimato's
``error`` text); :func:`webhook_verdict` (pure) says whether an answer is delivered, permanent or worth
retrying. Each thread gets its own HTTP session (requests' sessions are not thread-safe).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

import requests

from handler.errors import describe_network_error
from worker.jobs.errors import ApiRefused, ApiUnavailable

log = logging.getLogger(__name__)

TASK_PATH = "/api/worker/task"
DELIVERED, PERMANENT, RETRY = "delivered", "permanent", "retry"
# A 500 whose error is one of these is the route failing on the body itself (contract §2): sending the
# same body again fails the same way. Any other 500 (a database error) may pass.
PERMANENT_500 = ("SyntaxError", "TypeError")


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
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self.timeout = timeout
        self._shared = session
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """This thread's session (or the one given)."""
        if self._shared is not None:
            return self._shared
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def __repr__(self) -> str:
        return f"GmAnimatoClient({self.base_url!r})"

    def claim(self) -> dict | None:
        """Claim the oldest queued job: its task JSON, or None when the queue is empty."""
        url = self.base_url + TASK_PATH
        try:
            response = self.session.get(url, headers={"x-worker-secret": self._secret},
                                        timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"GmAnimato at {self.base_url} is unreachable ({describe_network_error(exc)})") from exc
        return self._claim_result(response)

    def _claim_result(self, response: requests.Response) -> dict | None:
        status = response.status_code
        if status == 404:
            return None
        if status == 401:
            raise AuthError("GmAnimato answered 401 Unauthorized: api.secret (WORKER_TASK_SECRET) does "
                            "not match the server's WORKER_TASK_SECRET", status)
        if 300 <= status < 400:
            raise AuthError(f"GET {TASK_PATH} was redirected to {response.headers.get('Location', '?')}: "
                            f"is api.url ({self.base_url}) the GmAnimato origin?", status)
        if status >= 500:
            self._raise_server_error(response)
        if status == 429:
            raise ApiUnavailable(f"GmAnimato answered HTTP {status} to the task claim: {_body(response)}")
        if status != 200:
            raise ApiUnavailable(f"GmAnimato answered HTTP {status} to the task claim: {_body(response)}")
        try:
            return response.json()
        except ValueError:
            raise AuthError(f"GET {TASK_PATH} answered 200 without JSON: is api.url ({self.base_url}) "
                            "the GmAnimato origin?", status) from None

    def _raise_server_error(self, response: requests.Response) -> None:
        """Map a 5xx of the task route: a known server setup fault, or a transient error."""
        try:
            error = str(response.json().get("error", ""))
        except (ValueError, AttributeError):
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

    def post_webhook(self, url: str, body: dict[str, Any], timeout: Any = None) -> WebhookAnswer:
        """POST one webhook; returns its answer. Network errors raise :class:`ApiUnavailable`."""
        try:
            response = self.session.post(url, json=body, timeout=timeout or self.timeout,
                                         allow_redirects=False)
        except requests.RequestException as exc:
            raise ApiUnavailable(f"webhook to {url} failed ({describe_network_error(exc)})") from exc
        if response.status_code < 300:
            return WebhookAnswer(response.status_code)
        log.debug("webhook %s answered %s: %s", url, response.status_code, _body(response))
        return WebhookAnswer(response.status_code, _error_of(response))


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


def _error_of(response: requests.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200]
    error = doc.get("error") if isinstance(doc, dict) else None
    return str(error)[:200] if error is not None else response.text[:200]


def _body(response: requests.Response) -> str:
    return repr(response.text[:200])
