"""Hostile outputs of the simulated ComfyUI (``--tamper-outputs FILE``; tests only).

FILE holds ``{"mode": "append"|"replace", "entries": [{"filename", "subfolder", "type", "content", "size"},
...]}``. When a video node (``VHS_VideoCombine``: key ``gifs``; ``SaveVideo``: key ``images``) finishes,
these entries are reported in its UI output (``executed`` frame and ``/history``), appended to or
replacing the real ones. Each entry is reported as given, less ``content`` and ``size``; other keys
(``format``...) pass through. Its file is written only when (type, subfolder, filename) resolves inside
the simulator's own folder for that type; traversal and absolute names are reported, never written, and
``/view`` keeps refusing them as ComfyUI does. The file is read again at each prompt; no file, no tampering.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.sim.comfy_files import Dirs, FileLog, mp4_chunks, png_bytes, webm_chunks

logger = logging.getLogger(__name__)

VIDEO_NODE_KEYS = {"VHS_VideoCombine": "gifs", "SaveVideo": "images"}
MODES = ("append", "replace")
CONTENTS = ("mp4", "webm", "empty", "html", "png")
HTML = b"<html><script>alert(1)</script></html>"
_WRITE_ONLY_KEYS = ("content", "size")


@dataclass(frozen=True)
class Tamper:
    """One reading of the tamper file."""

    mode: str
    entries: tuple[dict[str, Any], ...]


def parse_tamper(doc: Any) -> Tamper:
    """Validate the file's JSON; raises ValueError naming the bad part."""
    if not isinstance(doc, dict) or doc.get("mode") not in MODES:
        raise ValueError(f"tamper: need an object with mode one of {', '.join(MODES)}")
    entries = doc.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("tamper: entries must be a list of objects")
    for index, entry in enumerate(entries):
        if entry.get("content", "mp4") not in CONTENTS:
            raise ValueError(f"tamper: entries[{index}].content must be one of {', '.join(CONTENTS)}")
        size = entry.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"tamper: entries[{index}].size must be a non-negative integer")
    return Tamper(doc["mode"], tuple(dict(e) for e in entries))


def load_tamper(path: str) -> Tamper | None:
    """The tamper file as it is now: None when no path is set, the file is missing or it is invalid
    (an invalid one is logged)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_tamper(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("sim: ignoring tamper file %s: %s", path, exc)
        return None


def safe_target(dirs: Dirs, entry: dict[str, Any]) -> str | None:
    """Where the entry's file may be written: inside the folder of its type, else None."""
    filename, subfolder, kind = entry.get("filename"), entry.get("subfolder", ""), entry.get("type", "output")
    if not all(isinstance(v, str) for v in (filename, subfolder, kind)) or not filename:
        return None
    folder = dirs.by_type(kind)
    if folder is None or "\x00" in filename + subfolder:
        return None
    target = os.path.abspath(os.path.join(folder, subfolder, filename))
    root, real = os.path.realpath(folder), os.path.realpath(target)
    if real == root or os.path.commonpath((root, real)) != root:
        return None
    return target


def content_chunks(entry: dict[str, Any], default_size: int, seed: str) -> Iterable[bytes]:
    """The bytes of one entry's file (``size`` for mp4/webm; absent or 0: the node's output size)."""
    content, size = entry.get("content", "mp4"), int(entry.get("size") or default_size)
    if content == "mp4":
        return mp4_chunks(size, seed)
    if content == "webm":
        return webm_chunks(size, seed)
    return [{"empty": b"", "html": HTML, "png": png_bytes()}[content]]


def reported(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as the UI output shows it."""
    return {k: v for k, v in entry.items() if k not in _WRITE_ONLY_KEYS}


def write_entries(tamper: Tamper, dirs: Dirs, files: FileLog, default_size: int, seed: str) -> None:
    """Write every safe entry's file (a write that fails is logged, the entry still reported)."""
    for index, entry in enumerate(tamper.entries):
        target = safe_target(dirs, entry)
        if target is None:
            logger.info("sim: tampered entry %r reported, not written", reported(entry))
            continue
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            files.write(target, content_chunks(entry, default_size, f"{seed}:tamper{index}"),
                        str(entry.get("type", "output")), dirs)
        except OSError as exc:
            logger.warning("sim: tampered entry %r not written: %s", reported(entry), exc)


def tampered_ui(tamper: Tamper, node_class: str, ui: dict[str, Any]) -> dict[str, Any]:
    """The node's UI output with the tamper entries under its video key."""
    key = VIDEO_NODE_KEYS[node_class]
    entries = [reported(e) for e in tamper.entries]
    existing = ui.get(key) if isinstance(ui.get(key), list) else []
    return {**ui, key: entries if tamper.mode == "replace" else [*existing, *entries]}


def apply_tamper(tamper: Tamper, node_class: str, ui: dict[str, Any], dirs: Dirs, files: FileLog,
                 default_size: int, seed: str) -> dict[str, Any]:
    """Write the tamper files and return the UI output to report (blocking: run it in a thread)."""
    write_entries(tamper, dirs, files, default_size, seed)
    return tampered_ui(tamper, node_class, ui)
