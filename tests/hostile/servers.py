"""A small HTTP server that plays the hostile third party in tests: slow, huge, redirecting answers.

``ProbeServer`` is a standard-library ``ThreadingHTTPServer`` (HTTP/1.1, one thread per connection)
served from a daemon thread::

    with ProbeServer(host="127.0.0.2") as probe:        # port 0: a free port
        url = probe.url + "/trickle"                    # "http://127.0.0.2:<port>/trickle"
        ...
        probe.wait_for_hits(1, timeout=10, path="/trickle")

Every request is recorded as a :class:`Hit` ``(method, path, headers, body_size)`` before it is
answered: ``path`` is the request target as sent (query included), ``headers`` a dict by lower-case
name. Routes (any method)::

    /png                 a valid small PNG (image/png)
    /html                a text/html page
    /trickle[?type=CT&every=S]
                         200, Content-Length 10_000_000, then one byte every S (0.5) s until the client
                         goes away, the server stops or 120 s pass (Content-Type image/png by default)
    /huge?mb=N[&type=CT] N MiB of zeros, streamed with Content-Length (image/png by default)
    /redirect?to=URL     302 to URL
    /callback            records the body (``callbacks``) and answers 200 {"success": true}, or the
                         next status scripted with ``script_finals`` when the body is a final webhook
    /big-answer?mb=N     200 application/json: N MiB, valid JSON (spaces, then {"success":true})
    /slow-answer?s=N     200 {"success": true} after N seconds (ends early when the client goes away)
    anything else        404

``script_finals([500, ...])`` makes the next ``/callback`` requests whose JSON body has ``status``
``completed`` or ``failed`` answer those statuses, one each, before answering 200 again (progress
webhooks are not affected).

``stop()`` (the ``with`` exit) closes the listening socket and every open connection and joins the
handler threads, so the port and the threads are free within about a second.
"""
from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from worker.sim.comfy_files import png_bytes

MIB = 1024 * 1024
TRICKLE_LENGTH = 10_000_000
TRICKLE_LIMIT_S = 120.0
CALLBACK_KEEP = 16 * MIB          # bytes of each /callback body kept (the size is always exact)
HTML_PAGE = b"<!doctype html><html><head><title>probe</title></head><body><p>not an image</p></body></html>"
SUCCESS = b'{"success": true}'


class Hit(NamedTuple):
    """One request as the probe saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body_size: int


class ClientGone(Exception):
    """The client closed its connection (or the server is stopping) while being answered."""


class ProbeServer:
    """The threaded probe server: start/stop (or ``with``), the recorded hits, waits with deadlines."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.requested_port = host, port
        self.closing = threading.Event()
        self._cond = threading.Condition()
        self._hits: list[Hit] = []
        self._callbacks: list[tuple[str, bytes]] = []
        self._final_script: list[int] = []
        self._open: dict[socket.socket, threading.Thread] = {}
        self._httpd: _Httpd | None = None
        self._thread: threading.Thread | None = None

    # ---- life -----------------------------------------------------------------------------
    def start(self) -> ProbeServer:
        """Bind and serve from a daemon thread; returns self."""
        self._httpd = _Httpd((self.host, self.requested_port), _ProbeHandler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"probe-{self.host}:{self.port}")
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, free the port, cut open connections and join the handler threads."""
        if self._httpd is None:
            return
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._cond:
            connections = list(self._open.items())
        for conn, _ in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd = None

    def __enter__(self) -> ProbeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- what was seen --------------------------------------------------------------------
    @property
    def hits(self) -> list[Hit]:
        with self._cond:
            return list(self._hits)

    @property
    def callbacks(self) -> list[tuple[str, bytes]]:
        """``(path, body)`` of every ``/callback`` request (bodies cut at :data:`CALLBACK_KEEP`)."""
        with self._cond:
            return list(self._callbacks)

    @property
    def open_connections(self) -> int:
        """Connections whose handler thread is still running."""
        with self._cond:
            return len(self._open)

    def hits_to(self, path: str) -> list[Hit]:
        """Hits whose path, query left out, is ``path``."""
        return [hit for hit in self.hits if urlsplit(hit.path).path == path]

    def wait_for_hits(self, n: int, timeout: float = 10.0, path: str | None = None) -> list[Hit]:
        """Wait until at least ``n`` hits (to ``path`` when given) are recorded; returns them.
        Raises AssertionError after ``timeout`` seconds."""
        def matching() -> list[Hit]:
            return [h for h in self._hits if path is None or urlsplit(h.path).path == path]
        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                raise AssertionError(f"probe: {len(matching())} of {n} hits{f' to {path}' if path else ''} "
                                     f"after {timeout:g} s: {self._hits!r}")
            return matching()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no connection is open (every handler ended); AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._open, timeout):
                raise AssertionError(f"probe: {len(self._open)} connections still open after {timeout:g} s")

    def clear(self) -> None:
        with self._cond:
            self._hits.clear()
            self._callbacks.clear()
            self._final_script.clear()

    def script_finals(self, statuses: list[int]) -> None:
        """Answer the next final webhooks (``/callback`` bodies with status completed/failed) with these
        statuses, one each, in order; then 200 again."""
        with self._cond:
            self._final_script.extend(int(s) for s in statuses)

    def _scripted_status(self, body: bytes) -> int | None:
        """The scripted status for this ``/callback`` body, or None (answer 200)."""
        try:
            status = json.loads(body).get("status")
        except (ValueError, AttributeError):
            return None
        with self._cond:
            if status in ("completed", "failed") and self._final_script:
                return self._final_script.pop(0)
        return None

    # ---- book-keeping from handler threads --------------------------------------------------
    def _record(self, hit: Hit, callback_body: bytes | None) -> None:
        with self._cond:
            self._hits.append(hit)
            if callback_body is not None:
                self._callbacks.append((hit.path, callback_body))
            self._cond.notify_all()

    def _track(self, conn: socket.socket, thread: threading.Thread | None) -> None:
        with self._cond:
            if thread is None:
                self._open.pop(conn, None)
            else:
                self._open[conn] = thread
            self._cond.notify_all()


class _Httpd(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its probe, does not wait for handlers on close and stays quiet
    about clients that go away."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, probe: ProbeServer) -> None:
        self.probe = probe
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for clients that vanish mid-answer (what these tests do on purpose), loud for bugs."""
        if not isinstance(sys.exc_info()[1], (ClientGone, OSError)):
            super().handle_error(request, client_address)


class _ProbeHandler(BaseHTTPRequestHandler):
    """One connection: record each request, then answer it by route."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is dropped after this
    server: _Httpd

    def setup(self) -> None:
        super().setup()
        self.server.probe._track(self.connection, threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.probe._track(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- dispatch ---------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Read the body, record the hit, answer by route (a client that leaves ends the answer)."""
        route = urlsplit(self.path).path
        keep = route == "/callback"
        body, size = self.read_body(keep)
        self.kept_body = body
        self.server.probe._record(Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                      size), body if keep else None)
        handler = ROUTES.get(route, _ProbeHandler.not_found)
        try:
            handler(self)
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = dispatch

    def read_body(self, keep: bool) -> tuple[bytes, int]:
        """The request body (kept up to :data:`CALLBACK_KEEP` when ``keep``) and its exact size."""
        kept, size = bytearray(), 0
        for chunk in self.body_chunks():
            size += len(chunk)
            if keep and len(kept) < CALLBACK_KEEP:
                kept += chunk[: CALLBACK_KEEP - len(kept)]
        return bytes(kept), size

    def body_chunks(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from self.chunked_body()
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def chunked_body(self) -> Any:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def query(self, name: str, default: str) -> str:
        return parse_qs(urlsplit(self.path).query).get(name, [default])[0]

    # ---- writing ----------------------------------------------------------------------------
    def head(self, status: int, content_type: str | None, length: int | None, **extra: str) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def write(self, data: bytes) -> None:
        if self.command != "HEAD" and data:
            self.wfile.write(data)
            self.wfile.flush()

    def whole(self, status: int, content_type: str, data: bytes) -> None:
        self.head(status, content_type, len(data))
        self.write(data)

    def wait_or_leave(self, seconds: float) -> None:
        """Wait ``seconds``; raise ClientGone as soon as the client closes or the server stops."""
        deadline = time.monotonic() + seconds
        while True:
            if self.server.probe.closing.is_set():
                raise ClientGone("server stopping")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.1))
            if not readable:
                continue
            if not self.connection.recv(1, socket.MSG_PEEK):
                raise ClientGone("client closed")
            self.server.probe.closing.wait(min(left, 0.1))  # the client sent more: keep waiting, no spin

    # ---- routes -----------------------------------------------------------------------------
    def png(self) -> None:
        self.whole(200, "image/png", png_bytes(16, 16, (200, 30, 30)))

    def html(self) -> None:
        self.whole(200, "text/html; charset=utf-8", HTML_PAGE)

    def trickle(self) -> None:
        every = float(self.query("every", "0.5"))
        self.head(200, self.query("type", "image/png"), TRICKLE_LENGTH)
        deadline = time.monotonic() + TRICKLE_LIMIT_S
        sent = 0
        while sent < TRICKLE_LENGTH and time.monotonic() < deadline:
            self.write(b"\0")
            sent += 1
            self.wait_or_leave(every)
        self.close_connection = True  # the promised length was not sent

    def huge(self) -> None:
        size = int(float(self.query("mb", "1")) * MIB)
        self.head(200, self.query("type", "image/png"), size)
        self.stream_bytes(size, b"\0")

    def stream_bytes(self, size: int, fill: bytes, tail: bytes = b"") -> None:
        block = fill * (1 << 16)
        left = size - len(tail)
        while left > 0:
            if self.server.probe.closing.is_set():
                raise ClientGone("server stopping")
            piece = block[: min(len(block), left)]
            self.write(piece)
            left -= len(piece)
        self.write(tail)

    def redirect(self) -> None:
        self.head(302, None, 0, Location=self.query("to", "/"))

    def callback(self) -> None:
        status = self.server.probe._scripted_status(self.kept_body)
        if status is not None:
            self.whole(status, "application/json", b'{"error": "scripted by the probe"}')
            return
        self.whole(200, "application/json", SUCCESS)

    def big_answer(self) -> None:
        size = max(int(float(self.query("mb", "1")) * MIB), len(SUCCESS))
        self.head(200, "application/json", size)
        self.stream_bytes(size, b" ", SUCCESS)

    def slow_answer(self) -> None:
        self.wait_or_leave(float(self.query("s", "1")))
        self.whole(200, "application/json", SUCCESS)

    def not_found(self) -> None:
        self.whole(404, "text/plain", b"no such probe route")


ROUTES = {"/png": _ProbeHandler.png, "/html": _ProbeHandler.html, "/trickle": _ProbeHandler.trickle,
          "/huge": _ProbeHandler.huge, "/redirect": _ProbeHandler.redirect, "/callback": _ProbeHandler.callback,
          "/big-answer": _ProbeHandler.big_answer, "/slow-answer": _ProbeHandler.slow_answer}
