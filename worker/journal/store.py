"""The journal: every claimed job on disk, from its claim answer to its delivered final webhook.

One SQLite database (``<state_dir>/journal.sqlite3``, WAL mode, ``synchronous=FULL``) shared by the
workers of one supervisor; each row is a job and is written only by the worker of its slot. Every
method is one transaction, committed (and so on disk) before it returns: the caller acts on a step only
after the step is recorded. What can be big — the claim answer (a base64 image), the stored outputs'
entries and the final body (a base64 video) — sits in ``blobs``, each written once: SQLite rewrites a
whole row on any update, so the ``jobs`` rows stay small. When a job closes, a final body under 64 KiB
is kept (for inspection); bigger blobs are deleted later by :meth:`Journal.tidy`, which also
checkpoints the WAL, off the job's path (the outbox thread calls it when it has nothing to send). ``PRAGMA user_version`` carries the schema version: an older journal is
migrated in place, open rows kept; a newer one (or a file that is not a journal) is refused with
:class:`JournalError`, never dropped.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.journal.phases import CLOSED, OPEN, RUNNING, Phase, check_move

log = logging.getLogger(__name__)

FILE_NAME = "journal.sqlite3"
FILES_REF = "@files"      # in a stored final body: "the files blob" (a base64 video is not written twice)
KEEP_BODY_BYTES = 64 * 1024
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
AUTOCHECKPOINT_PAGES = 16384     # a safety net (64 MiB of WAL); tidy() checkpoints long before

_SCHEMA_V1 = ("""
CREATE TABLE jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT,              -- NULL until the task is read (or when it has no usable id)
    video_id     TEXT,
    slot         TEXT NOT NULL,     -- the slot whose worker owns the row
    phase        TEXT NOT NULL,
    callback_url TEXT,
    fallback_url TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,   -- starts of the job
    resumes      INTEGER NOT NULL DEFAULT 0,   -- times a new process took up its running prompt
    prompt_id    TEXT,
    client_id    TEXT,
    comfy_url    TEXT,
    sends        INTEGER NOT NULL DEFAULT 0,   -- attempts to deliver the final body
    next_send_at REAL,              -- epoch s; NULL while the job's own worker thread sends it
    last_http    INTEGER,
    last_error   TEXT,
    claimed_at   REAL NOT NULL,     -- epoch s (wall clock: survives reboots)
    queued_at    REAL,              -- when the final body was first written
    updated_at   REAL NOT NULL,
    closed_at    REAL
)""",
              # name: task (the claim answer), files (stored outputs' entries), final_body (the webhook)
              "CREATE TABLE blobs (seq INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, "
              "text TEXT NOT NULL, PRIMARY KEY (seq, name))",
              "CREATE INDEX jobs_by_slot ON jobs (slot, phase)",
              "CREATE INDEX jobs_by_close ON jobs (closed_at)")

# version -> the statements that bring a journal of the version before up to it. Each runs in one transaction with
# the version bump, so a crash mid-migration leaves the old version whole.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}


class JournalError(RuntimeError):
    """The journal cannot be used as it is (newer schema, not a journal, unreadable); a person must act."""


@dataclass(frozen=True)
class JobRecord:
    """One row of the journal."""

    seq: int
    job_id: str | None
    video_id: str | None
    slot: str
    phase: Phase
    callback_url: str | None
    fallback_url: str | None
    attempts: int
    resumes: int
    prompt_id: str | None
    client_id: str | None
    comfy_url: str | None
    sends: int
    next_send_at: float | None
    last_http: int | None
    last_error: str | None
    claimed_at: float
    queued_at: float | None
    updated_at: float
    closed_at: float | None

    @property
    def label(self) -> str:
        return self.job_id or f"#{self.seq} (no job id)"



def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["phase"] = Phase(data["phase"])
    return JobRecord(**data)


def _marks(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)


class Journal:
    """A connection to the journal; thread-safe within one process (one lock around each transaction)."""

    def __init__(self, path: Path, on_write: Callable[[str, JobRecord], None] | None = None) -> None:
        self.path = path
        self._on_write = on_write or (lambda point, record: None)
        self._lock = threading.Lock()
        self._db = _connect(path)

    @classmethod
    def open(cls, state_dir: Path, on_write: Callable[[str, JobRecord], None] | None = None) -> "Journal":
        """Open (creating, migrating) ``<state_dir>/journal.sqlite3``; raises :class:`JournalError`."""
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"state_dir {state_dir}: cannot create it ({exc.strerror})") from exc
        return cls(state_dir / FILE_NAME, on_write)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- writes: each one transaction, committed before it returns --------------------------------
    def record_claim(self, slot: str, task: str, now: float) -> JobRecord:
        """A claim answer, before anything is done with it."""
        with self._tx() as db:
            cur = db.execute("INSERT INTO jobs (slot, phase, claimed_at, updated_at) VALUES (?,?,?,?)",
                             (slot, Phase.CLAIMED.value, now, now))
            _put_blob(db, cur.lastrowid, "task", task)
            record = self._get(db, cur.lastrowid)
        return self._wrote("claimed", record)

    def identify(self, seq: int, job_id: str, video_id: str, callback_url: str, fallback_url: str,
                 now: float) -> JobRecord:
        with self._tx() as db:
            db.execute("UPDATE jobs SET job_id=?, video_id=?, callback_url=?, fallback_url=?, updated_at=? "
                       "WHERE seq=?", (job_id, video_id, callback_url, fallback_url, now, seq))
            return self._get(db, seq)

    def start_attempt(self, seq: int, now: float) -> JobRecord:
        """A new start of the job (phase ``claimed`` again, attempts + 1), before it starts."""
        with self._tx() as db:
            self._move(db, seq, Phase.CLAIMED)
            db.execute("UPDATE jobs SET phase=?, attempts=attempts+1, prompt_id=NULL, client_id=NULL, "
                       "comfy_url=NULL, updated_at=? WHERE seq=?", (Phase.CLAIMED.value, now, seq))
            record = self._get(db, seq)
        return self._wrote("attempt", record)

    def refund_attempt(self, seq: int, now: float) -> JobRecord:
        """The last start never ran (ComfyUI went away while the prompt waited in its queue): it does
        not count toward ``jobs.max_attempts``."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts=MAX(0, attempts-1), updated_at=? WHERE seq=?", (now, seq))
            record = self._get(db, seq)
        return self._wrote("refund", record)

    def note_resume(self, seq: int, now: float) -> JobRecord:
        """A new process takes up the job's running prompt (counted, so a prompt whose following kills
        the worker is not followed for ever)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET resumes=resumes+1, updated_at=? WHERE seq=?", (now, seq))
            record = self._get(db, seq)
        return self._wrote("resume", record)

    def inputs_uploaded(self, seq: int, now: float) -> JobRecord:
        return self._advance(seq, Phase.INPUTS_UPLOADED, now)

    def prompt_queued(self, seq: int, prompt_id: str, client_id: str, comfy_url: str, now: float) -> JobRecord:
        """Written before ``POST /prompt``: after a crash, this prompt id is looked for in ComfyUI."""
        return self._advance(seq, Phase.PROMPT_QUEUED, now, prompt_id=prompt_id, client_id=client_id,
                             comfy_url=comfy_url)

    def outputs_stored(self, seq: int, files: list[dict], now: float) -> JobRecord:
        with self._tx() as db:
            self._move(db, seq, Phase.OUTPUTS_STORED)
            _put_blob(db, seq, "files", json.dumps(files))
            db.execute("UPDATE jobs SET phase=?, updated_at=? WHERE seq=?", (Phase.OUTPUTS_STORED.value, now, seq))
            record = self._get(db, seq)
        return self._wrote(Phase.OUTPUTS_STORED.value, record)

    def queue_final(self, seq: int, body: dict, now: float, error: str | None = None,
                    files_stored: bool = False) -> JobRecord:
        """The final webhook body, before its first attempt. ``next_send_at`` is NULL: the caller sends it.
        ``files_stored``: the body's ``files`` are exactly the job's stored ones (kept once, referred to)."""
        with self._tx() as db:
            self._move(db, seq, Phase.FINAL_QUEUED)
            refer = files_stored and _get_size(db, seq, "files") is not None
            _put_blob(db, seq, "final_body", json.dumps({**body, "files": FILES_REF} if refer else body))
            db.execute("UPDATE jobs SET phase=?, queued_at=COALESCE(queued_at, ?), next_send_at=NULL, "
                       "last_error=COALESCE(?, last_error), updated_at=? WHERE seq=?",
                       (Phase.FINAL_QUEUED.value, now, _text(error), now, seq))
            record = self._get(db, seq)
        return self._wrote("final_queued", record)

    def record_sends(self, seq: int, sends: int, last_http: int | None, error: str | None,
                     next_send_at: float | None, now: float) -> JobRecord:
        """Attempts that did not deliver; ``next_send_at`` hands the row to the outbox."""
        with self._tx() as db:
            self._move(db, seq, Phase.FINAL_QUEUED)
            db.execute("UPDATE jobs SET sends=sends+?, last_http=?, last_error=COALESCE(?, last_error), "
                       "next_send_at=?, updated_at=? WHERE seq=?",
                       (sends, last_http, _text(error), next_send_at, now, seq))
            return self._get(db, seq)

    def close_job(self, seq: int, phase: Phase, now: float, sends: int = 0, last_http: int | None = None,
                  error: str | None = None) -> JobRecord:
        """Delivered, refused, expired or unreportable: the job leaves the journal's open set, and its
        blobs go (a final body of under 64 KiB is kept, resolved, for inspection)."""
        if phase not in CLOSED:
            raise ValueError(f"{phase} is not a closed phase")
        with self._tx() as db:
            self._move(db, seq, phase)
            size = (_get_size(db, seq, "final_body") or 0) + (_get_size(db, seq, "files") or 0)
            if size <= KEEP_BODY_BYTES:         # small: settle the blobs now; big ones wait for tidy()
                kept = json.dumps(self._final_body(db, seq)) if size else None
                db.execute("DELETE FROM blobs WHERE seq=?", (seq,))
                if kept:
                    _put_blob(db, seq, "final_body", kept)
            db.execute("UPDATE jobs SET phase=?, sends=sends+?, last_http=COALESCE(?, last_http), "
                       "last_error=COALESCE(?, last_error), next_send_at=NULL, closed_at=?, updated_at=? "
                       "WHERE seq=?", (phase.value, sends, last_http, _text(error), now, now, seq))
            record = self._get(db, seq)
        return self._wrote(phase.value, record)

    def note_error(self, seq: int, error: str, now: float) -> None:
        """Why the last attempt ended (kept for the message of a later failure)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET last_error=?, updated_at=? WHERE seq=?", (_text(error), now, seq))

    def adopt_outbox(self, slot: str, now: float) -> int:
        """At a worker's start: every final webhook of ``slot`` left by a dead process goes to the outbox."""
        with self._tx() as db:
            return db.execute("UPDATE jobs SET next_send_at=? WHERE slot=? AND phase=? AND next_send_at IS NULL",
                              (now, slot, Phase.FINAL_QUEUED.value)).rowcount

    def reassign(self, from_slots: Sequence[str], to_slot: str, now: float) -> int:
        """Open jobs of slots that are gone (or whose worker is FATAL) move to ``to_slot``; their final
        webhooks go straight to its outbox."""
        if not from_slots:
            return 0
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET next_send_at=? WHERE phase=? AND next_send_at IS NULL "
                       f"AND slot IN ({_marks(from_slots)})", (now, Phase.FINAL_QUEUED.value, *from_slots))
            return db.execute(f"UPDATE jobs SET slot=?, updated_at=? WHERE closed_at IS NULL "
                              f"AND slot IN ({_marks(from_slots)})", (to_slot, now, *from_slots)).rowcount

    def tidy(self) -> int:
        """Delete the blobs closed jobs no longer need (all but a small, self-contained final body) and
        checkpoint the WAL; returns how many blobs went. Slow for big blobs: call it off a job's path."""
        with self._tx() as db:
            gone = db.execute(
                "DELETE FROM blobs WHERE seq IN (SELECT seq FROM jobs WHERE closed_at IS NOT NULL) AND NOT "
                f"(name='final_body' AND size <= {KEEP_BODY_BYTES} AND instr(text, ?) = 0)",
                (f'"{FILES_REF}"',)).rowcount
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return gone

    def prune(self, closed_before: float) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM blobs WHERE seq IN (SELECT seq FROM jobs WHERE closed_at IS NOT NULL "
                       "AND closed_at < ?)", (closed_before,))
            return db.execute("DELETE FROM jobs WHERE closed_at IS NOT NULL AND closed_at < ?",
                              (closed_before,)).rowcount

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, seq: int) -> JobRecord:
        with self._lock:
            return self._get(self._db, seq)

    def task(self, seq: int) -> str | None:
        """The claim answer of an open job, as received (None once the job is closed)."""
        with self._lock:
            return _get_blob(self._db, seq, "task")

    def files(self, seq: int) -> list | None:
        """The stored outputs' entries (from ``outputs_stored``), while the job is open."""
        with self._lock:
            text = _get_blob(self._db, seq, "files")
        return json.loads(text) if text else None

    def final_body(self, seq: int) -> dict | None:
        """The final webhook body, exactly as it is sent."""
        with self._lock:
            return self._final_body(self._db, seq)

    @staticmethod
    def _final_body(db: sqlite3.Connection, seq: int) -> dict | None:
        text = _get_blob(db, seq, "final_body")
        body = json.loads(text) if text else None
        if isinstance(body, dict) and body.get("files") == FILES_REF:
            files = _get_blob(db, seq, "files")
            body["files"] = json.loads(files) if files else []
        return body

    def interrupted_jobs(self, slot: str) -> list[JobRecord]:
        """Jobs of ``slot`` whose final webhook is not written yet, oldest first: at a worker's start,
        the jobs its predecessor was running when it died."""
        return self._select("slot=? AND phase IN (?,?,?,?) ORDER BY seq",
                            (slot, *sorted(p.value for p in RUNNING), Phase.OUTPUTS_STORED.value))

    def outbox(self, slot: str) -> list[JobRecord]:
        """Final webhooks of ``slot`` that the outbox sends (``next_send_at`` set), soonest first."""
        return self._select("slot=? AND phase=? AND next_send_at IS NOT NULL ORDER BY next_send_at, seq",
                            (slot, Phase.FINAL_QUEUED.value))

    def open_slots(self) -> dict[str, int]:
        """slot -> number of open jobs."""
        with self._lock:
            rows = self._db.execute("SELECT slot, COUNT(*) FROM jobs WHERE closed_at IS NULL GROUP BY slot")
            return {slot: count for slot, count in rows}

    def all_jobs(self) -> list[JobRecord]:
        return self._select("1 ORDER BY seq", ())

    # ---- internals --------------------------------------------------------------------------------
    def _advance(self, seq: int, phase: Phase, now: float, **fields: Any) -> JobRecord:
        names = ", ".join(f"{name}=?" for name in fields)
        with self._tx() as db:
            self._move(db, seq, phase)
            db.execute(f"UPDATE jobs SET phase=?, {names + ', ' if names else ''}updated_at=? WHERE seq=?",
                       (phase.value, *fields.values(), now, seq))
            record = self._get(db, seq)
        return self._wrote(phase.value, record)

    def _move(self, db: sqlite3.Connection, seq: int, new: Phase) -> None:
        row = db.execute("SELECT phase, job_id FROM jobs WHERE seq=?", (seq,)).fetchone()
        if row is None:
            raise KeyError(f"no job #{seq} in the journal")
        check_move(row["job_id"] or f"#{seq}", Phase(row["phase"]), new)

    def _select(self, where: str, args: tuple) -> list[JobRecord]:
        with self._lock:
            return [_record(r) for r in self._db.execute(f"SELECT * FROM jobs WHERE {where}", args)]

    @staticmethod
    def _get(db: sqlite3.Connection, seq: int) -> JobRecord:
        return _record(db.execute("SELECT * FROM jobs WHERE seq=?", (seq,)).fetchone())

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db, self._lock)

    def _wrote(self, point: str, record: JobRecord) -> JobRecord:
        self._on_write(point, record)
        return record


def _text(value: str | None) -> str | None:
    """Free text (an error message that may quote outside bytes) as SQLite's UTF-8 takes it."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value


def _put_blob(db: sqlite3.Connection, seq: int, name: str, text: str) -> None:
    db.execute("INSERT OR REPLACE INTO blobs (seq, name, size, text) VALUES (?,?,?,?)", (seq, name, len(text), text))


def _get_size(db: sqlite3.Connection, seq: int, name: str) -> int | None:
    """A blob's size in characters, without reading it."""
    row = db.execute("SELECT size FROM blobs WHERE seq=? AND name=?", (seq, name)).fetchone()
    return row[0] if row else None


def _get_blob(db: sqlite3.Connection, seq: int, name: str) -> str | None:
    row = db.execute("SELECT text FROM blobs WHERE seq=? AND name=?", (seq, name)).fetchone()
    return row["text"] if row else None


class _Transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` under the process lock (ROLLBACK on any exception)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, kind, value, trace) -> None:
        try:
            if kind is None:
                try:
                    self.db.execute("COMMIT")
                except BaseException:
                    self._rollback()       # a failed COMMIT must not keep the write lock
                    raise
            else:
                self._rollback()
        finally:
            self.lock.release()

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:   # keep the exception that got us here
                log.error("Journal: ROLLBACK failed: %s", exc)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        _migrate(db, path)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: not a usable journal ({exc}); move it away to start afresh "
                           "(its open jobs would then not be recovered)") from exc
    if mode.lower() != "wal":
        log.warning("Journal %s: WAL mode unavailable (%s); writes are slower", path, mode)
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            open_jobs = _count_open(db)
            raise JournalError(f"{path} has journal schema version {version}, newer than this program's "
                               f"{SCHEMA_VERSION} (written by a newer version; {open_jobs} open job(s) in it): "
                               "run that version, or move the file away to start afresh")
        for target in range(version + 1, SCHEMA_VERSION + 1):   # statement by statement: executescript commits
            for statement in MIGRATIONS[target]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={target}")
            if version:
                log.warning("Journal %s: migrated from schema version %d to %d", path, target - 1, target)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass                 # the migration's own error says more
        raise


def _count_open(db: sqlite3.Connection) -> str:
    try:
        return str(db.execute("SELECT COUNT(*) FROM jobs WHERE closed_at IS NULL").fetchone()[0])
    except sqlite3.DatabaseError:
        return "an unknown number of"


__all__ = ["CLOSED", "FILE_NAME", "OPEN", "JobRecord", "Journal", "JournalError", "Phase", "SCHEMA_VERSION"]
