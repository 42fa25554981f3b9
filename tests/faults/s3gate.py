"""A gate in front of the moto S3 server, so a test can make S3 unreachable or make it refuse.

Modes: ``open`` (bytes pass both ways), ``down`` (nothing listens: connection refused, and open
connections are cut), ``forbidden`` (every request is answered ``403 AccessDenied``, as a bucket policy
or a wrong key would be). The gate listens on 127.0.0.1 only and stops with the test.
"""
from __future__ import annotations

import socket
import threading

FORBIDDEN = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message><RequestId>gate</RequestId></Error>")


class S3Gate:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "open"
        self.requests = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.set_mode("open")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            if mode == "down":
                self._close_listener()
                for conn in list(self._conns):
                    _shut(conn)
            elif self._listener is None:
                self._listen()

    def close(self) -> None:
        with self._lock:
            self._close_listener()
            for conn in list(self._conns):
                _shut(conn)

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True, name="s3gate-accept").start()

    def _close_listener(self) -> None:
        if self._listener is not None:
            _shut(self._listener)
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                mode = self.mode
                self.requests += 1
            target = self._refuse if mode == "forbidden" else self._pipe
            threading.Thread(target=target, args=(conn,), daemon=True, name="s3gate-conn").start()

    def _refuse(self, conn: socket.socket) -> None:
        conn.settimeout(0.3)
        try:
            while conn.recv(65536):        # read the whole request (until the client pauses)
                pass
        except OSError:
            pass
        try:
            conn.sendall(FORBIDDEN % (len(ACCESS_DENIED), ACCESS_DENIED))
        except OSError:
            pass
        self._forget(conn)

    def _pipe(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            self._forget(conn)
            return
        with self._lock:
            self._conns.add(upstream)
        done = threading.Event()
        for src, dst in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_copy, args=(src, dst, done), daemon=True, name="s3gate-copy").start()
        done.wait()
        self._forget(conn)
        self._forget(upstream)

    def _forget(self, conn: socket.socket) -> None:
        _shut(conn)
        with self._lock:
            self._conns.discard(conn)


def _copy(src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
    src.settimeout(None)
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    done.set()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
