"""Hostile test controls of the simulated GmAnimato: raw task answers and the stray-request log.

Nothing here is part of the real API. A test queues *raw answers* (``POST /sim/faults {"task_raw": [...]}``)
to make the task route answer like a broken or malicious deployment (bad bytes, deep nesting, a cut-off
claim), and reads ``GET /sim/stray`` to see every request the worker sent to a path that is no route.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from typing import Any

from aiohttp import web

RAW_KEYS = frozenset({"status", "content_type", "body", "body_b64", "deep", "id", "truncate"})
RAW_BODY_KEYS = ("body", "body_b64", "deep", "truncate")
MAX_DEEP = 10_000_000
SECRET_HEADERS = frozenset({"x-worker-secret", "authorization", "proxy-authorization"})
STRAY_LIMIT = 10_000


# ---- raw task answers -------------------------------------------------------------------------
def check_raw_answers(answers: Any) -> list[dict[str, Any]]:
    """Validate the ``task_raw`` list of ``POST /sim/faults``; raises ValueError naming the bad entry."""
    if not isinstance(answers, list):
        raise ValueError(f"task_raw: must be a list, got {answers!r}")
    for index, answer in enumerate(answers):
        check_raw_answer(answer, f"task_raw[{index}]")
    return [dict(answer) for answer in answers]


def check_raw_answer(answer: Any, where: str) -> None:
    """One raw answer: at most one body source, a real status, a string content type."""
    if not isinstance(answer, dict):
        raise ValueError(f"{where}: must be an object, got {answer!r}")
    unknown = sorted(set(answer) - RAW_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    sources = [key for key in RAW_BODY_KEYS if answer.get(key) not in (None, False)]
    if len(sources) > 1:
        raise ValueError(f"{where}: give at most one of {', '.join(RAW_BODY_KEYS)}, got {', '.join(sources)}")
    status = answer.get("status", 200)
    if not (isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599):
        raise ValueError(f"{where}: status must be an HTTP status, got {status!r}")
    if not isinstance(answer.get("content_type", ""), str):
        raise ValueError(f"{where}: content_type must be a string")
    if answer.get("body") is not None and not isinstance(answer["body"], str):
        raise ValueError(f"{where}: body must be a string (use body_b64 for raw bytes)")
    if answer.get("body_b64") is not None:
        raw_bytes(answer["body_b64"], where)
    check_deep(answer, where)


def check_deep(answer: dict[str, Any], where: str) -> None:
    deep = answer.get("deep")
    if deep is not None and not (isinstance(deep, int) and not isinstance(deep, bool) and 1 <= deep <= MAX_DEEP):
        raise ValueError(f"{where}: deep must be an integer from 1 to {MAX_DEEP}, got {deep!r}")
    if answer.get("id") is not None and (deep is None or not isinstance(answer["id"], str)):
        raise ValueError(f"{where}: id must be a string and goes with deep")


def raw_bytes(encoded: Any, where: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: body_b64 is not base64 ({exc})") from exc


def deep_body(depth: int, job_id: str | None) -> bytes:
    """``depth`` nested JSON lists, alone or as the ``input`` of ``{"id": job_id, ...}`` (built as text)."""
    nested = "[" * depth + "]" * depth
    if job_id is None:
        return nested.encode("ascii")
    return ('{"id":' + json.dumps(job_id) + ',"input":' + nested + "}").encode("utf-8")


def raw_body(answer: dict[str, Any]) -> bytes:
    """The bytes of a raw answer that needs no claim (everything but ``truncate``)."""
    if answer.get("body_b64") is not None:
        return raw_bytes(answer["body_b64"], "task_raw")
    if answer.get("deep") is not None:
        return deep_body(int(answer["deep"]), answer.get("id"))
    return str(answer.get("body") or "").encode("utf-8")


def truncated(body: bytes) -> bytes:
    """The first half of a real claim's JSON (never valid JSON for a non-trivial task)."""
    return body[: len(body) // 2]


def raw_response(answer: dict[str, Any], body: bytes) -> web.Response:
    """The answer as scripted: its status, its Content-Type, exactly these bytes."""
    content_type = answer.get("content_type", "application/json")
    headers = {"Content-Type": content_type} if content_type else {}
    return web.Response(status=int(answer.get("status", 200)), body=body, headers=headers)


# ---- stray requests ---------------------------------------------------------------------------
def redacted_headers(headers: Any) -> dict[str, str]:
    """Request headers by lower-case name (repeats joined by ", "), secret values replaced by ``***``."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        value = "***" if key in SECRET_HEADERS else value
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class StrayLog:
    """Requests to paths the app has no route for (the newest ``STRAY_LIMIT`` kept)."""

    def __init__(self) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=STRAY_LIMIT)

    async def record(self, request: web.Request) -> None:
        """Read (and count, not keep) the body, then remember the request."""
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
        self.entries.append({"method": request.method, "path": request.path,
                             "raw_path": request.raw_path.split("?", 1)[0], "query": request.query_string,
                             "body_size": size, "headers": redacted_headers(request.headers)})

    def view(self) -> list[dict[str, Any]]:
        return list(self.entries)

    def clear(self) -> None:
        self.entries.clear()
