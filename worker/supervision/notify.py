"""systemd's notify protocol (``Type=notify``): datagrams to ``$NOTIFY_SOCKET``; a no-op without it.

The socket may be a path or an abstract name (a leading ``@`` stands for the NUL byte).
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """``@name`` -> abstract address (leading NUL); a path stays a path (pure)."""
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1`` or ``STATUS=...``); True when a socket took it. Never raises."""
    target = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(socket_address(target))
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", target, exc)
        return False
