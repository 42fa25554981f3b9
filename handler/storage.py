"""Where finished outputs go: an S3 bucket (boto3) or, with no bucket, base64 inside the webhook.

Each store turns one output file into the ``{filename, type, data}`` entry of GmAnimato's ``files``.
S3 keys are ``<job id>/<filename>``; the URL is ``<endpoint>/<bucket>/<key>`` (with no endpoint, AWS's
own ``https://<bucket>.s3.<region>.amazonaws.com/<key>``). GmAnimato refuses a stored URL over 500
characters, so such a URL fails the job before anything is uploaded.
"""
from __future__ import annotations

import base64
import mimetypes
from typing import Protocol
from urllib.parse import quote

from handler.errors import PermanentError, StorageError

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


def make_store(endpoint_url: str, bucket: str, access_key_id: str, secret_access_key: str,
               region: str) -> OutputStore:
    """S3 when a bucket is configured, else inline base64."""
    if bucket:
        return S3Store(endpoint_url, bucket, access_key_id, secret_access_key, region)
    return InlineStore()
