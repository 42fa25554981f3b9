"""Where finished outputs go: an S3 bucket (boto3) or, with no bucket, base64 inside the webhook.

Each store turns one output file into the ``{filename, type, data}`` entry of GmAnimato's ``files``.
S3 keys are ``<job id>/<filename>``; the URL is ``<endpoint>/<bucket>/<key>`` (with no endpoint, AWS's
own ``https://<bucket>.s3.<region>.amazonaws.com/<key>``). GmAnimato refuses a stored URL over 500
characters, so such a URL fails the job before anything is uploaded. :func:`store_with_retry` retries
transient failures (unreachable, 5xx, throttling) with backoff for ``storage.retry_for`` seconds; a
refused bucket (403, NoSuchBucket) fails at once.
"""
from __future__ import annotations

import base64
import logging
import mimetypes
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

from handler.errors import ComfyUnavailable, PermanentError, StorageError

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 500


class OutputStore(Protocol):
    def store(self, key_prefix: str, filename: str, data: bytes) -> dict: ...


def object_url(endpoint_url: str, bucket: str, region: str, key: str) -> str:
    """The unsigned URL of an object (pure)."""
    quoted = quote(key, safe="/")
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{quoted}"
    return f"https://{bucket}.s3.{region or 'us-east-1'}.amazonaws.com/{quoted}"


def content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


class InlineStore:
    """No bucket: the file travels base64-encoded in the webhook (GmAnimato uploads it itself)."""

    def store(self, key_prefix: str, filename: str, data: bytes) -> dict:
        return {"filename": filename, "type": "base64", "data": base64.b64encode(data).decode("ascii")}


class S3Store:
    """Uploads to an S3-compatible bucket with boto3 and reports an ``s3_url``."""

    def __init__(self, endpoint_url: str, bucket: str, access_key_id: str, secret_access_key: str,
                 region: str) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=10, read_timeout=60))

    def store(self, key_prefix: str, filename: str, data: bytes) -> dict:
        key = f"{key_prefix}/{filename}"
        url = object_url(self.endpoint_url, self.bucket, self.region, key)
        if len(url) > MAX_URL_LENGTH:
            raise PermanentError(f"the S3 URL of {filename} is {len(url)} characters; GmAnimato refuses "
                                 f"URLs over {MAX_URL_LENGTH} (shorten storage.s3.endpoint_url or bucket)")
        self._put(key, filename, data)
        return {"filename": filename, "type": "s3_url", "data": url}

    def _put(self, key: str, filename: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(filename))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status in (400, 401, 403, 404) or code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                                                            "SignatureDoesNotMatch"):
                raise PermanentError(f"S3 refused the upload of {key} to bucket {self.bucket}: {code}") from exc
            raise StorageError(f"S3 upload of {key} failed: {code or status}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 upload of {key} failed: {exc}") from exc


def storage_retry_delay(attempt: int, elapsed: float, retry_for: float, base: float = 1.0,
                        cap: float = 15.0) -> float | None:
    """Wait before try ``attempt + 1`` after ``attempt`` transient failures, ``elapsed`` s in; None once
    ``retry_for`` is spent (pure). The last wait is cut so the last try lands at the deadline."""
    if elapsed >= retry_for:
        return None
    return min(min(cap, base * 2.0 ** min(attempt - 1, 30)), retry_for - elapsed)


def store_with_retry(store: OutputStore, key_prefix: str, filename: str, data: bytes, retry_for: float,
                     abort: Callable[[], "str | None"] = lambda: None,
                     sleep: Callable[[float], None] = time.sleep) -> dict:
    """``store.store`` with transient failures retried for ``retry_for`` seconds (an abort ends it)."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return store.store(key_prefix, filename, data)
        except StorageError as exc:
            attempt += 1
            delay = storage_retry_delay(attempt, time.monotonic() - started, retry_for)
            if delay is None:
                raise StorageError(f"{exc.message}; still failing after {time.monotonic() - started:.0f} s "
                                   f"(storage.retry_for = {retry_for:g} s)") from exc
            log.warning("%s/%s: %s; trying again in %.1f s", key_prefix, filename, exc.message, delay)
            sleep(delay)
            reason = abort()
            if reason:
                raise ComfyUnavailable(f"{reason} while storing {filename}") from exc


def make_store(endpoint_url: str, bucket: str, access_key_id: str, secret_access_key: str,
               region: str) -> OutputStore:
    """S3 when a bucket is configured, else inline base64."""
    if bucket:
        return S3Store(endpoint_url, bucket, access_key_id, secret_access_key, region)
    return InlineStore()
