"""Output storage decisions that need no server: URL forms and GmAnimato's 500-character limit."""
from __future__ import annotations

import base64

import pytest

from handler.errors import PermanentError
from handler.storage import InlineStore, S3Store, object_url


def test_object_url_forms():
    assert object_url("http://s3.local:9000/", "videos", "", "local-v/Wan22 1.mp4") == \
        "http://s3.local:9000/videos/local-v/Wan22%201.mp4"
    assert object_url("", "videos", "eu-west-1", "local-v/a.mp4") == \
        "https://videos.s3.eu-west-1.amazonaws.com/local-v/a.mp4"
    assert object_url("", "videos", "", "k") == "https://videos.s3.us-east-1.amazonaws.com/k"


def test_inline_store_is_base64():
    entry = InlineStore().store("local-v", "a.mp4", b"\x00\x01video")
    assert entry == {"filename": "a.mp4", "type": "base64", "data": base64.b64encode(b"\x00\x01video").decode()}


def test_url_over_500_characters_fails_before_any_upload():
    store = S3Store("http://127.0.0.1:9/" + "x" * 480, "videos", "AK", "SK", "us-east-1")
    with pytest.raises(PermanentError, match="GmAnimato refuses URLs over 500"):
        store.store("local-" + "v" * 20, "Wan22_00001.mp4", b"data")   # port 9: an upload would fail otherwise
