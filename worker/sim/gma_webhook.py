"""The rules of GmAnimato's ``POST /api/i2v-webhook/[id]``, as a pure function.

Mirrors ``src/routes/api/i2v-webhook/[id]/+server.ts`` (GmAnimato ``68f0ddb``, Postgres backend, no
``S3_BUCKET``/``S3_ENDPOINT``) step by step, including its JavaScript quirks: falsy checks, the
``status.toLowerCase`` TypeError, the case-sensitive ``.mp4``/``.webm`` filename rule, no state guard and
``String(err)`` bodies on 500. :func:`evaluate_webhook` never touches the store: it returns a
:class:`WebhookOutcome` that says what to answer, which columns to write and which upload to keep.
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from worker.sim.gma_state import iso_ms, parse_iso

ALLOWED_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
FINAL_VIDEO_URL_LIMIT = 500
VIDEO_SUFFIXES = (".mp4", ".webm")
_B64_KEEP = re.compile(r"[^A-Za-z0-9+/\-_]")


class JsError(Exception):
    """An exception the real route would catch and answer as 500 ``{"error": String(err)}``."""


@dataclass
class WebhookOutcome:
    """What the route answers, and what it changed.

    ``patch`` holds the columns to write (only with a 201). ``upload`` is ``(name, bytes)`` of a base64
    video written to ``/uploads``; the real server writes it before the status check, so it can exist
    even when the answer is a 400.
    """

    status: int
    body: dict[str, Any]
    patch: dict[str, Any] | None = None
    upload: tuple[str, bytes] | None = None


def evaluate_webhook(text: str, row: dict[str, Any] | None, now: float) -> WebhookOutcome:
    """Judge one webhook body against the stored ``row`` (None: unknown video id). Never raises."""
    try:
        return _evaluate(text, row, now)
    except JsError as exc:
        return WebhookOutcome(500, {"error": str(exc)})


def _evaluate(text: str, row: dict[str, Any] | None, now: float) -> WebhookOutcome:
    body = parse_js_json(text)
    job_id, status = js_get(body, "id"), js_get(body, "status")
    if not js_truthy(job_id) or not js_truthy(status):
        return WebhookOutcome(400, {"error": "missing id or status"})
    if row is None:
        return WebhookOutcome(404, {"error": "not found"})
    if not isinstance(job_id, str) or job_id != row.get("job_id"):
        return WebhookOutcome(403, {"error": "job id mismatch"})
    if not isinstance(status, str):
        raise JsError("TypeError: status.toLowerCase is not a function")
    patch: dict[str, Any] = {"status": status.lower()}
    if patch["status"] == "processing" and row.get("status") != "processing" and not row.get("dequeued_at"):
        patch["dequeued_at"] = iso_ms(now)
    patch.update(progress_patch(js_get(body, "progress")))
    upload = resolve_video(js_get(body, "files"), patch, now)
    return _finish(patch, row, now, upload)


def _finish(patch: dict[str, Any], row: dict[str, Any], now: float,
            upload: tuple[str, bytes] | None) -> WebhookOutcome:
    final_status = patch["status"]
    if final_status not in ALLOWED_STATUSES:
        return WebhookOutcome(400, {"error": "Invalid status. Allowed: " + ", ".join(ALLOWED_STATUSES)},
                              upload=upload)
    if "final_video_url" not in patch and final_status in ("completed", "failed"):
        patch["status"] = "failed"
    if final_status in ("completed", "failed"):
        patch["progress_percentage"] = None
        patch["progress_details"] = None
    if row.get("processing_started_at") and final_status == "completed":
        patch["processing_time_ms"] = round(now * 1000) - round(parse_iso(row["processing_started_at"]) * 1000)
    error = validate_final_video_url(patch.get("final_video_url"))
    if error:
        return WebhookOutcome(400, {"error": error}, upload=upload)
    return WebhookOutcome(201, {}, patch=patch, upload=upload)


def progress_patch(progress: Any) -> dict[str, Any]:
    """Columns from ``body.progress``: the percentage only if it is a number; details always replaced."""
    if not js_truthy(progress) or not isinstance(progress, (dict, list)):
        return {}
    fields = progress if isinstance(progress, dict) else {}
    patch: dict[str, Any] = {}
    pct = fields.get("percentage")
    if isinstance(pct, (int, float)) and not isinstance(pct, bool):
        patch["progress_percentage"] = pct
    keys = ("completed_nodes", "total_nodes", "current_node", "current_node_progress")
    patch["progress_details"] = {k: fields[k] for k in keys if k in fields}
    return patch


def resolve_video(files: Any, patch: dict[str, Any], now: float) -> tuple[str, bytes] | None:
    """Set ``patch['final_video_url']`` from ``files`` (s3_url first, then base64); return an upload."""
    if not isinstance(files, list):
        return None
    s3_file = find_video_file(files, "s3_url")
    if s3_file is not None and js_truthy(s3_file.get("data")):
        patch["final_video_url"] = s3_file["data"]
        return None
    b64_file = find_video_file(files, "base64")
    if b64_file is None or not js_truthy(b64_file.get("data")):
        return None
    data = b64_file["data"]
    raw = data.strip() if isinstance(data, str) else ""
    buf = node_base64_decode(raw.split(",")[-1])
    if not buf:
        patch["status"] = "failed"  # 'base64 payload empty' is caught and logged by the real route
        return None
    ext = b64_file["filename"].rsplit(".", 1)[-1].lower()
    name = f"{round(now * 1000)}-{uuid.uuid4()}.{ext}"
    patch["final_video_url"] = f"/uploads/{name}"
    return name, buf


def find_video_file(files: list[Any], kind: str) -> dict[str, Any] | None:
    """``files.find(f => f.type === kind && f.filename && (endsWith .mp4 || endsWith .webm))``."""
    for entry in files:
        if entry is None:
            raise JsError("TypeError: Cannot read properties of null (reading 'type')")
        if not isinstance(entry, dict) or entry.get("type") != kind:
            continue
        name = entry.get("filename")
        if not js_truthy(name):
            continue
        if not isinstance(name, str):
            raise JsError("TypeError: file.filename.endsWith is not a function")
        if name.endswith(VIDEO_SUFFIXES):
            return entry
    return None


def validate_final_video_url(value: Any) -> str | None:
    """``validateStringLength(final_video_url, 500)``: the message, or None when it fits."""
    if not js_truthy(value):
        return None
    if isinstance(value, str):
        length = len(value.encode("utf-16-le")) // 2  # JS counts UTF-16 code units
    elif isinstance(value, list):
        length = len(value)
    else:
        return None
    if length <= FINAL_VIDEO_URL_LIMIT:
        return None
    return (f"final_video_url exceeds maximum length of {FINAL_VIDEO_URL_LIMIT} characters "
            f"({length}/{FINAL_VIDEO_URL_LIMIT} characters)")


def node_base64_decode(text: str) -> bytes:
    """Decode like Node's lenient ``Buffer.from(text, 'base64')``: skip junk, stop at '=', accept url-safe."""
    clean = _B64_KEEP.sub("", text.split("=", 1)[0]).replace("-", "+").replace("_", "/")
    if len(clean) % 4 == 1:
        clean = clean[:-1]  # a lone trailing character carries no whole byte
    return base64.b64decode(clean + "=" * (-len(clean) % 4))


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (``[]`` and ``{}`` are truthy, ``0`` and ``""`` are not)."""
    if isinstance(value, (dict, list)):
        return True
    return bool(value)


def js_get(obj: Any, key: str) -> Any:
    """``obj?.[key]`` for a parsed JSON value: only objects have properties worth reading here."""
    return obj.get(key) if isinstance(obj, dict) else None


def parse_js_json(text: str) -> Any:
    """``JSON.parse`` semantics (no NaN/Infinity); errors raise :class:`JsError` with a V8-like message."""
    text = text[1:] if text.startswith("\ufeff") else text
    if not text.strip(" \t\n\r"):
        raise JsError("SyntaxError: Unexpected end of JSON input")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsError(v8_syntax_message(text, exc)) from exc
    except _BadConstant as exc:
        raise JsError(v8_token_message(text, text.find(str(exc)))) from exc


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


def v8_syntax_message(text: str, exc: json.JSONDecodeError) -> str:
    """Approximate V8's wording for a JSON.parse failure (the ``SyntaxError: `` prefix is exact)."""
    if exc.msg == "Extra data":
        return f"SyntaxError: Unexpected non-whitespace character after JSON at position {exc.pos}"
    if exc.msg.startswith("Unterminated string"):
        return f"SyntaxError: Unterminated string in JSON at position {len(text)}"
    if exc.pos >= len(text):
        return "SyntaxError: Unexpected end of JSON input"
    return v8_token_message(text, exc.pos)


def v8_token_message(text: str, pos: int) -> str:
    pos = max(pos, 0)
    shown = text if len(text) <= 40 else "..." + text[max(0, pos - 10): pos + 10] + "..."
    return f"SyntaxError: Unexpected token '{text[pos]}', \"{shown}\" is not valid JSON"
