"""GmAnimato's errors, split like the handler's by what the caller should do (see :mod:`handler.errors`).

::

    TransientError
    └── ApiUnavailable       GmAnimato answered 5xx or could not be reached: back off and try again
    PermanentError
    └── ApiRefused           GmAnimato refused the call for good (401, 403, 404, 400, 413, redirect)
        ├── AuthError        (worker.jobs.api) our secret or URL is wrong: a person must fix it
        └── ServerMisconfigured  (worker.jobs.api) a setup fault of the server's own
    LostTask                 a job was claimed but its answer cannot be read (truncated, too deep, too big)
"""
from __future__ import annotations

from handler.errors import PermanentError, TransientError


class ApiUnavailable(TransientError):
    """GmAnimato answered 5xx or could not be reached. ``orphaned``: a job was likely claimed anyway."""

    orphaned = False


class ApiRefused(PermanentError):
    """GmAnimato refused the call in a way retrying cannot change."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LostTask(PermanentError):
    """A claim answered 200 but its task cannot be read. ``ids`` holds the job's ids when its head
    still names an issued ``local-`` id (``job_id``, ``video_id``, ``callback_url``: report it failed);
    empty, the job is lost to us and stays processing on the server."""

    def __init__(self, message: str, ids: dict) -> None:
        super().__init__(message)
        self.ids = dict(ids)
