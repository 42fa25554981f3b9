"""Text that came from outside (tasks, ComfyUI answers, URLs, file names), made safe to show (pure).

Anything a task, a server or a file name carries may hold a newline that would start a forged log
line, a terminal escape, or a URL with credentials or a signature in it. :func:`safe_text` is what
every log line and every error message goes through: control characters escaped (``\\n`` becomes the
two characters ``\\n``), URL credentials replaced by ``***`` and query strings cut to ``?…``.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# C0 controls (newline and tab included), DEL, C1 controls, the Unicode line/paragraph separators, and
# lone surrogates (what a non-UTF-8 file name decodes to: no UTF-8 encoder takes them)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@'\"<>]+@")
_URL_QUERY = re.compile(r"(?i)\b((?:https?|wss?)://[^\s?#'\"<>]*)\?[^\s'\"<>)\]]*")


def _escape(match: re.Match) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def encodable(text: str) -> str:
    """``text`` that any UTF-8 encoder takes (lone surrogates written as ``\\udcff``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(text: str) -> str:
    """``text`` on one line: every control character escaped."""
    return _CONTROL.sub(_escape, text)


def scrub_urls(text: str) -> str:
    """Credentials (``user:pass@``) and query strings out of every URL in ``text``."""
    return _URL_QUERY.sub(r"\1?…", _URL_CREDENTIALS.sub(r"\1***@", text))


def safe_text(text: object, limit: int | None = None) -> str:
    """What a log line or an error message may show of ``text``: one line, no secrets in URLs."""
    shown = printable(scrub_urls(str(text)))
    if limit is not None and len(shown) > limit:
        shown = shown[: max(0, limit - 1)] + "…"
    return shown


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, as the HTTP library will connect to it. ``ValueError`` for
    a URL that two parsers could read differently (a backslash, whitespace, a control character, hosts
    that disagree), or that is not http(s): a check made on one reading must hold for the other."""
    from urllib3.util import parse_url

    if not url.isprintable() or any(char in url for char in "\\ \t"):
        raise ValueError("the URL holds a backslash, whitespace or a control character")
    parts, split = parse_url(url), urlsplit(url)
    host = (parts.host or "").strip("[]").lower()
    if not host or host != (split.hostname or "").lower() or parts.scheme not in ("http", "https"):
        raise ValueError("not an unambiguous http(s) URL")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, host, split.port or default


def display_url(url: str) -> str:
    """A URL for messages: scheme, host, port and path, no credentials, ``?…`` for a query string."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return safe_text(url.split("?", 1)[0].rsplit("@", 1)[-1], 200)
    if ":" in host:
        host = f"[{host}]"
    if port:
        host += f":{port}"
    shown = f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")
    return safe_text(shown, 300)
