"""Which files a finished prompt produced (pure, no I/O).

Output nodes name their files in ``executed`` frames and in ``/history/<id>`` ``outputs``, under
different keys: VideoHelperSuite's ``gifs``, core SaveVideo's ``images`` with ``animated: [true]``,
and ``videos``/``audio``/``files`` elsewhere. Every list entry with a ``filename`` counts, except
``type: temp`` previews. GmAnimato takes the first ``.mp4``/``.webm`` (lower-case, case-sensitive), so
videos come first and names are given a lower-case video extension.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".webm")
OTHER_VIDEO_EXTENSIONS = (".mov", ".mkv", ".gif", ".avi", ".webp")


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
        """The name GmAnimato sees: a video keeps its stem and gets a lower-case extension."""
        if not self.is_video:
            return self.filename
        stem, dot, ext = self.filename.rpartition(".")
        return f"{stem}{dot}{ext.lower()}"


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
            kind = str(item.get("type") or "output")
            if kind == "temp":
                continue
            refs.append(OutputRef(str(node_id), item["filename"], str(item.get("subfolder") or ""), kind))
    return refs


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
    names = [r.filename for r in refs]
    if not names:
        return "workflow finished without producing any output file (no video)"
    others = [n for n in names if n.lower().endswith(OTHER_VIDEO_EXTENSIONS)]
    if others:
        return (f"workflow produced {', '.join(others)} but GmAnimato accepts only .mp4 or .webm videos "
                "(set the video node's format to video/h264-mp4)")
    return f"workflow produced no video, only: {', '.join(names[:10])}"
