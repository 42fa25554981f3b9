"""One job's life, from its journal row to its settled final webhook.

:class:`JobRun` runs the job on the slot's ComfyUI, writing each step to the journal before acting on
it (inputs uploaded, prompt queued, outputs stored), counts its starts (``jobs.max_attempts``: a ComfyUI
that went away under the job gets it again once it is back, while starts remain), and hands the final
webhook to the outbox. It never raises for a fault of the job: every claimed job ends in a final body,
``completed`` or ``failed`` with a reason a person can act on — or, when ComfyUI went away during a
drain, stays open in the journal for the next start to run again.

It tells the slot's :class:`~worker.jobs.pipeline.JobLanes` when ComfyUI takes its prompt up, how far
it has come, and when it lets go of the GPU (at ``execution_success``, before its outputs are stored),
so the next job can be queued behind it and run while this one delivers. Once only silent nodes are left
(the progress tail) it sends no more progress, so its final webhook never waits behind one.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

from handler.errors import ComfyUnavailable, WorkerError
from handler.run import ExecutionDeps, ExecutionRequest, Result, resume_job, run_job
from worker.jobs.api import DELIVERED
from worker.jobs.pipeline import slot_fault
from worker.jobs.recovery import FAIL, LEAVE_OPEN, RERUN, Plan, after_comfy_loss
from worker.jobs.task import Job
from worker.jobs.webhooks import Delivery, JobWebhooks, completed_payload, failed_payload
from worker.journal.store import JobRecord
from worker.reports import Up

if TYPE_CHECKING:
    from worker.jobs.loop import Worker

log = logging.getLogger(__name__)


class JobRun:
    def __init__(self, worker: "Worker", record: JobRecord, job: Job) -> None:
        self.worker = worker
        self.record = record
        self.job = job
        self.hooks: JobWebhooks | None = None
        self.ran = False                 # ComfyUI took up this start's prompt (execution_start)
        self.refunded = False            # a start that never ran was not counted (once per job)

    @property
    def seq(self) -> int:
        return self.record.seq

    # ---- the whole life ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> None:
        """Execute (or, with ``resume``, follow the recorded prompt), then report the result."""
        started = time.monotonic()
        self.begin()
        body = self.execute(resume)
        self.worker.lanes.release(self)
        if body is None:
            self.leave_open()
            return
        self.end(body, started)

    def report_stored_outputs(self) -> None:
        """The outputs were stored before the process died: only the final webhook is left to send."""
        self.begin()
        files = self.worker.journal.files(self.seq) or []
        self.end(completed_payload(self.job.job_id, files), time.monotonic())

    def report_failure(self, reason: str) -> None:
        self.begin()
        self.end(failed_payload(self.job.job_id, reason), time.monotonic())

    def begin(self) -> None:
        worker = self.worker
        worker.job_began(self.job.job_id)
        worker.report(Up.JOB_STARTED, job_id=self.job.job_id, video_id=self.job.video_id,
                      attempt=self.record.attempts)
        self.hooks = worker.webhooks_for(self.job.job_id, self.job.video_id, self.job.callback_url)

    def leave_open(self) -> None:
        """ComfyUI went away during a drain: the job stays in the journal; the next start runs it again."""
        if self.hooks is not None:
            self.hooks.stop_progress()
        log.warning("Job %s stays open in the journal: ComfyUI went away during the drain; the next start "
                    "runs it again", self.job.job_id)
        self.worker.job_ended(self.job.job_id)
        self.worker.report(Up.JOB_FINISHED, job_id=self.job.job_id, status="left_open", error=None,
                           delivered=False, seconds=0.0)

    def end(self, body: dict, started: float) -> None:
        if body["status"] == "failed":
            self.worker.abandon_if_orphaned(self.job.job_id)
        self.worker.remove_inputs(self.job)
        delivery = self.worker.outbox.deliver(self.record, body, self.hooks, self.worker.fast_stop_timeout(),
                                              files_stored=body["status"] == "completed")   # made of them
        self.finish(body, delivery, time.monotonic() - started)

    # ---- execution, with restarts -----------------------------------------------------------------
    def execute(self, resume: bool) -> dict | None:
        """The final webhook body, completed or failed; None: leave the job open (never raises)."""
        worker, job = self.worker, self.job
        while True:
            try:
                result = self.follow_once() if resume else self.execute_once()
            except ComfyUnavailable as exc:
                worker.lanes.faulted(self)
                worker.comfy_lost()
                worker.journal.note_error(self.seq, exc.message, worker.clock())
                self.refund_unrun_start()
                message, plan = exc.message, self.after_loss()
                if plan.action == RERUN:
                    log.warning("Job %s: %s; waiting for ComfyUI to try again (start %d of %d)", job.job_id,
                                exc.message, self.record.attempts + 1, worker.config.jobs.max_attempts)
                    if worker.wait_for_comfy(worker.config.comfy.startup_timeout):
                        log.info("Job %s: ComfyUI is back; trying again", job.job_id)
                        resume = False
                        continue
                    plan = self.after_loss()          # a drain or a FATAL came while it waited, or time ran out
                    if plan.action == RERUN:
                        message, plan = worker.comfy_exit or exc.message, Plan(FAIL)
                worker.slot_faulted = slot_fault(exc)     # the job ends: the rule is slot_fault's
                if plan.action == LEAVE_OPEN:
                    return None
                return failed_payload(job.job_id, f"{message} ({plan.reason})" if plan.reason else message,
                                      exc.details)
            except WorkerError as exc:
                worker.slot_faulted = slot_fault(exc)
                return failed_payload(job.job_id, exc.message, exc.details)
            except Exception as exc:  # a bug of ours: the job is still reported, with the cause
                log.exception("job %s: unexpected error", job.job_id)
                worker.slot_faulted = slot_fault(exc)
                return failed_payload(job.job_id, f"internal worker error: {type(exc).__name__}: {exc}")
            worker.slot_faulted = slot_fault(None)
            self.record = worker.journal.outputs_stored(self.seq, result.files, worker.clock())
            return completed_payload(job.job_id, result.files)

    def refund_unrun_start(self) -> None:
        """A prompt still waiting in ComfyUI's queue (prefetched behind another job) when ComfyUI went
        away never ran: that start is not counted, once per job."""
        if self.ran or self.refunded or self.record.attempts == 0:
            return
        self.refunded = True
        self.record = self.worker.journal.refund_attempt(self.seq, self.worker.clock())
        log.info("Job %s: its prompt had not started when ComfyUI went away; that start is not counted",
                 self.job.job_id)

    def after_loss(self):
        worker = self.worker
        return after_comfy_loss(self.record.attempts, self.record.claimed_at, worker.clock(), worker.config.jobs,
                                stopping=worker.stopping.is_set(), fatal=worker.comfy_fatal,
                                draining=worker.draining.is_set())

    def execute_once(self) -> Result:
        worker, job = self.worker, self.job
        self.record = worker.journal.start_attempt(self.seq, worker.clock())
        self.ran = False
        if self.hooks is not None:
            self.hooks.resume_progress()          # a new start reports progress again, tail included
        request = ExecutionRequest(workflow=job.workflow, inputs=job.images, node_weights=job.node_weights,
                                   key_prefix=job.job_id, prompt_id=f"{job.job_id}-{uuid.uuid4().hex[:12]}",
                                   label=job.job_id)
        return run_job(request, self.deps(f"gmanimato-{worker.slot.name}-{uuid.uuid4().hex[:8]}"))

    def follow_once(self) -> Result:
        """The recorded prompt of an earlier process, followed under its own client id."""
        job, record = self.job, self.record
        request = ExecutionRequest(workflow=job.workflow, inputs=(), node_weights=job.node_weights,
                                   key_prefix=job.job_id, prompt_id=record.prompt_id or "", label=job.job_id)
        return resume_job(request, self.deps(record.client_id or ""))

    def deps(self, client_id: str) -> ExecutionDeps:
        worker = self.worker
        return ExecutionDeps(comfy=worker.comfy, store=worker.store, session=worker.session,
                             on_progress=self.on_progress, on_step=self.on_step, abort=worker.abort_reason,
                             stop_requested=worker.stop_reason, job_timeout=worker.config.comfy.job_timeout,
                             client_id=client_id, storage_retry_for=worker.config.storage.retry_for,
                             input_rules=worker.input_rules, progress_types=worker.progress_types)

    def on_progress(self, snapshot: dict, node_changed: bool) -> None:
        self.worker.lanes.progressed(self, float(snapshot.get("percentage") or 0.0),
                                     in_node=bool(snapshot.get("current_node_progress")))
        if self.hooks is not None and self.hooks.progress(snapshot, node_changed):
            self.worker.report(Up.JOB_PROGRESS, job_id=self.job.job_id, progress=snapshot)

    def on_step(self, step: str, data: dict) -> None:
        """A handler step: written to the journal before the handler acts on it, or, for what ComfyUI
        does with the prompt, told to the slot's lanes and progress sender."""
        journal, now = self.worker.journal, self.worker.clock()
        if step == "execution_started":
            self.ran = True
            self.worker.lanes.started(self)
        elif step == "execution_ended":
            self.worker.lanes.release(self)
            if data.get("outcome") == "succeeded":
                self.worker.lanes.recovered(self)
        elif step == "progress_tail" and self.hooks is not None:
            self.hooks.end_progress()
        elif step == "inputs_uploaded":
            self.record = journal.inputs_uploaded(self.seq, now)
        elif step == "prompt_queueing":
            self.record = journal.prompt_queued(self.seq, data["prompt_id"], data["client_id"],
                                                data["comfy_url"], now)

    # ---- the end ----------------------------------------------------------------------------------
    def finish(self, body: dict, delivery: Delivery, seconds: float) -> None:
        worker, job_id = self.worker, self.job.job_id
        worker.job_ended(job_id)
        worker.jobs_done += 1
        body = delivery.body or body              # a refused ``completed`` is replaced by a ``failed``
        status = body["status"]
        if status == "completed":
            log.info("Job %s completed in %.1f s", job_id, seconds)
        else:
            log.error("Job %s failed: %s", job_id, body.get("error"))
        if delivery.outcome == DELIVERED:
            log.info("Webhook %s for %s delivered (HTTP %s)", status, job_id, delivery.status)
        elif delivery.outcome != "gave_up":
            log.error("Webhook %s for %s not delivered: %s after %d attempt(s) (last HTTP %s); recorded",
                      status, job_id, delivery.outcome, delivery.attempts, delivery.status)
        worker.report(Up.JOB_FINISHED, job_id=job_id, status=status, error=body.get("error"),
                      delivered=delivery.outcome == DELIVERED, seconds=round(seconds, 3))
