"""Reading an HTTP answer from a server we do not control, in bounded memory and bounded time.

``requests`` reads a whole body into memory (``.content``, ``.json()``) and its timeout bounds each
socket wait, not the whole transfer: a server that sends a byte every half second, or a gigabyte, holds
a worker for ever or takes its memory. :func:`read_capped` reads at most ``limit`` bytes (raising
:class:`TooLarge` past it) and stops at an overall ``deadline`` (raising :class:`TooSlow`); it reads
whatever has arrived (``read1``), so the deadline is checked at every arrival, however slow.
"""
from __future__ import annotations

import json
import time
from typing import Any

import requests

CHUNK = 256 * 1024
HEAD_KEPT = 64 * 1024          # of an answer over its limit, this much is kept (to read ids from)


class TooLarge(Exception):
    """The answer is longer than the limit; ``head`` holds its first bytes (at most ``HEAD_KEPT``)."""

    def __init__(self, limit: int, head: bytes = b"") -> None:
        super().__init__(f"larger than {describe_size(limit)}")
        self.limit = limit
        self.head = head


class TooSlow(Exception):
    """The answer did not arrive whole before the deadline; ``head``: its first bytes."""

    def __init__(self, head: bytes = b"") -> None:
        super().__init__("too slow")
        self.head = head


class BrokenOff(requests.ConnectionError):
    """The connection broke in the middle of the answer; ``head``: its first bytes."""

    def __init__(self, message: str, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head


def describe_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):g} MB"
    if size >= 1024:
        return f"{size / 1024:g} KB"
    return f"{size} bytes"


def read_capped(response: requests.Response, limit: int, deadline: float | None = None) -> bytearray:
    """The body of a ``stream=True`` response, at most ``limit`` bytes, before ``deadline`` (a
    ``time.monotonic()`` value), in one growing buffer (no second copy). Network errors propagate as
    ``requests`` exceptions."""
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    body = bytearray()
    raw = response.raw
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TooSlow(bytes(body[:HEAD_KEPT]))
        try:
            chunk = raw.read1(min(CHUNK, limit + 1 - len(body)), decode_content=True)
        except Exception as exc:      # urllib3's errors -> requests' (what callers already handle)
            raise BrokenOff(str(exc), bytes(body[:HEAD_KEPT])) from exc
        if not chunk:
            return body
        body += chunk
        if len(body) > limit:
            raise TooLarge(limit, bytes(body[:HEAD_KEPT]))


def read_json_capped(response: requests.Response, limit: int) -> Any:
    """The JSON of a ``stream=True`` response of at most ``limit`` bytes; ``ValueError`` (also for
    nesting too deep to decode, and for bodies over the limit) when it is not usable JSON."""
    try:
        data = read_capped(response, limit)
    except TooLarge as exc:
        raise ValueError(f"answer {exc}") from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None


def error_text(response: requests.Response, limit: int = 64 * 1024) -> str:
    """A short text of an error answer (read at most ``limit`` bytes); never raises."""
    try:
        data = read_capped(response, limit, time.monotonic() + 10)
    except TooLarge as exc:
        data = exc.head
    except Exception:               # too slow, broken off, or a header no parser expected
        return ""
    return data.decode("utf-8", "replace")
