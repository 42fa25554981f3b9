"""The worker: claim a task, run it on this slot's ComfyUI, report it; again, until drained.

One worker serves one slot. Under the supervisor it runs in its own process
(:func:`worker_process_main`), claims only while the supervisor says its ComfyUI is ready, and reports
up its own queue. Alone (``local_worker.py``) it runs in the calling process and probes ComfyUI
itself. Either way every claimed job is in the journal before anything is done with it, and ends with a
final webhook (:mod:`worker.jobs.lifecycle`, :mod:`worker.jobs.outbox`). At its start, before claiming,
it recovers the jobs a dead predecessor left open (:mod:`worker.jobs.recovery`). A worker whose
supervisor died leaves its job open in the journal and exits: the next start picks it up.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from handler.comfy_client import ComfyClient
from handler.errors import ComfyUnavailable
from handler.inputs import InputRules
from handler.storage import make_store
from worker import exits
from worker.config import Config, signing_key
from worker.exits import describe_status
from worker.failpoints import Failpoints
from worker.jobs import pacing as pc
from worker.jobs.claim_turns import TurnSeat, next_claim_at
from worker.jobs.api import AuthError, GmAnimatoClient, ServerMisconfigured
from worker.jobs.errors import ApiUnavailable, LostTask
from worker.jobs.lifecycle import JobRun
from worker.jobs.outbox import Outbox
from worker.jobs.pipeline import PREFETCH, JobLanes, claim_kind
from worker.jobs.recovery import recover_slot, task_of
from worker.jobs.task import Job, TaskError, TaskRules, callback_for, parse_task, salvage_ids
from worker.jobs.webhooks import CallbackTarget, JobWebhooks, failed_payload, send_final
from worker.journal.phases import Phase
from worker.journal.store import JobRecord, Journal, JournalError
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
                 supervised: bool = False, parent_pid: int | None = None,
                 clock: Callable[[], float] = time.time, turn: TurnSeat | None = None) -> None:
        self.config = config
        self.turn = turn                         # the box's claim turn (under a supervisor), or None
        self.slot = slot
        self._report = report or (lambda r: None)
        self.supervised = supervised
        self.parent_pid = parent_pid
        self.clock = clock
        self.session = requests.Session()
        self.rules = TaskRules.from_config(config)
        key = signing_key(config.webhook.signing_secret) if config.webhook.signing_secret else b""
        self.api = GmAnimatoClient(config.api.url, config.api.secret, config.api.timeout, signing_key=key)
        self.comfy = ComfyClient(slot.comfy_url, config.comfy.timeout)
        s3 = config.storage.s3
        self.store = make_store(s3.endpoint_url, s3.bucket, s3.access_key_id, s3.secret_access_key, s3.region,
                                int(config.storage.base64_max_mb * 1024 * 1024))
        self.input_rules = InputRules.from_config(config.inputs)
        # start mode: the supervisor gave this slot's ComfyUI its input folder, so the worker can empty it
        self.input_dir = Path(config.comfy.work_dir).resolve() / slot.name / "input" \
            if supervised and config.comfy.mode == "start" else None
        self.failpoints = Failpoints(config.failpoints)
        self.journal = Journal.open(config.state_path, on_write=self._journal_written)
        self.lanes = JobLanes()                  # the job threads, and what the next claim waits for
        # final webhooks ride the claims' and progress' connection: warm (no new TCP/TLS handshake)
        self.outbox = Outbox(self.journal, slot.name, self.api, config.webhook, clock, busy=self.lanes.busy)
        self.wake = threading.Event()            # set on any command, to cut a wait short
        self.draining = threading.Event()
        self.stopping = threading.Event()
        self.comfy_ready = threading.Event()
        self.comfy_exit: str | None = None       # why ComfyUI is gone, while it is
        self._current_jobs: dict[str, None] = {}    # job ids in flight on this slot, oldest first ...
        self._jobs_lock = threading.Lock()          # ... read by the heartbeat and command threads
        self.slot_faulted = False                # the last job to end failed for a reason not its own
        self.progress_types: set[str] = set()    # node types seen reporting progress, for every job
        self.pacing = pc.Pacing(config.api.poll_interval, config.api.backoff_cap,
                                config.api.auth_retry_interval)
        self.jobs_done = 0
        self.sentinel = "" if supervised else config.supervisor.sentinel_file
        self.comfy_gone = False                  # the supervisor will not bring ComfyUI back
        self.comfy_fatal = False                 # ... because the slot is FATAL
        self.recover_requested = threading.Event()   # jobs were moved to this slot in the journal
        self._said_comfy_down = False

    def _journal_written(self, point: str, record: JobRecord) -> None:
        self.failpoints.reach(f"journal:{point}", record.label)

    @property
    def current_job(self) -> str | None:
        """The oldest job in flight (the one executing, when two are)."""
        with self._jobs_lock:
            return next(iter(self._current_jobs), None)

    @property
    def current_jobs(self) -> list[str]:
        with self._jobs_lock:
            return list(self._current_jobs)

    def job_began(self, job_id: str) -> None:
        with self._jobs_lock:
            self._current_jobs[job_id] = None

    def job_ended(self, job_id: str) -> None:
        with self._jobs_lock:
            self._current_jobs.pop(job_id, None)

    # ---- commands and signals (any thread) -------------------------------------------------------
    def handle_command(self, command: Command) -> None:
        if command.kind == Down.COMFY_READY:
            url = command.data.get("url")
            if url and url != self.comfy.base_url:
                log.info("ComfyUI of %s is now at %s", self.slot.label, url)
                self.comfy = ComfyClient(url, self.config.comfy.timeout)
            self.comfy_exit = None
            self.comfy_gone = self.comfy_fatal = False
            self.comfy_ready.set()
        elif command.kind == Down.COMFY_EXITED:
            self.comfy_ready.clear()
            self.comfy_gone = bool(command.data.get("final"))
            self.comfy_fatal = bool(command.data.get("fatal"))
            self.comfy_exit = command.data.get("reason") or \
                f"ComfyUI on {self.slot.label} exited with {describe_status(command.data.get('code'))}"
        elif command.kind == Down.RECOVER:
            self.recover_requested.set()
        elif command.kind == Down.DRAIN:
            self.draining.set()
        elif command.kind == Down.STOP:
            self.draining.set()
            self.stopping.set()
        self.wake.set()
        self.lanes.poke()

    def request_drain(self) -> None:
        self.handle_command(Command(Down.DRAIN))

    def request_stop(self) -> None:
        self.handle_command(Command(Down.STOP))

    def report(self, kind: Up, **data: Any) -> None:
        self._report(Report(kind, self.slot.name, data))

    def supervisor_gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def abandon_if_orphaned(self, job_id: str | None = None) -> None:
        """Under a supervisor that died: exit now, leaving the job open in the journal for the next start
        (its ComfyUI died with the supervisor; reporting the job failed would throw its work away)."""
        if not self.supervisor_gone():
            return
        log.error("Supervisor (pid %s) is gone; %s and exiting", self.parent_pid,
                  f"leaving job {job_id} open in the journal for the next start" if job_id else "nothing is open")
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(exits.EXIT_FAILURE)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Recover what a dead predecessor left, then serve jobs until drained or stopped."""
        self.report(Up.READY, pid=os.getpid())
        log.info("Worker for %s started (ComfyUI %s, GmAnimato %s, journal %s)", self.slot.label,
                 self.slot.comfy_url, self.api.shown_url, self.journal.path)
        if self.input_dir is None:
            log.info("Uploaded inputs stay in ComfyUI's input folder: this worker cannot reach it (attach mode "
                     "or local_worker.py); clean it on the ComfyUI side")
        self.prune_journal()
        self.outbox.start()
        recover_slot(self)
        while not self.draining.is_set():
            if sentinel_present(self.sentinel):
                log.info("Found %s: finishing up and stopping", self.sentinel)
                self.request_drain()
                break
            if self.recover_requested.is_set():
                self.recover_requested.clear()
                recover_slot(self)
                continue
            if not self.ensure_comfy():
                continue
            self.poll_once()
        self.finish_jobs()
        waiting = self.outbox.stop(self.fast_stop_timeout() or self.config.webhook.timeout + 1)
        if waiting:
            log.warning("%d final webhook(s) not delivered yet stay in the outbox (%s); the next start sends "
                        "them", waiting, self.journal.path)
        log.info("Worker for %s stopped after %d job(s)", self.slot.label, self.jobs_done)
        return exits.EXIT_OK

    def prune_journal(self) -> None:
        pruned = self.journal.prune(self.clock() - self.config.jobs.keep_closed)
        if pruned:
            log.info("Journal: pruned %d finished job(s) older than %g s (jobs.keep_closed)", pruned,
                     self.config.jobs.keep_closed)

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

    def await_comfy(self) -> bool:
        """Wait until ComfyUI may take work; False when draining first, or when its slot is FATAL
        (``comfy_exit`` says why)."""
        while not self.draining.is_set() and not self.comfy_fatal:
            if self.ensure_comfy():
                return True
        return False

    def finish_jobs(self) -> None:
        """Wait for the jobs in flight to end (a drain lets them finish; a stop makes them end fast)."""
        if self.lanes.busy():
            log.info("Waiting for %d job(s) of %s to finish", len(self.current_jobs) or 1, self.slot.label)
        while not self.lanes.join(1.0):
            self.abandon_if_orphaned(self.current_job)
        self.lanes.raise_failure()

    def room_to_claim(self) -> str | None:
        """``idle`` when the slot's GPU is free, ``prefetch`` when the running job is near its end;
        otherwise waits until a job moves (or a second) and returns None."""
        self.lanes.raise_failure()
        jobs = self.config.jobs
        load = self.lanes.load()
        kind = claim_kind(load, jobs.prefetch, jobs.prefetch_window, self.slot_faulted or load.faulted)
        if kind is None:
            self.lanes.wait(1.0)
        return kind

    def poll_once(self) -> None:
        """One claim, when the slot has room and it is this box's turn; a job it brought runs in its own
        thread. A claim that brought a job hands the turn on at once, before the job is journaled and
        read, so the box's idle workers claim back to back; should the job turn out lost, the box's next
        claim is put off after all."""
        kind = self.room_to_claim()
        if kind is None or not self.take_turn(prefetch=kind == PREFETCH):
            return
        outcome, task = self.claim()
        handed_on = self.turn is not None and outcome == pc.JOB and not isinstance(task, LostTask)
        if handed_on:
            self.turn.give_back(time.monotonic(), got_job=True)
        after: list[Callable[[], None]] = []
        if outcome == pc.JOB:
            outcome = self.accept(task, after)
        self.pacing, decision = pc.after_claim(self.pacing, outcome)
        if self.turn is not None:
            at = next_claim_at(time.monotonic(), outcome, decision.delay, self.config.api.poll_interval)
            if not handed_on:
                self.turn.give_back(at)
            elif outcome != pc.JOB:
                self.turn.postpone(at)
        for action in after:
            action()
        if self.turn is None and decision.delay:
            self.pause(decision.delay)

    def take_turn(self, prefetch: bool = False) -> bool:
        """Whether this worker may claim now (no turn: always); otherwise waits a little."""
        if self.turn is None:
            return True
        turn = self.turn.take(time.monotonic(), self.config.api.timeout + 5.0, prefetch)
        if not turn.go:
            self.pause(min(turn.wait, 1.0))
        return turn.go

    def claim(self) -> tuple[str, Any]:
        try:
            task = self.api.claim()
        except LostTask as exc:
            return pc.JOB, exc           # claimed, unreadable: process() reports it when it can
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
            log.info("GmAnimato at %s answers again", self.api.shown_url)
        return (pc.JOB, task) if task is not None else (pc.EMPTY, None)

    def pause(self, seconds: float) -> None:
        """Wait up to ``seconds``, cut short by any command or a stop."""
        self.wake.clear()
        if not self.draining.is_set():
            self.wake.wait(seconds)

    # ---- one job ---------------------------------------------------------------------------------
    def accept(self, task: Any, after: list[Callable[[], None]]) -> str:
        """A claimed task: on disk first, then read. What is left to do with it (run it, or report it
        failed) goes to ``after``. Returns the pacing outcome: ``job``, or ``lost`` when it can be
        neither run nor reported."""
        try:
            record = self.journal.record_claim(self.slot.name, task_text(task), self.clock())
        except sqlite3.Error as exc:
            self.report_unjournaled(task, exc)
            raise                        # the worker exits; its restart finds the journal again, or goes FATAL
        if isinstance(task, LostTask):
            return self.reject_task(record, TaskError(str(task), **task.ids), after)
        job = self.read_task(record, task, after)
        if job is None:
            return pc.JOB if self.journal.get(record.seq).job_id else pc.LOST
        log.info("Received task: %s", job.job_id)
        for note in job.notes:
            log.warning("Job %s: %s", job.job_id, note)
        run = JobRun(self, record, job)
        after.append(lambda: self.lanes.start(run, run.run, f"job-{job.job_id}"))
        return pc.JOB

    def report_unjournaled(self, task: Any, exc: Exception) -> None:
        """The journal cannot take a claim (disk full, unwritable): tell GmAnimato the job failed (the
        inline attempts only: nothing on disk to retry from), rather than leave it processing."""
        log.error("The journal %s cannot record a claimed task (%s)", self.journal.path, exc)
        try:
            if isinstance(task, LostTask):
                raise TaskError(str(task), **task.ids)
            job = parse_task(task, self.rules)
            ids = (job.job_id, job.callback_url)
        except TaskError as error:
            ids = (error.job_id, error.callback_url)
        except Exception:
            error = salvage_task_error(task, self.config.api.url, exc)
            ids = (error.job_id, error.callback_url)
        if ids[0] and ids[1]:
            send_final(self.api, CallbackTarget(ids[1], label=ids[0]),
                       failed_payload(ids[0], f"the worker cannot write its journal ({exc})"),
                       self.config.webhook.max_retries + 1, self.config.webhook.retry_delay,
                       self.config.webhook.timeout)

    def read_recorded_task(self, record: JobRecord) -> Job | None:
        try:
            task = task_of(self.journal, record)
        except ValueError as exc:
            log.error("Job %s: its recorded task cannot be read back (%s)", record.label, exc)
            if record.job_id and record.callback_url:     # the ids are in the row: report it with them
                job = Job(record.job_id, record.video_id or "", {}, (), {}, record.callback_url)
                JobRun(self, record, job).report_failure(f"the worker's journal lost this task ({exc})")
                return None
            task = None
        return self.read_task(record, task)

    def read_task(self, record: JobRecord, task: Any, after: list | None = None) -> Job | None:
        """The task as a Job, its ids in the journal; None when it cannot run (it is then reported, or
        its report is put in ``after``)."""
        try:
            job = parse_task(task, self.rules)
        except TaskError as exc:
            self.reject_task(record, exc, after)
            return None
        except Exception as exc:   # a parser bug (a RecursionError too) must not lose the job
            self.reject_task(record, salvage_task_error(task, self.config.api.url, exc), after)
            return None
        self.journal.identify(record.seq, job.job_id, job.video_id, job.callback_url,
                              callback_for(self.config.api.url, job.video_id), self.clock())
        return job

    def reject_task(self, record: JobRecord, exc: TaskError, after: list | None = None) -> str:
        """Report a task that cannot run (``job``; now, or through ``after``), or say in one line that it
        is lost (``lost``)."""
        if not exc.reportable:
            log.error("A claimed task cannot run and has no usable id, so GmAnimato cannot be told (it stays "
                      "processing there): %s", exc)
            self.journal.close_job(record.seq, Phase.UNREPORTABLE, self.clock(), error=str(exc))
            return pc.LOST
        log.error("Task %s cannot run: %s", exc.job_id, exc)
        record = self.journal.identify(record.seq, exc.job_id, exc.video_id, exc.callback_url,
                                       callback_for(self.config.api.url, exc.video_id) if exc.video_id else "",
                                       self.clock())
        run = JobRun(self, record, Job(exc.job_id, exc.video_id, {}, (), {}, exc.callback_url))
        if after is None:
            run.report_failure(str(exc))
        else:
            after.append(lambda: self.lanes.start(run, lambda: run.report_failure(str(exc)),
                                                  f"report-{exc.job_id}", on_gpu=False))
        return pc.JOB

    def remove_inputs(self, job: Job) -> None:
        """Delete a finished job's uploaded inputs from ComfyUI's input folder (start mode only); the
        names were checked to be plain file names when the task was read."""
        if self.input_dir is None:
            return
        for item in job.images:
            try:
                (self.input_dir / item.name).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("Job %s: cannot remove input %s (%s)", job.job_id, item.name, exc.strerror)

    def webhooks_for(self, job_id: str, video_id: str, callback_url: str) -> JobWebhooks:
        hook = self.config.webhook
        return JobWebhooks(self.api, callback_url, job_id, hook.progress_interval, hook.timeout,
                           fallback_url=callback_for(self.config.api.url, video_id))

    def fast_stop_timeout(self) -> float | None:
        """On a fast stop, a final webhook gets one short try (the rest waits in the outbox)."""
        if not self.stopping.is_set():
            return None
        return max(1.0, min(self.config.webhook.timeout, self.config.supervisor.stop_grace - 2))

    # ---- ComfyUI's state as a job sees it ----------------------------------------------------------
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

    def prompt_known(self, record: JobRecord, tries: int = 5) -> bool:
        """Whether this slot's ComfyUI still has the recorded prompt (queued, running or in history). A
        ComfyUI too busy to answer is asked again (about 10 s); after that the prompt counts as unknown
        (and is cancelled by the caller before anything else runs)."""
        prompt = record.prompt_id or ""
        for attempt in range(1, tries + 1):
            try:
                return self.comfy.find_prompt(prompt)[1]
            except ComfyUnavailable as exc:
                log.warning("Job %s: cannot ask ComfyUI about prompt %s (%s)%s", record.label, prompt,
                            exc.message, "; asking again" if attempt < tries else "")
                if attempt < tries and self.stopping.wait(2.0):
                    break
        return False

    def abort_reason(self) -> str | None:
        if self.comfy_exit:
            return self.comfy_exit
        return self.stop_reason()

    def stop_reason(self) -> str | None:
        return "the worker was stopped" if self.stopping.is_set() else None

    def comfy_lost(self) -> None:
        """After ComfyUI failed under a job: claim again only once it is ready."""
        if self.supervised:
            if self.comfy_exit or not self.comfy.probe():
                self.comfy_ready.clear()
                self.report(Up.COMFY_UNHEALTHY, reason=self.comfy_exit or "probe failed")
        elif not self.comfy.probe():
            self.comfy_ready.clear()


def task_text(task: Any) -> str:
    """The claim answer as it is kept in the journal (JSON text); a lost one as what was learnt of it."""
    if isinstance(task, LostTask):
        return json.dumps({"id": task.ids.get("job_id", ""), "unreadable_task": str(task)})
    try:
        return json.dumps(task)
    except (TypeError, ValueError, RecursionError) as exc:
        return json.dumps({"unreadable_task": f"{type(exc).__name__}: {exc}"[:500]})


# ---- the worker process under the supervisor -------------------------------------------------------
def _read_commands(worker: Worker, commands: Any, parent_pid: int) -> None:
    """Feed supervisor commands to the worker; stop it if the supervisor disappears."""
    while not worker.stopping.is_set():
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            worker.abandon_if_orphaned(worker.current_job)
            continue
        except (EOFError, OSError):
            worker.abandon_if_orphaned(worker.current_job)
            worker.request_stop()
            return
        worker.handle_command(command)


def _heartbeat(worker: Worker, interval: float) -> None:
    while not worker.stopping.wait(interval):
        worker.report(Up.HEARTBEAT, job_id=worker.current_job)


def worker_process_main(config: Config, slot: SlotSpec, reports: Any, commands: Any, parent_pid: int,
                        turn: TurnSeat | None = None) -> None:
    """Entry point of a worker process (multiprocessing ``spawn``)."""
    from worker.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group; the supervisor decides
    setup_logging(f"worker-{slot.name}", config.logging.level, config.logging.format, config.secrets())
    try:
        worker = Worker(config, slot, reports.put, supervised=True, parent_pid=parent_pid, turn=turn)
    except JournalError as exc:          # the supervisor checked it at start; say why, never restart
        log.error("%s", exc)
        reports.put(Report(Up.FATAL, slot.name, {"reason": str(exc)}))
        reports.close()
        reports.join_thread()
        os._exit(exits.EXIT_CONFIG)
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


def salvage_task_error(task: Any, api_url: str, exc: BaseException) -> TaskError:
    """A TaskError with whatever ids can be read (an issued ``local-`` id only), for a task the parser
    choked on."""
    ids = salvage_ids(task, api_url)
    log.error("Task %s: the worker could not parse it (%s: %s)", ids.get("job_id") or "(no usable id)",
              type(exc).__name__, str(exc)[:300], exc_info=not isinstance(exc, RecursionError))
    return TaskError(f"the worker could not read this task: {type(exc).__name__}: {str(exc)[:300]}", **ids)


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
