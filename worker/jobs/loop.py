"""The worker: claim a task, run it on this slot's ComfyUI, report it; again, until drained.

One worker serves one slot. Under the supervisor it runs in its own process
(:func:`worker_process_main`), claims only while the supervisor says its ComfyUI is ready, and reports
up its own queue. Alone (``local_worker.py``) it runs in the calling process and probes ComfyUI
itself. Either way a claimed job always gets a final webhook: completed, or failed with a reason a
person can act on, even when ComfyUI dies under it or the worker is told to stop at once.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from handler.comfy_client import ComfyClient
from handler.errors import ApiUnavailable, ComfyUnavailable, WorkerError
from handler.run import ExecutionDeps, ExecutionRequest, run_job
from handler.storage import make_store
from worker import exits
from worker.config import Config
from worker.jobs import pacing as pc
from worker.jobs.api import DELIVERED, PERMANENT, AuthError, GmAnimatoClient, ServerMisconfigured
from worker.jobs.task import JOB_PREFIX, Job, TaskError, callback_for, parse_task
from worker.jobs.webhooks import JobWebhooks, completed_payload, failed_payload
from worker.supervision.policy import describe_status
from worker.reports import Command, Down, Report, Up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotSpec:
    """What a worker needs to know of its slot (picklable)."""

    name: str            # gpu0, cpu, local
    label: str           # for people: "GPU 0", "the CPU slot", "ComfyUI"
    comfy_url: str


class Worker:
    def __init__(self, config: Config, slot: SlotSpec, report: Callable[[Report], None] | None = None,
                 supervised: bool = False) -> None:
        self.config = config
        self.slot = slot
        self._report = report or (lambda r: None)
        self.supervised = supervised
        self.session = requests.Session()
        self.api = GmAnimatoClient(config.api.url, config.api.secret, config.api.timeout)
        self.comfy = ComfyClient(slot.comfy_url, config.comfy.timeout)
        s3 = config.storage.s3
        self.store = make_store(s3.endpoint_url, s3.bucket, s3.access_key_id, s3.secret_access_key, s3.region)
        self.wake = threading.Event()            # set on any command, to cut a wait short
        self.draining = threading.Event()
        self.stopping = threading.Event()
        self.comfy_ready = threading.Event()
        self.comfy_exit: str | None = None       # why ComfyUI is gone, while it is
        self.current_job: str | None = None
        self.pacing = pc.Pacing(config.api.poll_interval, config.api.backoff_cap,
                                config.api.auth_retry_interval)
        self.jobs_done = 0
        self.sentinel = "" if supervised else config.supervisor.sentinel_file
        self.comfy_gone = False                  # the supervisor will not bring ComfyUI back
        self._said_comfy_down = False

    # ---- commands and signals (any thread) -------------------------------------------------------
    def handle_command(self, command: Command) -> None:
        if command.kind == Down.COMFY_READY:
            url = command.data.get("url")
            if url and url != self.comfy.base_url:
                log.info("ComfyUI of %s is now at %s", self.slot.label, url)
                self.comfy = ComfyClient(url, self.config.comfy.timeout)
            self.comfy_exit = None
            self.comfy_gone = False
            self.comfy_ready.set()
        elif command.kind == Down.COMFY_EXITED:
            self.comfy_ready.clear()
            self.comfy_gone = bool(command.data.get("final"))
            self.comfy_exit = command.data.get("reason") or \
                f"ComfyUI on {self.slot.label} exited with {describe_status(command.data.get('code'))}"
        elif command.kind == Down.DRAIN:
            self.draining.set()
        elif command.kind == Down.STOP:
            self.draining.set()
            self.stopping.set()
        self.wake.set()

    def request_drain(self) -> None:
        self.handle_command(Command(Down.DRAIN))

    def request_stop(self) -> None:
        self.handle_command(Command(Down.STOP))

    def report(self, kind: Up, **data: Any) -> None:
        self._report(Report(kind, self.slot.name, data))

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve jobs until drained or stopped; returns an exit code."""
        self.report(Up.READY, pid=os.getpid())
        log.info("Worker for %s started (ComfyUI %s, GmAnimato %s)", self.slot.label, self.slot.comfy_url,
                 self.config.api.url)
        while not self.draining.is_set():
            if sentinel_present(self.sentinel):
                log.info("Found %s: finishing up and stopping", self.sentinel)
                self.request_drain()
                break
            if not self.ensure_comfy():
                continue
            self.poll_once()
        log.info("Worker for %s stopped after %d job(s)", self.slot.label, self.jobs_done)
        return exits.EXIT_OK

    def ensure_comfy(self) -> bool:
        """True when ComfyUI may take a job; otherwise waits a little and returns False."""
        if self.supervised:            # the supervisor says when; re-check drain/stop every second
            return self.comfy_ready.wait(min(1.0, self.config.api.poll_interval))
        if self.comfy_ready.is_set() or self.comfy.probe():
            if self._said_comfy_down:
                log.info("ComfyUI at %s answers", self.slot.comfy_url)
            self._said_comfy_down = False
            self.comfy_ready.set()
            return True
        if not self._said_comfy_down:
            log.warning("Waiting for ComfyUI at %s to answer", self.slot.comfy_url)
            self._said_comfy_down = True
        self.pause(min(self.config.api.poll_interval, 2.0))
        return False

    def poll_once(self) -> None:
        outcome, task = self.claim()
        self.pacing, decision = pc.after_claim(self.pacing, outcome)
        if task is not None:
            self.process(task)
        if decision.delay:
            self.pause(decision.delay)

    def claim(self) -> tuple[str, dict | None]:
        try:
            task = self.api.claim()
        except ServerMisconfigured as exc:
            if exc.orphaned or self.pacing.last_outcome != pc.UNAUTHORIZED:
                log.error("%s; asking again in %g s", exc, self.config.api.auth_retry_interval)
            return pc.UNAUTHORIZED, None
        except AuthError as exc:
            if self.pacing.last_outcome != pc.UNAUTHORIZED:
                log.error("%s; retrying every %g s", exc, self.config.api.auth_retry_interval)
            return pc.UNAUTHORIZED, None
        except ApiUnavailable as exc:
            if exc.orphaned:
                log.error("%s", exc)
            elif self.pacing.last_outcome != pc.UNAVAILABLE:
                log.warning("%s; backing off", exc)
            return pc.UNAVAILABLE, None
        if self.pacing.last_outcome in (pc.UNAVAILABLE, pc.UNAUTHORIZED):
            log.info("GmAnimato at %s answers again", self.config.api.url)
        return (pc.JOB, task) if task is not None else (pc.EMPTY, None)

    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds``, cut short by any command or a stop."""
        self.wake.clear()
        if not self.draining.is_set():
            self.wake.wait(seconds)

    # ---- one job ---------------------------------------------------------------------------------
    def process(self, task: dict) -> None:
        try:
            job = parse_task(task, self.config.api.url, self.config.api.callback)
        except TaskError as exc:
            self.reject_task(task, exc)
            return
        except Exception as exc:   # a parser bug must not lose the job: report what we can
            self.reject_task(task, salvage_task_error(task, self.config.api.url, exc))
            return
        log.info("Received task: %s", job.job_id)
        self.current_job = job.job_id
        self.report(Up.JOB_STARTED, job_id=job.job_id, video_id=job.video_id)
        hooks = self.webhooks_for(job.job_id, job.video_id, job.callback_url)
        started = time.monotonic()
        body = self.execute(job, hooks)
        delivery = self.deliver(hooks, body)
        self.finish(job, body, delivery, time.monotonic() - started)

    def webhooks_for(self, job_id: str, video_id: str, callback_url: str) -> JobWebhooks:
        hook = self.config.webhook
        return JobWebhooks(self.api, callback_url, job_id, hook.max_retries, hook.progress_interval,
                           hook.retry_delay, hook.timeout,
                           fallback_url=callback_for(self.config.api.url, video_id))

    def deliver(self, hooks: JobWebhooks, body: dict):
        """Send the final webhook. A ``completed`` refused for good (too large, invalid) becomes a
        small ``failed`` one, so GmAnimato never keeps the job processing."""
        if self.stopping.is_set():         # a fast stop: one short try, the supervisor will not wait long
            hooks.max_retries = 0
            hooks.timeout = max(1.0, min(hooks.timeout, self.config.supervisor.stop_grace - 2))
        delivery = hooks.final(body)
        if body["status"] == "completed" and delivery.outcome == PERMANENT and delivery.status in (400, 413):
            reason = ("the result webhook was too large for GmAnimato (HTTP 413); configure storage.s3 so "
                      "videos travel as URLs, not base64" if delivery.status == 413 else
                      "GmAnimato refused the result webhook (HTTP 400)")
            log.error("Job %s: %s; reporting it failed instead", hooks.job_id, reason)
            body.clear()
            body.update(failed_payload(hooks.job_id, reason))
            delivery = hooks.final(body)
        return delivery

    def execute(self, job: Job, hooks: JobWebhooks) -> dict:
        """Run the job on ComfyUI: the final webhook body, completed or failed (never raises).

        When ComfyUI went away before anything of the job ran, the job waits for ComfyUI to be ready
        again and is tried once more rather than failed."""
        try:
            return self.execute_once(job, hooks, retry=True)
        except ComfyUnavailable as exc:     # raised only when nothing of the job had run yet
            log.warning("Job %s: %s; waiting for ComfyUI to try again", job.job_id, exc.message)
            if not self.wait_for_comfy(self.config.comfy.startup_timeout):
                return failed_payload(job.job_id, self.comfy_exit or exc.message)
        log.info("Job %s: ComfyUI is back; trying again", job.job_id)
        return self.execute_once(job, hooks, retry=False)

    def wait_for_comfy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if self.supervised and self.comfy_ready.wait(1.0):
                return True
            if self.supervised and (self.comfy_gone or self.draining.is_set()):
                return False                 # FATAL, or draining: nobody will restart ComfyUI
            if not self.supervised:
                if self.comfy.probe():
                    self.comfy_ready.set()
                    return True
                self.stopping.wait(1.0)
        return False

    def execute_once(self, job: Job, hooks: JobWebhooks, retry: bool) -> dict:
        """One try: the final webhook body. With ``retry``, a ComfyUI that went away before anything
        of the job ran is raised (ComfyUnavailable) for :meth:`execute` to wait and try again."""
        def on_progress(snapshot: dict, node_changed: bool) -> None:
            if hooks.progress(snapshot, node_changed):
                self.report(Up.JOB_PROGRESS, job_id=job.job_id, progress=snapshot)

        request = ExecutionRequest(workflow=job.workflow, inputs=job.images, node_weights=job.node_weights,
                                   key_prefix=job.job_id, prompt_id=f"{job.job_id}-{uuid.uuid4().hex[:12]}",
                                   label=job.job_id)
        deps = ExecutionDeps(comfy=self.comfy, store=self.store, session=self.session,
                             on_progress=on_progress, abort=self.abort_reason,
                             job_timeout=self.config.comfy.job_timeout,
                             client_id=f"gmanimato-{self.slot.name}-{uuid.uuid4().hex[:8]}")
        try:
            result = run_job(request, deps)
        except ComfyUnavailable as exc:
            self.comfy_lost()
            if retry and exc.before_prompt and not self.stopping.is_set():
                raise
            return failed_payload(job.job_id, exc.message, exc.details)
        except WorkerError as exc:
            return failed_payload(job.job_id, exc.message, exc.details)
        except Exception as exc:  # a bug of ours: the job is still reported, with the cause
            log.exception("job %s: unexpected error", job.job_id)
            return failed_payload(job.job_id, f"internal worker error: {type(exc).__name__}: {exc}")
        return completed_payload(job.job_id, result.files)

    def abort_reason(self) -> str | None:
        if self.comfy_exit:
            return self.comfy_exit
        if self.stopping.is_set():
            return "the worker was stopped"
        return None

    def comfy_lost(self) -> None:
        """After ComfyUI failed under a job: claim again only once it is ready."""
        if self.supervised:
            if self.comfy_exit or not self.comfy.probe():
                self.comfy_ready.clear()
                self.report(Up.COMFY_UNHEALTHY, reason=self.comfy_exit or "probe failed")
        elif not self.comfy.probe():
            self.comfy_ready.clear()

    def finish(self, job: Job, body: dict, delivery, seconds: float) -> None:
        self.current_job = None
        self.jobs_done += 1
        status = body["status"]
        if status == "completed":
            log.info("Job %s completed in %.1f s", job.job_id, seconds)
        else:
            log.error("Job %s failed: %s", job.job_id, body.get("error"))
        if delivery.outcome == DELIVERED:
            log.info("Webhook %s for %s delivered (HTTP %s)", status, job.job_id, delivery.status)
        else:
            log.error("Webhook %s for %s not delivered: %s after %d attempt(s) (last HTTP %s)", status,
                      job.job_id, delivery.outcome, delivery.attempts, delivery.status)
        self.report(Up.JOB_FINISHED, job_id=job.job_id, status=status, error=body.get("error"),
                    delivered=delivery.outcome == DELIVERED, seconds=round(seconds, 3))

    def reject_task(self, task: Any, exc: TaskError) -> None:
        log.error("Task %s cannot run: %s", exc.job_id or "(no id)", exc)
        if not exc.reportable:
            log.error("Task has no usable id, so GmAnimato cannot be told; it stays processing there")
            return
        hooks = self.webhooks_for(exc.job_id, exc.video_id, exc.callback_url)
        body = failed_payload(exc.job_id, str(exc))
        delivery = self.deliver(hooks, body)
        job = Job(exc.job_id, exc.video_id, {}, (), {}, exc.callback_url)
        self.report(Up.JOB_STARTED, job_id=exc.job_id, video_id=exc.video_id)
        self.finish(job, body, delivery, 0.0)


# ---- the worker process under the supervisor -------------------------------------------------------
def _read_commands(worker: Worker, commands: Any, parent_pid: int) -> None:
    """Feed supervisor commands to the worker; stop it if the supervisor disappears."""
    while not worker.stopping.is_set():
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                log.error("Supervisor (pid %d) is gone; stopping", parent_pid)
                worker.request_stop()
            continue
        except (EOFError, OSError):
            worker.request_stop()
            return
        worker.handle_command(command)


def _heartbeat(worker: Worker, interval: float) -> None:
    while not worker.stopping.wait(interval):
        worker.report(Up.HEARTBEAT, job_id=worker.current_job)


def worker_process_main(config: Config, slot: SlotSpec, reports: Any, commands: Any, parent_pid: int) -> None:
    """Entry point of a worker process (multiprocessing ``spawn``)."""
    from worker.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group; the supervisor decides
    setup_logging(f"worker-{slot.name}", config.logging.level, config.logging.format, config.secrets())
    worker = Worker(config, slot, reports.put, supervised=True)
    install_drain_signals(worker, (signal.SIGTERM,))  # a group-wide SIGTERM drains, as the supervisor does
    threading.Thread(target=_read_commands, args=(worker, commands, parent_pid), daemon=True,
                     name="commands").start()
    threading.Thread(target=_heartbeat, args=(worker, config.supervisor.heartbeat_interval), daemon=True,
                     name="heartbeat").start()
    try:
        code = worker.run()
    except Exception as exc:
        log.exception("Worker for %s crashed", slot.label)
        worker.report(Up.FATAL, reason=f"{type(exc).__name__}: {exc}")
        code = exits.EXIT_FAILURE
    reports.close()
    reports.join_thread()
    os._exit(code)


def salvage_task_error(task: Any, api_url: str, exc: Exception) -> TaskError:
    """A TaskError with whatever ids can be read, for a task the parser choked on."""
    job_id = task.get("id") if isinstance(task, dict) and isinstance(task.get("id"), str) else ""
    if isinstance(task, dict) and isinstance(task.get("job_id"), str):
        job_id, video_id = task["job_id"], job_id
    else:
        video_id = job_id[len(JOB_PREFIX):] if job_id.startswith(JOB_PREFIX) else ""
    log.exception("Task %s: the worker could not parse it", job_id or "(no id)")
    return TaskError(f"the worker could not read this task: {type(exc).__name__}: {exc}", job_id=job_id,
                     video_id=video_id, callback_url=callback_for(api_url, video_id) if video_id else "")


def install_drain_signals(worker: Worker, signals: tuple[int, ...]) -> None:
    """First signal: finish the running job, then exit. Second: stop at once (the job is reported).

    The handler only records the signal (``SimpleQueue.put`` is safe there); a thread acts on it."""
    received: queue.SimpleQueue[int] = queue.SimpleQueue()

    def act() -> None:
        while True:
            received.get()
            if worker.draining.is_set():
                worker.request_stop()
            else:
                worker.request_drain()

    threading.Thread(target=act, daemon=True, name="signals").start()
    for signum in signals:
        signal.signal(signum, lambda number, frame: received.put(number))


def sentinel_present(path: str) -> bool:
    return bool(path) and Path(path).exists()
