"""Standard Webhooks signatures for the webhooks we send (optional: ``webhook.signing_secret``).

GmAnimato authenticates no webhook (contract §2); a GmAnimato or a proxy that wants to can verify
these headers: ``webhook-id`` (one id per message: every attempt of one final body carries the same
id, across restarts, because it is derived from the body), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``. Pure functions.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any


def encode_body(body: Any) -> bytes:
    """The exact bytes sent (and signed) for a webhook body: ASCII JSON, so any text (a lone surrogate
    from a non-UTF-8 file name too) encodes."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def message_id(body: Any) -> str:
    """A final body's id: the same for the same body, in any process (``msg_`` + 32 hex digits)."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return "msg_" + digest.hexdigest()[:32]


def fresh_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def signature(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode("utf-8") + payload
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signed_headers(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, msg_id, timestamp, payload)}
