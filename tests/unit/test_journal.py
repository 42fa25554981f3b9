"""The journal on a real SQLite file: phases, transactions that survive a kill, schema versions, and
several processes writing at once."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from worker.journal.phases import ALLOWED, CLOSED, OPEN, Phase, PhaseError, check_move
from worker.journal.store import FILE_NAME, SCHEMA_VERSION, Journal, JournalError

TASK = json.dumps({"id": "local-v1", "input": {"workflow": {}}})


@pytest.fixture
def journal(tmp_path):
    j = Journal.open(tmp_path / "state")
    yield j
    j.close()


def walk_to_delivered(j: Journal, slot: str = "gpu0", now: float = 100.0) -> int:
    seq = j.record_claim(slot, TASK, now).seq
    j.identify(seq, "local-v1", "v1", "http://gm/api/i2v-webhook/v1", "http://gm/api/i2v-webhook/v1", now)
    j.start_attempt(seq, now)
    j.inputs_uploaded(seq, now)
    j.prompt_queued(seq, "local-v1-abc", "client-1", "http://127.0.0.1:8188", now)
    j.outputs_stored(seq, [{"filename": "a.mp4", "type": "s3_url", "data": "http://s3/a.mp4"}], now)
    assert j.files(seq)[0]["filename"] == "a.mp4"
    j.queue_final(seq, {"id": "local-v1", "status": "completed", "files": j.files(seq)}, now, files_stored=True)
    j.close_job(seq, Phase.DELIVERED, now, sends=1, last_http=201)
    return seq


def test_a_job_walks_every_phase_and_each_step_is_on_disk(journal, tmp_path):
    seq = walk_to_delivered(journal)
    other = Journal.open(tmp_path / "state")          # a second connection sees every committed step
    record = other.get(seq)
    assert record.phase == Phase.DELIVERED and record.attempts == 1 and record.sends == 1
    assert record.prompt_id == "local-v1-abc" and record.client_id == "client-1"
    assert other.final_body(seq)["files"][0]["data"] == "http://s3/a.mp4"     # a small body is kept
    assert other.files(seq) is None and other.task(seq) is None
    assert record.closed_at == 100.0 and record.last_http == 201
    assert other.interrupted_jobs("gpu0") == [] and other.outbox("gpu0") == []
    other.close()


def test_interrupted_jobs_and_outbox_are_per_slot_and_oldest_first(journal):
    a = journal.record_claim("gpu0", TASK, 1.0).seq
    b = journal.record_claim("gpu1", TASK, 2.0).seq
    c = journal.record_claim("gpu0", TASK, 3.0).seq
    journal.queue_final(c, {"id": "x", "status": "failed"}, 3.0)
    assert [r.seq for r in journal.interrupted_jobs("gpu0")] == [a]
    assert [r.seq for r in journal.interrupted_jobs("gpu1")] == [b]
    assert journal.outbox("gpu0") == []                 # still held by the job's own thread
    assert journal.adopt_outbox("gpu0", 5.0) == 1
    assert [(r.seq, r.next_send_at) for r in journal.outbox("gpu0")] == [(c, 5.0)]


@pytest.mark.parametrize("old,new", [(Phase.OUTPUTS_STORED, Phase.CLAIMED), (Phase.DELIVERED, Phase.FINAL_QUEUED),
                                     (Phase.CLAIMED, Phase.OUTPUTS_STORED), (Phase.FINAL_QUEUED, Phase.CLAIMED)])
def test_moves_the_table_forbids_are_refused(old, new):
    with pytest.raises(PhaseError, match=f"from {old.value} to {new.value}"):
        check_move("local-v", old, new)


def test_the_phase_table_is_closed_where_it_should_be():
    assert all(not ALLOWED[p] for p in CLOSED)
    assert all(Phase.FINAL_QUEUED in ALLOWED[p] for p in OPEN)     # any open job can always be reported
    assert OPEN | CLOSED == set(Phase)


def test_a_forbidden_move_leaves_the_row_as_it_was(journal):
    seq = walk_to_delivered(journal)
    with pytest.raises(PhaseError):
        journal.start_attempt(seq, 200.0)
    assert journal.get(seq).phase == Phase.DELIVERED and journal.get(seq).attempts == 1


def test_a_claim_written_just_before_a_kill_survives(tmp_path):
    state = tmp_path / "state"
    code = ("import os, signal, sys; from pathlib import Path; from worker.journal.store import Journal; "
            f"j = Journal.open(Path({str(state)!r})); j.record_claim('gpu0', '{{\"id\": \"local-k\"}}', 1.0); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    journal = Journal.open(state)
    assert [json.loads(journal.task(r.seq))["id"] for r in journal.interrupted_jobs("gpu0")] == ["local-k"]
    journal.close()


def test_prune_deletes_only_closed_rows_older_than_the_cutoff(journal):
    old = walk_to_delivered(journal, now=10.0)
    recent = walk_to_delivered(journal, now=500.0)
    open_seq = journal.record_claim("gpu0", TASK, 1.0).seq
    assert journal.prune(100.0) == 1
    assert {r.seq for r in journal.all_jobs()} == {recent, open_seq} and old not in {r.seq for r in journal.all_jobs()}


def test_reassign_moves_open_rows_only(journal):
    done = walk_to_delivered(journal, slot="gpu3")
    waiting = journal.record_claim("gpu3", TASK, 1.0).seq
    assert journal.open_slots() == {"gpu3": 1}
    assert journal.reassign(["gpu3"], "gpu0", 2.0) == 1
    assert journal.get(waiting).slot == "gpu0" and journal.get(done).slot == "gpu3"


def test_a_newer_schema_is_refused_with_what_to_do(tmp_path):
    state = tmp_path / "state"
    Journal.open(state).record_claim("gpu0", TASK, 1.0)
    with sqlite3.connect(state / FILE_NAME) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError) as info:
        Journal.open(state)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this program's {SCHEMA_VERSION}" in message
    assert "1 open job(s)" in message and "move the file away" in message


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a usable journal"):
        Journal.open(state)


def test_the_journal_uses_wal_and_full_sync(journal):
    with sqlite3.connect(journal.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _write_claims(state: str, slot: str, count: int) -> None:
    from pathlib import Path

    journal = Journal.open(Path(state))
    for i in range(count):
        seq = journal.record_claim(slot, TASK, float(i)).seq
        journal.queue_final(seq, {"id": f"{slot}-{i}", "status": "failed"}, float(i))
    journal.close()


def test_several_processes_write_at_once_and_nothing_is_lost(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_claims, args=(str(tmp_path / "state"), f"gpu{i}", 40)) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    journal = Journal.open(tmp_path / "state")
    rows = journal.all_jobs()
    assert len(rows) == 120 and all(r.phase == Phase.FINAL_QUEUED for r in rows)
    assert {journal.final_body(r.seq)["id"] for r in rows} == {f"gpu{i}-{n}" for i in range(3) for n in range(40)}
    journal.close()


def test_the_write_hook_sees_each_recorded_step(tmp_path):
    seen: list[tuple[str, str]] = []
    journal = Journal.open(tmp_path / "s", on_write=lambda point, record: seen.append((point, record.phase.value)))
    walk_to_delivered(journal)
    assert [p for p, _ in seen] == ["claimed", "attempt", "inputs_uploaded", "prompt_queued", "outputs_stored",
                                    "final_queued", "delivered"]
    assert os.path.exists(tmp_path / "s" / FILE_NAME)


def test_the_claim_answer_is_kept_while_the_job_is_open_and_dropped_when_it_closes(journal):
    seq = journal.record_claim("gpu0", TASK, 1.0).seq
    assert journal.task(seq) == TASK
    journal.queue_final(seq, {"id": "local-v1", "status": "failed"}, 2.0)
    assert journal.task(seq) == TASK
    journal.close_job(seq, Phase.DELIVERED, 3.0)
    assert journal.task(seq) is None and journal.get(seq).phase == Phase.DELIVERED


def test_a_final_body_made_of_the_stored_files_does_not_store_them_twice(journal):
    seq = journal.record_claim("gpu0", TASK, 1.0).seq
    journal.prompt_queued(seq, "p", "c", "http://127.0.0.1:8188", 1.5)
    files = [{"filename": "a.mp4", "type": "base64", "data": "QUJD" * 1000}]
    journal.outputs_stored(seq, files, 2.0)
    body = {"id": "local-v1", "status": "completed", "files": files}
    journal.queue_final(seq, body, 3.0, files_stored=True)
    assert journal.final_body(seq) == body
    with sqlite3.connect(journal.path) as db:
        sizes = dict(db.execute("SELECT name, length(text) FROM blobs WHERE seq=?", (seq,)).fetchall())
    assert sizes["final_body"] < 200 and sizes["files"] > 4000
    other = {"id": "local-v1", "status": "failed", "error": "too large"}   # a replacement stands alone
    journal.queue_final(seq, other, 4.0)
    assert journal.final_body(seq) == other
    journal.close_job(seq, Phase.DELIVERED, 5.0)
    assert journal.final_body(seq) == other and journal.files(seq) is None


def test_tidy_drops_big_blobs_of_closed_jobs_and_keeps_small_bodies(journal):
    big = journal.record_claim("gpu0", TASK, 1.0).seq
    journal.prompt_queued(big, "p", "c", "u", 1.0)
    journal.outputs_stored(big, [{"filename": "a.mp4", "type": "base64", "data": "A" * 100_000}], 1.0)
    journal.queue_final(big, {"id": "x", "status": "completed", "files": journal.files(big)}, 1.0,
                        files_stored=True)
    small = walk_to_delivered(journal)
    still_open = journal.record_claim("gpu0", TASK, 1.0).seq
    journal.close_job(big, Phase.DELIVERED, 2.0)
    assert journal.final_body(big)["files"][0]["data"] == "A" * 100_000     # until tidied
    assert journal.tidy() == 3                                              # task, files, final body
    assert journal.final_body(big) is None and journal.files(big) is None
    assert journal.final_body(small)["status"] == "completed" and journal.task(still_open) == TASK
