"""Input files of a job: decode a data URI or bare base64, or download an http(s) URL, with limits.

The original worker's rule: a value starting with ``http://``/``https://`` is a URL, anything else is
base64 with everything up to the first comma dropped (a data URI's header).

Every input is hostile until checked (:class:`InputRules`): at most ``inputs.max_mb``, downloaded
within ``inputs.download_timeout`` from start to last byte, and of a kind GmAnimato sends (PNG, JPEG,
WebP, GIF, MP4, WebM: by its first bytes, not its name or declared type). The first URL may be private
or loopback (it comes from GmAnimato, often on the same network); a redirect is followed only to
http(s), and to another host only when every address it connects to is public (not loopback,
link-local or private) or the host is listed in ``inputs.redirect_hosts``: a redirect is the classic way
to make a server reach its own loopback, where this box's ComfyUI answers without authentication. The
check happens at connect time, on the address actually connected to (:mod:`handler.guarded_http`), so a
second DNS answer cannot slip past it.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests

from handler import media
from handler.bounded import TooLarge, TooSlow, read_capped
from handler.errors import InputError, TransientError
from handler.guarded_http import AddressRefused, guarded_session, is_public_address
from handler.untrusted import display_url, url_origin

MAX_INPUT_BYTES = 100 * 1024 * 1024   # ComfyUI's default --max-upload-size
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class InputRules:
    max_bytes: int = MAX_INPUT_BYTES
    download_timeout: float = 120.0
    redirect_hosts: frozenset[str] = frozenset()          # host or host:port, lower-case
    is_public: Callable[..., bool] = field(default=is_public_address, compare=False)
    connect_timeout: float = 10.0

    @classmethod
    def from_config(cls, inputs) -> "InputRules":
        """From ``config.inputs``; ``treat_as_public`` (tests only) adds addresses the rule counts public."""
        extra = frozenset(ipaddress.ip_address(a) for a in inputs.treat_as_public)
        check = (lambda address: address in extra or is_public_address(address)) if extra else is_public_address
        return cls(int(inputs.max_mb * 1024 * 1024), inputs.download_timeout,
                   frozenset(h.strip().lower() for h in inputs.redirect_hosts), check)


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


def redirect_allowed_plainly(origin: str, target: str, rules: InputRules) -> bool:
    """A hop that needs no address check: the first URL's own host (its port, or http→https on the
    default ports), or one the operator listed (pure). ``ValueError`` for an ambiguous URL."""
    _, host, port = url_origin(target)
    _, first_host, first_port = url_origin(origin)
    if host == first_host and (port == first_port or {port, first_port} <= {80, 443}):
        return True
    return host in rules.redirect_hosts or f"{host}:{port}" in rules.redirect_hosts


def download(name: str, url: str, session: requests.Session, rules: InputRules = InputRules()) -> bytes:
    """Fetch an input URL; 4xx is permanent (the image is gone), 5xx and network errors transient."""
    deadline = time.monotonic() + rules.download_timeout
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        if urlsplit(current).scheme not in ("http", "https"):
            raise InputError(f"input {name}: redirected to {display_url(current)}, which is not http(s)")
        try:
            plain = redirect_allowed_plainly(url, current, rules)
        except ValueError as exc:
            raise InputError(f"input {name}: {display_url(current)} is not a usable URL ({exc})") from None
        client = session if plain else guarded_session(rules.is_public)
        try:
            with client.get(current, stream=True, allow_redirects=False,
                            timeout=(rules.connect_timeout, max(0.1, min(30.0, deadline - time.monotonic())))) \
                    as response:
                location = response.headers.get("Location") if response.is_redirect else None
                if location is None:
                    return _read_answer(name, current, response, rules, deadline)
        except AddressRefused as exc:
            raise InputError(f"input {name}: redirected to {display_url(current)}, which {exc}; list the host in "
                             "inputs.redirect_hosts if it is trusted") from None
        except requests.RequestException as exc:
            raise TransientError(f"input {name}: cannot download {display_url(current)} "
                                 f"({type(exc).__name__})") from exc
        finally:
            if client is not session:
                client.close()
        try:
            current = urljoin(current, location)
        except ValueError:
            raise InputError(f"input {name}: redirected to a location that is not a URL") from None
    raise InputError(f"input {name}: more than {MAX_REDIRECTS} redirects from {display_url(url)}")


def _read_answer(name: str, url: str, response: requests.Response, rules: InputRules, deadline: float) -> bytes:
    if 400 <= response.status_code < 500:
        raise InputError(f"input {name}: {display_url(url)} answered HTTP {response.status_code}")
    if response.status_code >= 300:
        raise TransientError(f"input {name}: {display_url(url)} answered HTTP {response.status_code}")
    try:
        data = read_capped(response, rules.max_bytes, deadline)
    except TooLarge:
        raise InputError(f"input {name} is larger than {rules.max_bytes / (1024 * 1024):g} MB (inputs.max_mb)") \
            from None
    except TooSlow:
        raise InputError(f"input {name}: {display_url(url)} did not send it within "
                         f"{rules.download_timeout:g} s (inputs.download_timeout)") from None
    if not data:
        raise InputError(f"input {name}: the download was empty")
    return data


def check_kind(name: str, data: bytes) -> bytes:
    """``data`` when it is an image or video GmAnimato sends, else :class:`InputError` saying what it is."""
    if media.sniff(data[: media.HEAD_BYTES]) not in media.INPUT_KINDS:
        raise InputError(f"input {name} is not a PNG, JPEG, WebP, GIF, MP4 or WebM file "
                         f"({media.describe_head(data[: media.HEAD_BYTES])})")
    return data


def load_input(name: str, source: str, session: requests.Session, rules: InputRules = InputRules()) -> bytes:
    """The bytes of one input, whatever form the task gave it in, checked."""
    if is_url(source):
        return check_kind(name, download(name, source, session, rules))
    return check_kind(name, decode_base64(name, source, rules.max_bytes))
