"""Output storage without a server: URL forms, GmAnimato's 500-character limit, and the retry window."""
from __future__ import annotations

import base64

import pytest

from handler.errors import ComfyUnavailable, PermanentError, StorageError
from handler.storage import InlineStore, S3Store, object_url, storage_retry_delay, store_with_retry


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


class FlakyStore:
    """Raises the scripted errors, then stores."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def store(self, key_prefix, filename, data, content_type=""):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"filename": filename, "type": "s3_url", "data": f"http://s3/{key_prefix}/{filename}"}


def test_storage_retry_delay_backs_off_until_retry_for_is_spent():
    assert [storage_retry_delay(n, 0.0, 120.0) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 15, 15]
    assert storage_retry_delay(3, 118.5, 120.0) == 1.5         # the last try lands at the deadline
    assert storage_retry_delay(1, 120.0, 120.0) is None


def test_transient_failures_are_retried_then_stored():
    store = FlakyStore([StorageError("S3 upload failed: 503"), StorageError("S3 upload failed: unreachable")])
    sleeps = []
    entry = store_with_retry(store, "local-v", "a.mp4", b"x", 120.0, sleep=sleeps.append)
    assert entry["data"] == "http://s3/local-v/a.mp4" and store.calls == 3 and sleeps == [1.0, 2.0]


def test_a_refused_bucket_is_not_retried():
    store = FlakyStore([PermanentError("S3 refused the upload of k to bucket videos: AccessDenied")])
    with pytest.raises(PermanentError, match="AccessDenied"):
        store_with_retry(store, "local-v", "a.mp4", b"x", 120.0, sleep=lambda s: None)
    assert store.calls == 1


def test_retrying_gives_up_after_retry_for_with_the_cause():
    store = FlakyStore([StorageError("S3 upload of k failed: 503")] * 100)
    with pytest.raises(StorageError, match=r"503; still failing after \d+ s \(storage.retry_for = 0.01 s\)"):
        store_with_retry(store, "local-v", "a.mp4", b"x", 0.01, sleep=lambda s: __import__("time").sleep(0.02))


def test_an_abort_ends_the_retries():
    store = FlakyStore([StorageError("S3 upload failed: 503")] * 5)
    with pytest.raises(ComfyUnavailable, match="the worker was stopped while storing a.mp4"):
        store_with_retry(store, "local-v", "a.mp4", b"x", 120.0, abort=lambda: "the worker was stopped",
                         sleep=lambda s: None)


def test_a_comfyui_that_went_away_while_sending_an_output_is_asked_again_once_back():
    from contextlib import contextmanager
    opened = []

    @contextmanager
    def opener():
        opened.append(1)
        if len(opened) == 1:                 # the next prompt crashed ComfyUI mid-file; it restarts
            raise ComfyUnavailable("ComfyUI broke off sending a.mp4 (ProtocolError)")
        yield b"\x00\x00\x00\x18ftypmp42"

    sleeps = []
    entry = store_with_retry(InlineStore(), "local-v", "a.mp4", opener, 120.0, sleep=sleeps.append)
    assert base64.b64decode(entry["data"]).startswith(b"\x00\x00\x00\x18ftyp") and sleeps == [1.0]
