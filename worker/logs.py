"""Logging set-up for every process of the tree, in the original worker's line format.

``2025-12-13 10:30:05 - local-worker - INFO - Received task: clxxxx123``: the second field names the
process (``local-worker``, ``supervisor``, ``worker-gpu0``). Every record passes a filter that replaces
each configured secret with ``***``, so a secret cannot reach a log even by accident, and makes
the message safe (:func:`handler.untrusted.safe_text`): one line, control characters escaped, no
credentials or query strings in URLs, so text from outside can neither forge a line nor leak a token.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

from handler.untrusted import safe_text, scrub_urls

TEXT_FORMAT = "%(asctime)s - %(procname)s - %(levelname)s - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class ProcessNameFilter(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.procname = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.procname = self.procname
        return True


class RedactFilter(logging.Filter):
    """Replaces every secret in the rendered message (and exception text) with ``***``, and makes the
    message one safe line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 3)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = safe_text(self.redact(record.getMessage()))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub_urls(self.redact(logging.Formatter().formatException(record.exc_info)))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, DATE_FORMAT), "process": getattr(record, "procname", ""),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(procname: str, level: str = "info", fmt: str = "text",
                  secrets: Iterable[str] = (), stream=None) -> None:
    """Configure the root logger once for this process (replacing earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ProcessNameFilter(procname))
    handler.addFilter(RedactFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer", "websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
