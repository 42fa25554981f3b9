"""What to do with jobs a dead process left open, and who takes them (decisions pure, I/O at the end).

At every worker start, before it claims, each job of its slot whose final webhook was not yet written is
looked at, oldest first (:func:`plan_recovery`):

* outputs already stored -> send the final webhook (nothing runs again);
* its prompt still known to ComfyUI (queued, running or in ``/history``) -> follow it to its end and use
  its outputs (no GPU work is wasted), unless processes died following it ``jobs.max_attempts`` times;
* otherwise re-run it from its recorded task (``jobs.resume: retry``), unless it has been started
  ``jobs.max_attempts`` times or was claimed more than ``jobs.resume_max_age`` seconds ago; or report it
  failed (``jobs.resume: fail``).

Final webhooks already written are the outbox's (:mod:`worker.jobs.outbox`). Open jobs of a slot that no
longer exists (a GPU taken out of the box) are moved by the supervisor, at its start, to the live slot
with the fewest (:func:`orphan_moves`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.config import JobsConfig
from worker.journal.phases import Phase
from worker.journal.store import JobRecord, Journal

if TYPE_CHECKING:
    from worker.jobs.loop import Worker

log = logging.getLogger(__name__)

SEND_FINAL, FOLLOW, RERUN, FAIL, LEAVE_OPEN = "send_final", "follow", "rerun", "fail", "leave_open"


@dataclass(frozen=True)
class Plan:
    action: str
    reason: str = ""


def plan_recovery(record: JobRecord, now: float, jobs: JobsConfig, prompt_known: bool) -> Plan:
    """The fate of one interrupted job (pure). ``prompt_known``: ComfyUI still has its prompt."""
    if record.phase == Phase.OUTPUTS_STORED:
        return Plan(SEND_FINAL)
    cause = f"its worker stopped in phase {record.phase.value}" + \
        (f" after: {record.last_error}" if record.last_error else "")
    if record.phase == Phase.PROMPT_QUEUED and prompt_known:
        if record.resumes >= jobs.max_attempts:
            return Plan(FAIL, f"{cause}; {record.resumes} later process(es) died following its prompt "
                              f"(jobs.max_attempts = {jobs.max_attempts})")
        return Plan(FOLLOW)
    if jobs.resume == "fail":
        return Plan(FAIL, f"{cause}; not run again (jobs.resume: fail)")
    age = now - record.claimed_at
    if age > jobs.resume_max_age:
        return Plan(FAIL, f"{cause}; claimed {age:.0f} s ago, longer than jobs.resume_max_age "
                          f"({jobs.resume_max_age:g} s), so not run again")
    if record.attempts >= jobs.max_attempts:
        return Plan(FAIL, f"{cause}; already started {record.attempts} time(s) (jobs.max_attempts = "
                          f"{jobs.max_attempts})")
    return Plan(RERUN)


def needs_prompt_check(record: JobRecord) -> bool:
    """Whether the plan depends on what ComfyUI knows (a recorded prompt it may still have)."""
    return record.phase == Phase.PROMPT_QUEUED and bool(record.prompt_id)


def may_run_again(attempts: int, claimed_at: float, now: float, jobs: JobsConfig) -> str | None:
    """After a start that ComfyUI's loss ended: None when another start is allowed, else why not (pure)."""
    if attempts >= jobs.max_attempts:
        return f"start {attempts} of {jobs.max_attempts}, jobs.max_attempts"
    if now - claimed_at > jobs.resume_max_age:
        return f"claimed {now - claimed_at:.0f} s ago, over jobs.resume_max_age"
    return None


def after_comfy_loss(attempts: int, claimed_at: float, now: float, jobs: JobsConfig, *, stopping: bool,
                     fatal: bool, draining: bool) -> Plan:
    """A start that ComfyUI's loss ended (it died, or lost the prompt): start again once it is back
    (RERUN), leave the job open for the next start (a drain: nobody restarts ComfyUI now), or FAIL with
    why not (a fast stop, a FATAL slot, no start or time left) (pure)."""
    if stopping or fatal:
        return Plan(FAIL)
    limit = may_run_again(attempts, claimed_at, now, jobs)
    if limit:
        return Plan(FAIL, limit)
    return Plan(LEAVE_OPEN) if draining else Plan(RERUN)


def orphan_moves(open_by_slot: Mapping[str, int], live: Sequence[str]) -> dict[str, str]:
    """Dead slot -> live slot for every slot with open jobs that is not live, each to the live slot
    with the fewest open jobs so far (pure)."""
    if not live:
        return {}
    load = {slot: open_by_slot.get(slot, 0) for slot in live}
    moves = {}
    for dead in sorted(s for s in open_by_slot if s not in load):
        target = min(live, key=lambda s: (load[s], live.index(s)))
        moves[dead] = target
        load[target] += open_by_slot[dead]
    return moves


def adopt_orphans(journal: Journal, live: Sequence[str], now: float, only: str | None = None,
                  why: str = "a slot this box no longer has") -> dict[str, str]:
    """Move the open jobs of slots that are not ``live`` (or of ``only`` that one) to live ones, each to
    the one with the fewest; returns the moves made."""
    open_by_slot = journal.open_slots()
    if only is not None:
        open_by_slot = {only: open_by_slot[only]} if open_by_slot.get(only) else {}
    if open_by_slot and not live:
        log.error("Journal: %d open job(s) of %s stay until the next start (no live slot to take them)",
                  sum(open_by_slot.values()), ", ".join(sorted(open_by_slot)))
    moves = orphan_moves(open_by_slot, live)
    for dead, target in moves.items():
        count = journal.reassign([dead], target, now)
        log.warning("Journal: %d open job(s) of %s, %s, move to %s", count, dead, why, target)
    return moves


def recover_slot(worker: "Worker") -> None:
    """Settle every interrupted job of the worker's slot before it claims anything new. A job is left
    open (for the next start) only when a drain comes first and its ComfyUI is not FATAL."""
    in_flight = {getattr(run, "seq", None) for run in worker.lanes.keys()}   # this process's own, running
    records = [r for r in worker.journal.interrupted_jobs(worker.slot.name) if r.seq not in in_flight]
    if records:
        log.warning("Recovering %d job(s) that %s was running when its process stopped", len(records),
                    worker.slot.label)
    for record in records:
        if worker.draining.is_set() and not worker.comfy_fatal:
            log.warning("Job %s stays open in the journal: draining before it was recovered; the next start "
                        "picks it up", record.label)
            continue
        recover_job(worker, record)


def recover_job(worker: "Worker", record: JobRecord) -> None:
    from worker.jobs.lifecycle import JobRun

    job = worker.read_recorded_task(record)
    if job is None:                  # the task itself is unusable: it was reported
        return
    run = JobRun(worker, record, job)
    plan = plan_recovery(record, worker.clock(), worker.config.jobs, False)
    if needs_prompt_check(record) or plan.action == RERUN:
        if not worker.await_comfy():
            if worker.comfy_fatal:                   # this slot's ComfyUI will not come back: say why, now
                run.report_failure(worker.comfy_exit or "ComfyUI of this slot is FATAL")
            return                                   # draining: it stays open for the next start
        known = needs_prompt_check(record) and worker.prompt_known(record)
        plan = plan_recovery(record, worker.clock(), worker.config.jobs, known)
        if plan.action != FOLLOW and needs_prompt_check(record):
            worker.comfy.cancel(record.prompt_id or "")   # should ComfyUI still hold it, it must not run twice
    log.warning("Job %s: found open in the journal (phase %s, %d start(s)): %s", record.label,
                record.phase.value, record.attempts, {SEND_FINAL: "sending its stored result",
                FOLLOW: f"following prompt {record.prompt_id} on ComfyUI", RERUN: "running it again",
                FAIL: "reporting it failed"}[plan.action])
    if plan.action == SEND_FINAL:
        run.report_stored_outputs()
    elif plan.action == FAIL:
        run.report_failure(plan.reason)
    elif plan.action == FOLLOW:
        run.record = worker.journal.note_resume(record.seq, worker.clock())
        run.run(resume=True)
    else:
        run.run()


def task_of(journal: Journal, record: JobRecord) -> object:
    """The recorded claim answer, decoded (written by :meth:`Journal.record_claim`); raises ValueError."""
    return json.loads(journal.task(record.seq) or "null")
