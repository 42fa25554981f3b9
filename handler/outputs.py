"""Which files a finished prompt produced (pure, no I/O).

Output nodes name their files in ``executed`` frames and in ``/history/<id>`` ``outputs``, under
different keys: VideoHelperSuite's ``gifs``, core SaveVideo's ``images`` with ``animated: [true]``,
and ``videos``/``audio``/``files`` elsewhere. Every list entry with a ``filename`` counts, except
``type: temp`` previews. GmAnimato takes the first ``.mp4``/``.webm`` (lower-case, case-sensitive), so
videos come first and names are given a lower-case video extension.

A ComfyUI answer is outside input too (a custom node can name any file): :func:`screen` keeps only
files of ``type: output`` with a plain base name and a relative subfolder without ``..``, and says why
it set each other one aside. The name a file is stored and delivered under is reduced to letters,
digits, ``.``, ``-`` and ``_`` (:attr:`OutputRef.delivery_name`), so a key or URL built from it stays
under the job's own prefix.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handler.untrusted import safe_text

VIDEO_EXTENSIONS = (".mp4", ".webm")
OTHER_VIDEO_EXTENSIONS = (".mov", ".mkv", ".gif", ".avi", ".webp")
MAX_NAME_LENGTH = 200
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class OutputRef:
    node_id: str
    filename: str
    subfolder: str
    type: str

    @property
    def is_video(self) -> bool:
        return self.filename.lower().endswith(VIDEO_EXTENSIONS)

    @property
    def delivery_name(self) -> str:
        """The name stored and sent to GmAnimato: only letters, digits, ``.``, ``-``, ``_`` (others become
        ``_``), no leading dot, at most 200 characters; a video gets a lower-case extension."""
        stem, dot, ext = self.filename.rpartition(".")
        if not dot:
            stem, ext = self.filename, ""
        stem = _UNSAFE_NAME_CHARS.sub("_", stem).lstrip(".") or "output"
        ext = _UNSAFE_NAME_CHARS.sub("_", ext)[:16]
        ext = ext.lower() if self.is_video else ext
        return f"{stem[:MAX_NAME_LENGTH - len(ext) - 1]}{'.' if ext else ''}{ext}"

    @property
    def shown(self) -> str:
        """The file as ComfyUI named it, safe for a log line."""
        where = f"{self.subfolder}/" if self.subfolder else ""
        return safe_text(f"{where}{self.filename} (type {self.type})", 300)


def refs_from_ui(node_id: str, ui_output: Any) -> list[OutputRef]:
    """The files one output node reported (its ``executed`` ``output`` or history ``outputs[node]``)."""
    refs: list[OutputRef] = []
    if not isinstance(ui_output, Mapping):
        return refs
    for key, items in ui_output.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, Mapping) or not isinstance(item.get("filename"), str):
                continue
            kind = item.get("type") or "output"
            if kind == "temp":
                continue
            subfolder = item.get("subfolder") or ""
            refs.append(OutputRef(str(node_id), item["filename"], subfolder if isinstance(subfolder, str) else
                                  repr(subfolder), kind if isinstance(kind, str) else repr(kind)))
    return refs


def unsafe_reason(ref: OutputRef) -> str | None:
    """Why this file must not be fetched and published, or None when it may (pure)."""
    if ref.type != "output":
        return f"its type is {safe_text(ref.type, 40)!r}, not 'output'"
    name = ref.filename
    if not name or name in (".", ".."):
        return "its name is empty, '.' or '..'"
    if "/" in name or "\\" in name or not name.isprintable() or len(name) > 255:
        return "its name is a path or holds control characters, not a plain file name"
    folder = ref.subfolder
    parts = folder.replace("\\", "/").split("/")
    if folder.startswith(("/", "\\")) or ":" in folder or ".." in parts or not folder.isprintable() \
            or len(folder) > 255:
        return "its subfolder is not a plain relative folder"
    return None


def screen(refs: Iterable[OutputRef]) -> tuple[list[OutputRef], list[tuple[OutputRef, str]]]:
    """(the files that may be fetched, [(a file set aside, why)]) (pure)."""
    kept: list[OutputRef] = []
    set_aside: list[tuple[OutputRef, str]] = []
    for ref in refs:
        reason = unsafe_reason(ref)
        if reason is None:
            kept.append(ref)
        else:
            set_aside.append((ref, reason))
    return kept, set_aside


def collect_outputs(executed: Mapping[str, Any], history_outputs: Mapping[str, Any] | None) -> list[OutputRef]:
    """Every output file, videos first, each once; history fills in what the frames missed."""
    seen: set[tuple[str, str, str]] = set()
    refs: list[OutputRef] = []
    for source in (executed, history_outputs or {}):
        for node_id, ui in source.items():
            for ref in refs_from_ui(node_id, ui):
                key = (ref.filename, ref.subfolder, ref.type)
                if key not in seen:
                    seen.add(key)
                    refs.append(ref)
    return sorted(refs, key=lambda r: not r.is_video)


def describe_missing_video(refs: Iterable[OutputRef]) -> str:
    """The failure message when no acceptable video came out."""
    names = [safe_text(r.filename, 120) for r in refs]
    if not names:
        return "workflow finished without producing any output file (no video)"
    others = [n for n in names if n.lower().endswith(OTHER_VIDEO_EXTENSIONS)]
    if others:
        return (f"workflow produced {', '.join(others)} but GmAnimato accepts only .mp4 or .webm videos "
                "(set the video node's format to video/h264-mp4)")
    return f"workflow produced no video, only: {', '.join(names[:10])}"
