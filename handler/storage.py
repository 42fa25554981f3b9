"""Where finished outputs go: an S3 bucket (boto3) or, with no bucket, base64 inside the webhook.

Each store turns one output file into the ``{filename, type, data}`` entry of GmAnimato's ``files``.
A file arrives as a stream (``read(n)``; bytes are accepted too) and never sits whole in memory on the
way to S3: boto3's managed upload sends it in parts of ``PART_SIZE`` with at most ``PART_THREADS`` in
flight. Inline, a file over ``storage.base64_max_mb`` fails the job saying to configure S3.
S3 keys are ``<job id>/<filename>``; the URL is ``<endpoint>/<bucket>/<key>`` (with no endpoint, AWS's
own ``https://<bucket>.s3.<region>.amazonaws.com/<key>``). GmAnimato refuses a stored URL over 500
characters, so such a URL fails the job before anything is uploaded. :func:`store_with_retry` retries
transient failures (unreachable, 5xx, throttling) with backoff for ``storage.retry_for`` seconds; a
refused bucket (403, NoSuchBucket) fails at once.
"""
from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, BinaryIO, Protocol, Union
from urllib.parse import quote

from handler.errors import ComfyUnavailable, PermanentError, StorageError
from handler.media import UNKNOWN

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 500
PART_SIZE = 8 * 1024 * 1024          # S3 multipart part (boto3's default threshold and part size)
PART_THREADS = 2                     # parts in flight (and held) at once: memory about 2-3 x PART_SIZE
DEFAULT_BASE64_MAX = 32 * 1024 * 1024

Body = Union[bytes, BinaryIO]
BodyOpener = Callable[[], AbstractContextManager]   # a fresh stream of the file for each try


class OutputStore(Protocol):
    def store(self, key_prefix: str, filename: str, data: Body, content_type: str = UNKNOWN) -> dict: ...


def as_stream(data: Body) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data


def object_url(endpoint_url: str, bucket: str, region: str, key: str) -> str:
    """The unsigned URL of an object (pure)."""
    quoted = quote(key, safe="/")
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{quoted}"
    return f"https://{bucket}.s3.{region or 'us-east-1'}.amazonaws.com/{quoted}"


class InlineStore:
    """No bucket: the file travels base64-encoded in the webhook (GmAnimato uploads it itself), up to
    ``max_bytes`` (``storage.base64_max_mb``)."""

    def __init__(self, max_bytes: int = DEFAULT_BASE64_MAX) -> None:
        self.max_bytes = max_bytes

    def store(self, key_prefix: str, filename: str, data: Body, content_type: str = UNKNOWN) -> dict:
        content = as_stream(data).read(self.max_bytes + 1)
        if len(content) > self.max_bytes:
            raise PermanentError(f"output {filename} is larger than {self.max_bytes / (1024 * 1024):g} MB, the most "
                                 "sent base64 inside the webhook (storage.base64_max_mb); configure storage.s3 "
                                 "(BUCKET_*) so videos travel as URLs")
        return {"filename": filename, "type": "base64", "data": base64.b64encode(content).decode("ascii")}


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
        from boto3.s3.transfer import TransferConfig

        self._transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                        max_concurrency=PART_THREADS)
        # parts of a stream held in memory at once (boto3's default is 10): an attribute, not an argument
        self._transfer.max_in_memory_upload_chunks = PART_THREADS

    def store(self, key_prefix: str, filename: str, data: Body, content_type: str = UNKNOWN) -> dict:
        key = f"{key_prefix}/{filename}"
        url = object_url(self.endpoint_url, self.bucket, self.region, key)
        if len(url) > MAX_URL_LENGTH:
            raise PermanentError(f"the S3 URL of {filename} is {len(url)} characters; GmAnimato refuses "
                                 f"URLs over {MAX_URL_LENGTH} (shorten storage.s3.endpoint_url or bucket)")
        self._put(key, as_stream(data), content_type)
        return {"filename": filename, "type": "s3_url", "data": url}

    def _put(self, key: str, body: BinaryIO, content_type: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_fileobj(body, self.bucket, key, ExtraArgs={"ContentType": content_type},
                                        Config=self._transfer)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            self._raise(key, code, status, exc)
        except S3UploadFailedError as exc:          # a multipart upload's ClientError, as text
            text = str(exc)
            code = next((c for c in REFUSALS if c in text), "")
            self._raise(key, code, 403 if code else 0, exc, text.rsplit(":", 1)[-1].strip())
        except BotoCoreError as exc:
            raise StorageError(f"S3 upload of {key} failed: {exc}") from exc

    def _raise(self, key: str, code: str, status: int, exc: Exception, detail: str = "") -> None:
        if status in (400, 401, 403, 404) or code in REFUSALS:
            raise PermanentError(f"S3 refused the upload of {key} to bucket {self.bucket}: {code or status}") from exc
        raise StorageError(f"S3 upload of {key} failed: {code or status or detail}") from exc


REFUSALS = ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def storage_retry_delay(attempt: int, elapsed: float, retry_for: float, base: float = 1.0,
                        cap: float = 15.0) -> float | None:
    """Wait before try ``attempt + 1`` after ``attempt`` transient failures, ``elapsed`` s in; None once
    ``retry_for`` is spent (pure). The last wait is cut so the last try lands at the deadline."""
    if elapsed >= retry_for:
        return None
    return min(min(cap, base * 2.0 ** min(attempt - 1, 30)), retry_for - elapsed)


def store_with_retry(store: OutputStore, key_prefix: str, filename: str, data: "bytes | BodyOpener",
                     retry_for: float, abort: Callable[[], "str | None"] = lambda: None,
                     sleep: Callable[[float], None] = time.sleep,
                     content_type: "str | Callable[[Any], str]" = UNKNOWN) -> dict:
    """``store.store`` with transient failures retried for ``retry_for`` seconds (an abort ends it): the
    store's (S3 5xx, throttling, unreachable) and the source's (ComfyUI went away while it sent the file,
    and is restarting: the file is still in its output folder). ``data`` is bytes or a callable opening a
    fresh stream for each try (a context manager); ``content_type`` a string or a function of the opened
    stream."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            opened = data() if callable(data) else nullcontext(data)
            with opened as body:
                kind = content_type(body) if callable(content_type) else content_type
                return store.store(key_prefix, filename, body, kind)
        except (StorageError, ComfyUnavailable) as exc:
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
               region: str, base64_max_bytes: int = DEFAULT_BASE64_MAX) -> OutputStore:
    """S3 when a bucket is configured, else inline base64."""
    if bucket:
        return S3Store(endpoint_url, bucket, access_key_id, secret_access_key, region)
    return InlineStore(base64_max_bytes)
