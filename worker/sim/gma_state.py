"""State of the simulated GmAnimato: the ``videos`` table, recorded webhooks and uploaded videos.

One :class:`Store` per server. Rows use the database's snake_case column names. Each video also carries
simulator-only fields under ``sim`` (its workflow, task shape, image mode, how often it was handed out),
which never appear in what the real API returns. With a state file, every change is written at once
(write to a temporary file, then rename), so a killed server restarts with the same queue, like Postgres.
"""
from __future__ import annotations

import base64
import copy
import json
import logging
import os
import secrets
import string
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("uploaded", "in_queue", "processing", "completed", "failed")
_ALNUM = string.ascii_lowercase + string.digits


def iso_ms(ts: float) -> str:
    """``Date.toISOString()`` of an epoch time: ``2026-05-18T10:00:00.123Z``."""
    stamp = datetime.fromtimestamp(round(ts * 1000) / 1000, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO timestamp as written by :func:`iso_ms`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def to_base36(number: int) -> str:
    """Lower-case base-36 digits of a non-negative integer."""
    alphabet = string.digits + string.ascii_lowercase
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = alphabet[rem] + out
        if number == 0:
            return out


def new_video_id(counter: int, now: float) -> str:
    """A cuid-like id: ``c`` + 8 time digits + 4 counter digits + 12 random, 25 lower-case alnum chars."""
    stamp = to_base36(round(now * 1000))[-8:].rjust(8, "0")
    count = to_base36(counter % 36 ** 4).rjust(4, "0")
    return "c" + stamp + count + "".join(secrets.choice(_ALNUM) for _ in range(12))


class Store:
    """Videos, webhooks and uploads, optionally mirrored to a JSON file after every change.

    Not thread-safe: the server uses it from one event loop. Callers that must be atomic across an
    ``await`` (the claim) hold their own ``asyncio.Lock``.
    """

    def __init__(self, state_file: Path | None = None) -> None:
        self.state_file = state_file
        self.videos: dict[str, dict[str, Any]] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self.counter = 0
        self.last_created_ms = 0
        self.loaded = self.load() if state_file else False

    # ---- queue -----------------------------------------------------------------------------
    def next_created(self, now: float) -> tuple[int, str]:
        """A sequence number and a ``created_at`` strictly later than the previous one (FIFO ties)."""
        created_ms = max(round(now * 1000), self.last_created_ms + 1)
        self.last_created_ms = created_ms
        self.counter += 1
        return self.counter, iso_ms(created_ms / 1000)

    def add_video(self, video: dict[str, Any]) -> dict[str, Any]:
        """Insert a fully built video (``row`` fields plus ``sim``) and persist; rejects duplicate ids."""
        if video["id"] in self.videos:
            raise KeyError(f"video id {video['id']!r} already exists")
        self.videos[video["id"]] = video
        self.save()
        return video

    def claim_next(self, now: float) -> dict[str, Any] | None:
        """Mark the oldest ``in_queue`` local video ``processing`` (sets ``dequeued_at``); None if empty."""
        queued = [v for v in self.videos.values() if v["is_local_job"] and v["status"] == "in_queue"]
        if not queued:
            return None
        video = min(queued, key=lambda v: (v["created_at"], v["sim"]["seq"]))
        stamp = iso_ms(now)
        video.update(status="processing", dequeued_at=stamp, updated_at=stamp)
        video["sim"]["claimed_count"] += 1
        self.save()
        return video

    def apply_patch(self, video_id: str, patch: dict[str, Any], now: float) -> dict[str, Any]:
        """Write ``patch`` into the row (Prisma ``update``) and persist; returns the row."""
        video = self.videos[video_id]
        video.update(copy.deepcopy(patch))
        video["updated_at"] = iso_ms(now)
        self.save()
        return video

    # ---- records ---------------------------------------------------------------------------
    def record_webhook(self, entry: dict[str, Any]) -> None:
        self.webhooks.append(entry)
        self.save()

    def add_upload(self, name: str, data: bytes) -> None:
        self.uploads[name] = data
        self.save()

    def summary(self) -> dict[str, int]:
        """Number of videos per status; the five usual statuses are always present."""
        counts = {status: 0 for status in STATUSES}
        for video in self.videos.values():
            counts[video["status"]] = counts.get(video["status"], 0) + 1
        return counts

    def reset(self) -> None:
        """Forget every video, webhook and upload (ids keep counting up)."""
        self.videos.clear()
        self.webhooks.clear()
        self.uploads.clear()
        self.save()

    # ---- persistence -----------------------------------------------------------------------
    def save(self) -> None:
        """Write the whole state atomically; a no-op without a state file."""
        if self.state_file is None:
            return
        doc = {"videos": list(self.videos.values()), "webhooks": self.webhooks,
               "uploads": {k: base64.b64encode(v).decode() for k, v in self.uploads.items()},
               "counter": self.counter, "last_created_ms": self.last_created_ms}
        tmp = self.state_file.with_name(self.state_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_file)

    def load(self) -> bool:
        """Read the state file if it exists; True when something was loaded."""
        assert self.state_file is not None
        if not self.state_file.exists():
            return False
        doc = json.loads(self.state_file.read_text())
        self.videos = {v["id"]: v for v in doc.get("videos", [])}
        self.webhooks = doc.get("webhooks", [])
        self.uploads = {k: base64.b64decode(v) for k, v in doc.get("uploads", {}).items()}
        self.counter = doc.get("counter", len(self.videos))
        self.last_created_ms = doc.get("last_created_ms", 0)
        log.info("state: loaded %d videos, %d webhooks from %s", len(self.videos), len(self.webhooks),
                 self.state_file)
        return True


def now_s() -> float:
    """Wall-clock time in epoch seconds (one place to read the clock)."""
    return time.time()
