"""ComfyUI over HTTP: upload an input, queue a prompt, read history, fetch an output, interrupt.

Every network failure becomes :class:`ComfyUnavailable` (retry may help); a ``400`` from ``/prompt``
becomes :class:`PromptRejected` whose message quotes ``error.message``, ``error.details`` and every
``node_errors`` entry, built by the pure :func:`describe_rejection`.

Answers are read in bounded memory (:mod:`handler.bounded`): JSON up to ``MAX_JSON_BYTES`` (a real
``/object_info`` is tens of MB), error bodies up to a few KB; an output file is never read whole:
:meth:`ComfyClient.open_output` gives a stream (:class:`OutputBody`) that a store reads part by part.
"""
from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests

from handler.bounded import error_text, read_json_capped
from handler.errors import ComfyUnavailable, InputError, PromptRejected, describe_network_error
from handler.media import HEAD_BYTES
from handler.untrusted import safe_text

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_ERROR_BYTES = 16 * 1024
READ_PIECE = 1024 * 1024       # an output is read from /view in pieces of at most this


class OutputBody(io.RawIOBase):
    """An output file as ComfyUI's ``/view`` streams it: ``head`` (its first bytes, read at once, to tell
    what it is) and ``read(n)``. A connection lost in the middle raises :class:`ComfyUnavailable`."""

    def __init__(self, response: requests.Response, label: str) -> None:
        super().__init__()
        self._raw = response.raw
        self._label = label
        self.head = self._read(HEAD_BYTES)
        self._pending = self.head
        self.size = len(self.head)

    def readable(self) -> bool:
        return True

    def _read(self, amount: int) -> bytes:
        try:
            return self._raw.read(amount, decode_content=True) or b""
        except Exception as exc:          # urllib3's protocol and timeout errors
            raise ComfyUnavailable(f"ComfyUI broke off sending {self._label} ({type(exc).__name__})") from exc

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left with -1): short only at the end of the file. Read in
        pieces of at most :data:`READ_PIECE`, so a large ``size`` (a cap) costs nothing up front."""
        limit = None if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while limit is None or got < limit:
            piece = self._take(READ_PIECE if limit is None else min(READ_PIECE, limit - got))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _take(self, amount: int) -> bytes:
        if self._pending:
            piece, self._pending = self._pending[:amount], self._pending[amount:]
            return piece
        data = self._read(amount)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        if self._pending:
            count = min(len(buffer), len(self._pending))
            buffer[:count] = self._pending[:count]
            self._pending = self._pending[count:]
            return count
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        self.size += len(data)
        return len(data)


class MultipartUpload:
    """``multipart/form-data`` of one file and a few fields, sent from the caller's buffer as it is (the
    form ``requests`` would build from ``files=``/``data=``, without copying the file into it): a
    readable with a length, so it goes out with a ``Content-Length``."""

    def __init__(self, filename: str, data: bytes, fields: Mapping[str, str]) -> None:
        from urllib3.fields import RequestField

        boundary = uuid.uuid4().hex
        parts: list[bytes | memoryview] = []
        for key, value in fields.items():
            field = RequestField(name=key, data=value)
            field.make_multipart()
            parts += [f"--{boundary}\r\n{field.render_headers()}{value}\r\n".encode()]
        part = RequestField(name="image", data=b"", filename=filename)
        part.make_multipart()
        parts += [f"--{boundary}\r\n{part.render_headers()}".encode(), memoryview(data),
                  f"\r\n--{boundary}--\r\n".encode()]
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._parts = parts
        self._length = sum(len(p) for p in parts)
        self._index = self._offset = self._position = 0

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._length - self._position
        out = bytearray()
        while len(out) < size and self._index < len(self._parts):
            current = self._parts[self._index]
            piece = current[self._offset:self._offset + size - len(out)]
            out += piece
            self._offset += len(piece)
            if self._offset >= len(current):
                self._index, self._offset = self._index + 1, 0
        self._position += len(out)
        return bytes(out)


class ComfyClient:
    """HTTP calls to one ComfyUI instance at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/ws"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("stream", True)           # bodies are read with a cap (or streamed)
        kwargs.setdefault("allow_redirects", False)
        try:
            return self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} is unreachable ({describe_network_error(exc)})") from exc

    def probe(self, timeout: float = 3.0) -> bool:
        """True when ``GET /system_stats`` answers 200; never raises."""
        try:
            with self._request("GET", "/system_stats", timeout=timeout) as response:
                return response.status_code == 200
        except ComfyUnavailable:
            return False

    def system_stats(self) -> dict:
        with self._request("GET", "/system_stats") as response:
            data = self._json(response, "/system_stats")
        return data if isinstance(data, dict) else {}

    def upload_input(self, name: str, data: bytes) -> str:
        """Store ``data`` in ComfyUI's input folder as exactly ``name`` (overwriting); returns the name."""
        body = MultipartUpload(name, data, {"overwrite": "true", "type": "input"})
        response = self._request("POST", "/upload/image", data=body,
                                 headers={"Content-Type": body.content_type})
        with response:
            if response.status_code == 400:
                raise InputError(f"ComfyUI refused the input file name {name!r}")
            if response.status_code == 413:
                raise InputError(f"input {name} ({len(data)} bytes) is larger than ComfyUI's upload limit")
            body = self._json(response, "/upload/image")
        stored = body.get("name") if isinstance(body, dict) else None
        if stored != name:
            raise InputError(f"ComfyUI stored input {name!r} as {safe_text(stored, 80)!r}; the workflow would not "
                             "find it")
        return stored

    def queue_prompt(self, workflow: Mapping[str, Any], client_id: str, prompt_id: str) -> dict:
        """``POST /prompt`` with our own ``prompt_id``; returns ``node_errors`` of an accepted prompt."""
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        with self._request("POST", "/prompt", json=body) as response:
            if response.status_code == 400:
                raise PromptRejected(*describe_rejection(_maybe_json(response)))
            data = self._json(response, "/prompt")
        data = data if isinstance(data, dict) else {}
        if data.get("prompt_id") not in (None, prompt_id):
            raise ComfyUnavailable(f"ComfyUI queued the prompt as {safe_text(data.get('prompt_id'), 80)!r}, "
                                   f"not the id {prompt_id!r} we chose")
        errors = data.get("node_errors")
        return errors if isinstance(errors, dict) else {}

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a finished prompt, or None while it is queued, running or unknown."""
        with self._request("GET", f"/history/{prompt_id}") as response:
            data = self._json(response, "/history")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def is_queued(self, prompt_id: str) -> bool:
        """True when ``prompt_id`` is running or pending in ComfyUI's queue."""
        with self._request("GET", "/queue") as response:
            data = self._json(response, "/queue")
        data = data if isinstance(data, dict) else {}
        items = [item for key in ("queue_running", "queue_pending") if isinstance(data.get(key), list)
                 for item in data[key]]
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)

    def find_prompt(self, prompt_id: str) -> tuple[dict | None, bool]:
        """(its history entry or None, whether ComfyUI knows ``prompt_id`` at all): history, else the
        queue, else history once more (it may have finished between the two calls)."""
        entry = self.history(prompt_id)
        if entry is not None:
            return entry, True
        if self.is_queued(prompt_id):
            return None, True
        entry = self.history(prompt_id)
        return entry, entry is not None

    @contextmanager
    def open_output(self, filename: str, subfolder: str, kind: str) -> Iterator[OutputBody]:
        """An output file as a stream (closed when the block ends)."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        shown = safe_text(f"{subfolder + '/' if subfolder else ''}{filename}", 300)
        with self._request("GET", "/view", params=params) as response:
            if response.status_code == 404:
                raise ComfyUnavailable(f"ComfyUI has no output file {shown} (GET /view answered 404)")
            self._check(response, "/view")
            yield OutputBody(response, shown)

    def fetch_output(self, filename: str, subfolder: str, kind: str) -> bytes:
        """An output file whole (tests and small files only: :meth:`open_output` streams)."""
        with self.open_output(filename, subfolder, kind) as body:
            return body.read()

    def cancel(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` whether it runs (interrupt) or still waits (queue delete); never raises."""
        try:
            self._request("POST", "/queue", json={"delete": [prompt_id]}, timeout=1).close()
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id}, timeout=1).close()
        except ComfyUnavailable:
            pass

    def _json(self, response: requests.Response, what: str) -> Any:
        self._check(response, what)
        try:
            return read_json_capped(response, MAX_JSON_BYTES)
        except ValueError as exc:
            raise ComfyUnavailable(f"ComfyUI {what} answered {exc}") from None
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"ComfyUI {what} broke off its answer ({describe_network_error(exc)})") from exc

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code >= 400:
            raise ComfyUnavailable(f"ComfyUI {what} answered HTTP {response.status_code}: "
                                   f"{safe_text(error_text(response, MAX_ERROR_BYTES), 200)!r}")
        if 300 <= response.status_code < 400:
            raise ComfyUnavailable(f"ComfyUI {what} answered a redirect (HTTP {response.status_code}); "
                                   "is the address a ComfyUI?")


def describe_rejection(body: Any) -> tuple[str, list[str]]:
    """A 400 body of ``/prompt`` -> (one-line message, one detail line per node error)."""
    if not isinstance(body, dict):
        return "ComfyUI rejected the workflow (HTTP 400)", []
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    details = node_error_lines(body.get("node_errors"))
    parts = [str(error.get("message") or "invalid prompt").rstrip(".")]
    if error.get("details"):
        parts.append(str(error["details"]))
    message = "ComfyUI rejected the workflow: " + ": ".join(parts)
    if details:
        message += " — " + "; ".join(details)
    return message, details


def node_error_lines(node_errors: Any) -> list[str]:
    """``node_errors`` -> ``node 14 (LoadImage): Custom validation failed for node: image - ...``."""
    if not isinstance(node_errors, dict):
        return []
    lines = []
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, dict) else {}
        class_type = entry.get("class_type") or "?"
        for err in entry.get("errors") or [{}]:
            text = str(err.get("message") or "invalid")
            if err.get("details"):
                text += f": {err['details']}"
            lines.append(f"node {node_id} ({class_type}): {text}")
    return lines


def _maybe_json(response: requests.Response) -> Any:
    try:
        return read_json_capped(response, MAX_ERROR_BYTES * 64)
    except (ValueError, requests.RequestException):
        return None
