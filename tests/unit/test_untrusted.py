"""Outside text and bytes made safe: log/error text, URLs, media kinds, output names, signatures."""
from __future__ import annotations

import base64
import io
import logging

import pytest

from handler import media
from handler.errors import PermanentError
from handler.outputs import OutputRef, screen
from handler.storage import InlineStore
from handler.untrusted import display_url, safe_text
from worker.config import ConfigError, signing_key
from worker.jobs import signing
from worker.jobs.webhooks import failed_payload
from worker.logs import RedactFilter


def test_safe_text_is_one_line_without_url_credentials_or_queries():
    text = "a\nb\r\x1b[31m http://user:pw@h:1/x?X-Amz-Signature=abc https://h/y?q=1 \u2028end"
    shown = safe_text(text)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown and "\u2028" not in shown
    assert "pw" not in shown and "abc" not in shown and "q=1" not in shown
    assert "http://***@h:1/x?…" in shown and "\\n" in shown


def test_display_url_keeps_host_and_path_only():
    assert display_url("https://u:p@bucket.example:8443/a/b.png?sig=1#f") == "https://bucket.example:8443/a/b.png?…"
    assert display_url("http://[::1]:80/x") == "http://[::1]:80/x"


def test_log_lines_cannot_be_forged():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter(("s3cr3t",)))
    logger = logging.getLogger("test-untrusted")
    logger.addHandler(handler)
    try:
        logger.error("input %s failed", "a.png\n2026-01-01 00:00:00 - t - INFO - forged s3cr3t")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 1 and "forged" in out and "s3cr3t" not in out


def test_failed_payload_texts_are_safe():
    body = failed_payload("local-x", "bad\nline at http://a:b@h/p?token=t", ["d\x00etail"])
    assert body["error"] == "bad\\nline at http://***@h/p?…" and body["details"] == ["d\\x00etail"]


@pytest.mark.parametrize("head, kind", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "png"), (b"\xff\xd8\xff\xe0\0\x10JFIF", "jpeg"), (b"GIF89a\x01\0", "gif"),
    (b"RIFF\x10\0\0\0WEBPVP8 ", "webp"), (b"\0\0\0\x18ftypisom\0\0", "mp4"), (b"\x1a\x45\xdf\xa3\x01\0", "webm"),
    (b"<html><script>", None), (b"", None), (b"ftyp", None)])
def test_sniff_by_magic(head, kind):
    assert media.sniff(head) == kind
    assert media.content_type(head) == (media.CONTENT_TYPES[kind] if kind else "application/octet-stream")


def test_describe_head_says_what_it_looks_like():
    assert media.describe_head(b"") == "it is empty"
    assert media.describe_head(b"  <!DOCTYPE html>") == "it looks like HTML/XML"


@pytest.mark.parametrize("filename, subfolder, kind, safe", [
    ("Wan22_00001.mp4", "", "output", True), ("a.mp4", "video/sub", "output", True),
    ("../../escape.mp4", "", "output", False), ("/abs/evil.mp4", "", "output", False),
    ("a.mp4", "../..", "output", False), ("a.mp4", "/etc", "output", False), ("a.mp4", "", "input", False),
    ("..", "", "output", False), ("", "", "output", False), ("a\nb.mp4", "", "output", False),
    ("a.mp4", "x\\..\\..", "output", False)])
def test_screen_sets_unsafe_outputs_aside_with_a_reason(filename, subfolder, kind, safe):
    ref = OutputRef("9", filename, subfolder, kind)
    kept, aside = screen([ref])
    assert (kept == [ref]) is safe and (len(aside) == 1) is (not safe)
    if aside:
        assert aside[0][1]


def test_delivery_names_stay_plain():
    assert OutputRef("1", "Wan 22<x>.MP4", "", "output").delivery_name == "Wan_22_x_.mp4"
    assert OutputRef("1", "a" * 300 + ".webm", "", "output").delivery_name.endswith(".webm")
    assert len(OutputRef("1", "a" * 300 + ".webm", "", "output").delivery_name) <= 200
    assert OutputRef("1", "..hidden", "", "output").delivery_name == "output.hidden"


def test_inline_store_refuses_an_output_over_base64_max():
    store = InlineStore(max_bytes=1000)
    assert store.store("local-v", "a.mp4", io.BytesIO(b"x" * 1000))["data"] == base64.b64encode(b"x" * 1000).decode()
    with pytest.raises(PermanentError, match=r"storage.base64_max_mb\); configure storage.s3"):
        store.store("local-v", "a.mp4", io.BytesIO(b"x" * 1001))


def test_signature_matches_the_standard_webhooks_example():
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert signing.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_final_body_has_one_message_id_whatever_its_key_order():
    a = {"id": "local-v", "status": "completed", "files": [{"filename": "a.mp4"}]}
    b = {"files": [{"filename": "a.mp4"}], "status": "completed", "id": "local-v"}
    assert signing.message_id(a) == signing.message_id(b) != signing.message_id({**a, "status": "failed"})


@pytest.mark.parametrize("secret", ["abc", "whsec_", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_signing_secrets_are_refused_without_quoting_them(secret):
    with pytest.raises(ConfigError) as info:
        signing_key(secret)
    assert secret[6:] == "" or secret[6:] not in str(info.value)
