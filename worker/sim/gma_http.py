"""HTTP pieces of the simulated GmAnimato: JavaScript-style JSON answers, auth header parsing,
SvelteKit's trailing-slash and 405 behaviour, and scripted faults.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from worker.sim.gma_hostile import check_raw_answers

_BEARER = re.compile(r"^Bearer\s+", re.IGNORECASE)


# ---- JSON the way JavaScript writes it -------------------------------------------------------
def js_value(value: Any) -> Any:
    """Integral floats become ints, as ``JSON.stringify`` writes ``60.0`` as ``60``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: js_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [js_value(v) for v in value]
    return value


def js_json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A response with ``JSON.stringify`` bytes and ``Content-Type: application/json`` (no charset)."""
    body = json.dumps(js_value(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json", **(headers or {})})


def sim_json(obj: Any, status: int = 200) -> web.Response:
    """Control-route answer (readable JSON)."""
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(js_value(o), indent=1))


def method_not_allowed(method: str, allow: str) -> web.Response:
    """SvelteKit's answer for an HTTP method the endpoint does not export."""
    return web.Response(status=405, text=f"{method} method not allowed", headers={"Allow": allow})


def provided_secret(headers: Any) -> str:
    """``(x-worker-secret ?? authorization ?? '').replace(/^Bearer\\s+/i, '')`` — an empty header counts."""
    values = headers.getall("x-worker-secret", None) or headers.getall("authorization", None) or [""]
    return _BEARER.sub("", ", ".join(values))


# ---- faults -----------------------------------------------------------------------------------
@dataclass
class Faults:
    """Scripted answers that replace the next calls (a code, or ``"reset"`` to drop the connection).

    ``task_raw`` holds raw answers (:mod:`worker.sim.gma_hostile`) for the next *authorized* task calls.
    ``webhook_delay`` holds up every webhook before it is answered; ``progress_delay`` only progress
    webhooks (body status ``processing``), on top of it — a slow progress endpoint, fast final ones.
    """

    task: deque = field(default_factory=deque)
    task_raw: deque = field(default_factory=deque)
    webhook: dict[str, deque] = field(default_factory=dict)
    webhook_delay: float = 0.0
    progress_delay: float = 0.0
    task_delay: float = 0.0
    media_delay: float = 0.0

    def update(self, doc: dict[str, Any]) -> None:
        """Queue more faults from a ``POST /sim/faults`` body; raises ValueError on a bad one."""
        raw_answers = check_raw_answers(doc.get("task_raw") or [])
        if doc.get("clear"):
            self.task.clear()
            self.task_raw.clear()
            self.webhook.clear()
            self.webhook_delay = self.progress_delay = self.task_delay = self.media_delay = 0.0
        webhook = doc.get("webhook") or {}
        if not isinstance(webhook, dict):
            raise ValueError(f"webhook: must be an object of video id -> list, got {webhook!r}")
        for video_id, codes in webhook.items():
            self.webhook.setdefault(video_id, deque()).extend(check_codes(codes, f"webhook.{video_id}"))
        self.task.extend(check_codes(doc.get("task") or [], "task"))
        self.task_raw.extend(raw_answers)
        for key in ("webhook_delay", "progress_delay", "task_delay", "media_delay"):
            if key in doc:
                setattr(self, key, max(0.0, float(doc[key])))

    def webhook_wait(self, status: str) -> float:
        """Seconds to hold up a webhook whose body status is ``status`` (lower case) before answering."""
        return self.webhook_delay + (self.progress_delay if status == "processing" else 0.0)

    def next_webhook(self, video_id: str, status: str = "") -> int | str | None:
        """The scripted answer for this call, if any. Keys ``<id>:final`` and ``*:final`` apply only
        to ``completed``/``failed`` webhooks, so tests can script a final webhook's fate exactly."""
        keys = [video_id, "*"]
        if status in ("completed", "failed"):
            keys = [f"{video_id}:final", "*:final"] + keys
        for key in keys:
            if self.webhook.get(key):
                return self.webhook[key].popleft()
        return None

    def next_task(self) -> int | str | None:
        return self.task.popleft() if self.task else None

    def next_task_raw(self) -> dict[str, Any] | None:
        return self.task_raw.popleft() if self.task_raw else None

    def view(self) -> dict[str, Any]:
        return {"task": list(self.task), "task_raw": list(self.task_raw),
                "webhook": {k: list(v) for k, v in self.webhook.items() if v},
                "webhook_delay": self.webhook_delay, "progress_delay": self.progress_delay,
                "task_delay": self.task_delay, "media_delay": self.media_delay}


def check_codes(codes: Any, where: str) -> list[int | str]:
    """Validate a list of fault answers: HTTP codes 100–599 or ``"reset"``."""
    if not isinstance(codes, list):
        raise ValueError(f"{where}: must be a list, got {codes!r}")
    for code in codes:
        if code != "reset" and not (isinstance(code, int) and 100 <= code <= 599):
            raise ValueError(f"{where}: each entry must be an HTTP status or 'reset', got {code!r}")
    return list(codes)


def drop_connection(request: web.Request) -> None:
    """Abort the TCP connection without an answer (the client sees a reset); always raises."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


def fault_response(request: web.Request, code: int | str, body: dict[str, Any]) -> web.Response:
    """The scripted answer; ``reset`` closes the connection without any response."""
    if code == "reset":
        drop_connection(request)
    return js_json(body, status=int(code))


TASK_FAULT_BODIES: dict[Any, dict[str, str]] = {404: {"message": "No tasks available"},
                                                401: {"error": "Unauthorized"}}


@web.middleware
async def strip_trailing_slash(request: web.Request, handler: Any) -> web.StreamResponse:
    """SvelteKit's ``trailingSlash: 'never'``: ``/path/`` answers 308 to ``/path``."""
    if request.path != "/" and request.path.endswith("/"):
        target = request.path.rstrip("/") + (f"?{request.query_string}" if request.query_string else "")
        return web.Response(status=308, headers={"Location": target})
    return await handler(request)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (empty body → ``{}``); 400 otherwise."""
    raw = await request.read()
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"bad JSON: {exc}"}), content_type="application/json")
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                 content_type="application/json")
    return doc


def webhook_status(raw: bytes) -> str:
    """The lower-cased ``status`` of a webhook body, or "" when it has none (never raises)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return ""
    status = doc.get("status") if isinstance(doc, dict) else None
    return status.lower() if isinstance(status, str) else ""
