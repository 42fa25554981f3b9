"""One owner per folder: an exclusive ``flock`` on a lock file that names its holder's pid.

Two supervisors on the same ``comfy.work_dir`` would kill each other's children as "leftovers", and two
writers of one ``state_dir`` would recover each other's running jobs. So each program that owns such a
folder locks it at start and holds the lock until it exits; the kernel drops it however the process
ends (``kill -9`` included), and the lock file's descriptor is not inherited by children (PEP 446).
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".owner.lock"


class FolderBusy(RuntimeError):
    """Another live process holds the folder; the message names it and its pid."""


class FolderLock:
    """A held lock; released when closed or when the process ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def holder_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def hold_folder(folder: Path, key: str) -> FolderLock:
    """Lock ``folder`` (created if missing) for this process; raise :class:`FolderBusy` naming the holder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise FolderBusy(f"{key} {folder}: cannot create its lock file ({exc.strerror})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderBusy(f"{key} {folder}: cannot lock it ({exc.strerror})") from exc
        raise FolderBusy(f"{key} {folder} is in use by another process (pid {holder_pid(path)}); give each "
                         "supervisor its own comfy.work_dir and state_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return FolderLock(path, fd)
