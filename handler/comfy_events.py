"""ComfyUI's websocket as a stream of typed events for one client id.

The socket is opened with our ``clientId`` *before* the prompt is queued, so no frame of the prompt
can be missed (ComfyUI keeps no backlog). Binary frames (previews: event types 1 and 4) are skipped,
text frames become :class:`Event`. A lost connection raises :class:`ComfyUnavailable`. A frame over
``MAX_FRAME_BYTES`` (previews are a few hundred KB, events far less) is refused before it is read: the
socket is dropped as if lost, so a misbehaving ComfyUI cannot take the worker's memory.
"""
from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import websocket

from handler.errors import ComfyUnavailable

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024 * 1024


def cap_frames(ws: websocket.WebSocket, limit: int = MAX_FRAME_BYTES) -> None:
    """Make ``ws`` refuse a frame longer than ``limit`` when its header says so, before reading it
    (websocket-client has no such setting: its frame reader's ``recv_strict`` is wrapped)."""
    buffer = getattr(ws, "frame_buffer", None)
    read = getattr(buffer, "recv_strict", None)
    if read is None:
        return

    def capped(size: int) -> bytes:
        if size > limit:
            raise websocket.WebSocketPayloadException(f"a frame of {size} bytes, over {limit}")
        return read(size)
    buffer.recv_strict = capped


@dataclass(frozen=True)
class Event:
    type: str
    data: dict = field(default_factory=dict)

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None


def parse_frame(payload: Any) -> Event | None:
    """One websocket text frame -> Event; binary, non-JSON or envelope-less frames -> None."""
    if isinstance(payload, (bytes, bytearray)):
        return None
    try:
        message = json.loads(payload)
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    data = message.get("data")
    return Event(message["type"], data if isinstance(data, dict) else {})


class EventStream:
    """A websocket to ComfyUI under one client id. Not thread-safe: one reader."""

    def __init__(self, ws_url: str, client_id: str, connect_timeout: float = 10.0) -> None:
        self.url = f"{ws_url}?clientId={client_id}"
        self.connect_timeout = connect_timeout
        self._ws: websocket.WebSocket | None = None

    def connect(self) -> None:
        self.close()
        try:
            # text frames are decoded with replacement below: the library's own UTF-8 check (pure
            # Python, ~1 µs a byte) would only turn a bad byte into a lost connection
            self._ws = websocket.create_connection(self.url, timeout=self.connect_timeout,
                                                   enable_multithread=True, skip_utf8_validation=True)
            cap_frames(self._ws)
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyUnavailable(f"cannot open ComfyUI's websocket ({exc})") from exc

    def receive(self, timeout: float) -> Event | None:
        """The next text event, or None when ``timeout`` passes (or only binary frames came)."""
        if self._ws is None:
            raise ComfyUnavailable("ComfyUI's websocket is not connected")
        self._ws.settimeout(timeout)
        try:
            opcode, payload = self._ws.recv_data()
        except (websocket.WebSocketTimeoutException, socket.timeout, TimeoutError):
            return None
        except (OSError, websocket.WebSocketException) as exc:
            self.close()
            raise ComfyUnavailable(f"ComfyUI's websocket closed ({exc or type(exc).__name__})") from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            raise ComfyUnavailable("ComfyUI closed the websocket")
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return None
        return parse_frame(payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close(timeout=0.2)
            except (OSError, websocket.WebSocketException):
                pass
            self._ws = None

    def __enter__(self) -> "EventStream":
        if self._ws is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
