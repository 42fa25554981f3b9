"""Errors of one job, split by what the caller should do about them.

::

    WorkerError                      base: every failure the worker reports on purpose
    ├── TransientError               trying again later can help
    │   ├── ComfyUnavailable         ComfyUI refused, timed out or went away (process died, socket lost)
    │   └── StorageError             S3 answered 5xx, throttled or was unreachable
    └── PermanentError               the same input fails the same way: report it, do not retry
        ├── InputError               a task field or input file is unusable (bad base64, bad URL, too big)
        ├── PromptRejected           ComfyUI's /prompt said 400 (unknown node, invalid value, missing file)
        ├── ExecutionFailed          a node raised (execution_error) or the prompt was interrupted
        └── NoVideoProduced          the workflow ended without an .mp4/.webm video

GmAnimato's own errors (``ApiUnavailable``, ``ApiRefused``) live with its client, in
:mod:`worker.jobs.errors`: the handler knows nothing of GmAnimato.

Every message is written for the person who reads the failed video's log: it says what happened and,
where it helps, what to change. ``StopRequested`` is a ``BaseException`` so that no ``except
Exception`` can swallow a shutdown.
"""
from __future__ import annotations


class WorkerError(Exception):
    """A failure the worker understands; ``retryable`` says whether trying again can help."""

    retryable = False

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])


class TransientError(WorkerError):
    """Trying again later can help (network, 5xx, a ComfyUI that restarts)."""

    retryable = True


class PermanentError(WorkerError):
    """The same request will fail the same way: report it and move on."""


class ComfyUnavailable(TransientError):
    """ComfyUI refused the connection, timed out, or went away during the job.

    ``before_prompt`` is True when nothing of the job had run yet, so it can be tried again as is."""

    before_prompt = False


class StorageError(TransientError):
    """The object store failed in a way that may pass (5xx, throttling, network)."""


class InputError(PermanentError):
    """A task field or input file cannot be used as given."""


class PromptRejected(PermanentError):
    """ComfyUI rejected the workflow at ``POST /prompt`` (HTTP 400)."""


class ExecutionFailed(PermanentError):
    """A node raised during execution, or the prompt was interrupted."""


class NoVideoProduced(PermanentError):
    """The workflow finished without an .mp4/.webm output."""


class StopRequested(BaseException):
    """Raised inside a worker to unwind at once on a fast stop; never caught by ``except Exception``."""


def describe_network_error(exc: BaseException) -> str:
    """A short, secret-free phrase for a requests/socket failure ("connection refused", "timed out")."""
    text = str(exc)
    if "Connection refused" in text or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if "timed out" in text.lower() or type(exc).__name__.endswith("Timeout"):
        return "timed out"
    return text[:160]
