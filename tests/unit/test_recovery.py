"""Recovery decisions (pure): what becomes of a job a dead process left open, and who takes it."""
from __future__ import annotations

import dataclasses

import pytest

from hypothesis import given
from hypothesis import strategies as st

from worker.config import JobsConfig
from worker.jobs.recovery import (FAIL, FOLLOW, LEAVE_OPEN, RERUN, SEND_FINAL, after_comfy_loss, may_run_again,
                                  needs_prompt_check, orphan_moves, plan_recovery)
from worker.journal.phases import Phase
from worker.journal.store import JobRecord

JOBS = JobsConfig()          # retry, 2 starts, 1500 s


def record(phase: Phase, attempts: int = 1, claimed_at: float = 1000.0, files=None, last_error=None,
           resumes: int = 0) -> JobRecord:
    return JobRecord(seq=1, job_id="local-v", video_id="v", slot="gpu0", phase=phase,
                     callback_url="http://gm/cb", fallback_url="http://gm/cb", attempts=attempts, resumes=resumes,
                     prompt_id="local-v-p" if phase == Phase.PROMPT_QUEUED else None, client_id="c",
                     comfy_url="http://127.0.0.1:8188", sends=0, next_send_at=None,
                     last_http=None, last_error=last_error, claimed_at=claimed_at, queued_at=None,
                     updated_at=claimed_at, closed_at=None)


def test_stored_outputs_are_sent_never_run_again():
    plan = plan_recovery(record(Phase.OUTPUTS_STORED, 2, files=[{"filename": "a.mp4"}]), 99999.0, JOBS, False)
    assert plan.action == SEND_FINAL
    assert not needs_prompt_check(record(Phase.OUTPUTS_STORED, files=[{"filename": "a.mp4"}]))


def test_a_prompt_comfyui_still_knows_is_followed_whatever_the_start_limits():
    late = record(Phase.PROMPT_QUEUED, attempts=2, claimed_at=0.0)
    assert needs_prompt_check(late)
    assert plan_recovery(late, 99999.0, dataclasses.replace(JOBS, resume="fail"), True).action == FOLLOW


def test_a_prompt_whose_following_keeps_killing_the_worker_is_not_followed_for_ever():
    plan = plan_recovery(record(Phase.PROMPT_QUEUED, resumes=2), 1100.0, JOBS, True)
    assert plan.action == FAIL and "2 later process(es) died following its prompt" in plan.reason


def test_otherwise_it_runs_again_within_the_limits():
    assert plan_recovery(record(Phase.PROMPT_QUEUED), 1100.0, JOBS, False).action == RERUN
    assert plan_recovery(record(Phase.INPUTS_UPLOADED), 1100.0, JOBS, False).action == RERUN
    assert plan_recovery(record(Phase.CLAIMED, attempts=0), 1100.0, JOBS, False).action == RERUN
    assert not needs_prompt_check(record(Phase.CLAIMED))


def test_the_limits_fail_it_with_a_reason():
    too_old = plan_recovery(record(Phase.CLAIMED), 1000.0 + 1501, JOBS, False)
    assert too_old.action == FAIL and "longer than jobs.resume_max_age (1500 s)" in too_old.reason
    used_up = plan_recovery(record(Phase.PROMPT_QUEUED, attempts=2, last_error="ComfyUI went away"), 1100.0,
                            JOBS, False)
    assert used_up.action == FAIL and "already started 2 time(s) (jobs.max_attempts = 2)" in used_up.reason
    assert "after: ComfyUI went away" in used_up.reason
    no_resume = plan_recovery(record(Phase.CLAIMED), 1100.0, dataclasses.replace(JOBS, resume="fail"), False)
    assert no_resume.action == FAIL and "jobs.resume: fail" in no_resume.reason


def test_may_run_again_counts_starts_and_age():
    assert may_run_again(1, 1000.0, 1100.0, JOBS) is None
    assert may_run_again(2, 1000.0, 1100.0, JOBS) == "start 2 of 2, jobs.max_attempts"
    assert may_run_again(1, 0.0, 1600.0, JOBS) == "claimed 1600 s ago, over jobs.resume_max_age"


@pytest.mark.parametrize("flags,attempts,action", [
    ({}, 1, RERUN),
    ({"draining": True}, 1, LEAVE_OPEN),          # nobody restarts ComfyUI during a drain: next start
    ({"draining": True}, 2, FAIL),                # ... unless no start is left anyway
    ({"stopping": True}, 1, FAIL),                # a fast stop reports
    ({"fatal": True}, 1, FAIL),                   # a FATAL slot reports
    ({}, 2, FAIL)])
def test_after_comfy_loss(flags, attempts, action):
    kinds = {"stopping": False, "fatal": False, "draining": False, **flags}
    assert after_comfy_loss(attempts, 1000.0, 1100.0, JOBS, **kinds).action == action


def test_orphans_go_to_the_least_loaded_live_slot():
    assert orphan_moves({"gpu3": 2, "gpu0": 1}, ["gpu0", "gpu1"]) == {"gpu3": "gpu1"}
    assert orphan_moves({"gpu2": 1, "gpu3": 1}, ["gpu0"]) == {"gpu2": "gpu0", "gpu3": "gpu0"}
    assert orphan_moves({"gpu0": 4}, ["gpu0"]) == {}
    assert orphan_moves({"gpu1": 1}, []) == {}


@given(st.dictionaries(st.sampled_from([f"gpu{i}" for i in range(8)] + ["cpu", "local"]),
                       st.integers(1, 50)),
       st.lists(st.sampled_from([f"gpu{i}" for i in range(8)]), min_size=1, unique=True))
def test_orphan_moves_take_every_dead_slot_to_a_live_one(open_by_slot, live):
    moves = orphan_moves(open_by_slot, live)
    assert set(moves) == {s for s in open_by_slot if s not in live}
    assert set(moves.values()) <= set(live)


def test_a_recovery_asked_for_mid_run_leaves_this_processs_own_running_jobs_alone(tmp_path, monkeypatch):
    import threading
    from types import SimpleNamespace

    from worker.jobs import recovery
    from worker.jobs.pipeline import JobLanes
    from worker.journal.store import Journal

    journal = Journal.open(tmp_path)
    mine = journal.record_claim("gpu0", '{"id": "local-mine"}', 1.0)
    moved = journal.record_claim("gpu0", '{"id": "local-moved"}', 2.0)   # moved here from a dead slot
    lanes = JobLanes()
    release = threading.Event()
    class Run:                                  # what the lanes hold: a JobRun, known by its journal row
        seq = mine.seq

    lanes.start(Run(), lambda: release.wait(10), "job-mine")
    recovered = []
    monkeypatch.setattr(recovery, "recover_job", lambda worker, record: recovered.append(record.seq))
    worker = SimpleNamespace(journal=journal, lanes=lanes, slot=SimpleNamespace(name="gpu0", label="GPU 0"),
                             draining=threading.Event(), comfy_fatal=False)
    recovery.recover_slot(worker)
    release.set()
    assert lanes.join(10)
    assert recovered == [moved.seq]
