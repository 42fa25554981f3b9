"""Input files of a job: decode a data URI or bare base64, or download an http(s) URL, with limits.

The original worker's rule: a value starting with ``http://``/``https://`` is a URL, anything else is
base64 with everything up to the first comma dropped (a data URI's header).
"""
from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

import requests

from handler.errors import InputError, TransientError

MAX_INPUT_BYTES = 100 * 1024 * 1024   # ComfyUI's default --max-upload-size


def display_url(url: str) -> str:
    """A URL without its query string or credentials, for messages (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def decode_base64(name: str, source: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """``data:image/png;base64,....`` or bare base64 -> bytes, or :class:`InputError` naming ``name``."""
    payload = source.split(",", 1)[1] if "," in source else source
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > limit:
        raise InputError(f"input {name} is larger than {limit // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"input {name} is neither an http(s) URL nor valid base64 ({exc})") from exc
    if not data:
        raise InputError(f"input {name} is empty")
    return data


def download(name: str, url: str, session: requests.Session, timeout: float = 60.0,
             limit: int = MAX_INPUT_BYTES) -> bytes:
    """Fetch an input URL; 4xx is permanent (the image is gone), 5xx and network errors transient."""
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            if 400 <= response.status_code < 500:
                raise InputError(f"input {name}: {display_url(url)} answered HTTP {response.status_code}")
            if response.status_code >= 500:
                raise TransientError(f"input {name}: {display_url(url)} answered HTTP {response.status_code}")
            return _read_limited(name, response, limit)
    except requests.RequestException as exc:
        raise TransientError(f"input {name}: cannot download {display_url(url)} "
                             f"({type(exc).__name__})") from exc


def _read_limited(name: str, response: requests.Response, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=256 * 1024):
        size += len(chunk)
        if size > limit:
            raise InputError(f"input {name} is larger than {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    if not size:
        raise InputError(f"input {name}: the download was empty")
    return b"".join(chunks)


def load_input(name: str, source: str, session: requests.Session, timeout: float = 60.0) -> bytes:
    """The bytes of one input, whatever form the task gave it in."""
    if is_url(source):
        return download(name, source, session, timeout)
    return decode_base64(name, source)
