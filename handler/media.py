"""What kind of media some bytes are, by their first bytes (magic), never by name or declared type.

Inputs must be what GmAnimato sends (PNG, JPEG, WebP, GIF images; MP4, WebM videos); the delivered
video must be a non-empty MP4 or WebM; every stored output gets the content type of what it *is*
(``application/octet-stream`` when unknown), so a file named ``.png`` holding HTML is never served as
a page from a public bucket. Pure functions.
"""
from __future__ import annotations

HEAD_BYTES = 16                    # enough to tell every kind below apart

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
                 "mp4": "video/mp4", "webm": "video/webm"}
INPUT_KINDS = frozenset(CONTENT_TYPES)
VIDEO_KINDS = frozenset({"mp4", "webm"})
UNKNOWN = "application/octet-stream"


def sniff(head: bytes) -> str | None:
    """``png``, ``jpeg``, ``gif``, ``webp``, ``mp4``, ``webm``, or None (empty or anything else)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":                   # ISO base media (MP4, MOV share it; GmAnimato plays both)
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):   # EBML: Matroska/WebM
        return "webm"
    return None


def content_type(head: bytes) -> str:
    return CONTENT_TYPES.get(sniff(head) or "", UNKNOWN)


def describe_head(head: bytes) -> str:
    """A few words on what unexpected bytes look like, for an error message."""
    if not head:
        return "it is empty"
    text = head.lstrip()[:15].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg", b"<")):
        return "it looks like HTML/XML"
    if text.startswith((b"{", b"[")):
        return "it looks like JSON"
    return "its first bytes are " + head[:8].hex(" ")
