"""The supervisor loop: wait (signal | worker exit | tick) -> read reports -> reap -> probe -> act.

One thread owns every child's state. Signal handlers (and :meth:`Supervisor.request_drain` from other
threads) only record the request; the loop logs and acts. A slot is one ComfyUI plus one worker; slots
never wait on each other, and one slot going FATAL leaves the others working. Probes run in a small
thread pool so a hung ComfyUI never stalls the loop.
"""
from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from multiprocessing.connection import wait as wait_for
from pathlib import Path

from worker import exits
from worker.config import Config
from worker.exits import describe_status
from worker.jobs.claim_turns import SharedTurn, TurnSeat, first_claim_at
from worker.jobs.recovery import adopt_orphans
from worker.journal.store import Journal, JournalError
from worker.reports import Command, Down, Report, Up
from worker.supervision.children import ComfyProcess, SlotPlan, WorkerProcess
from worker.supervision.notify import sd_notify
from worker.supervision.policy import RestartPolicy, decide_restart, silence_report
from worker.supervision.slots import assign_ports, port_is_free
from worker.supervision.states import ChildState as S
from worker.supervision.states import StateHolder

log = logging.getLogger(__name__)

TICK = 0.2
DRAIN, FAST_STOP, SIGNAL = "drain", "stop", "signal"
PORT_IN_USE = "address already in use"


def stop_resource_tracker() -> None:
    """Stop and reap multiprocessing's resource tracker, once every worker is gone.

    Spawn-context workers make multiprocessing start a tracker process as our child; left alone it exits
    only after we do, so for a moment a child of ours would outlive us (systemd, and a test that looks
    for leftovers, see it). Its queues are collected first, so nothing starts it again."""
    import gc
    from multiprocessing import resource_tracker

    gc.collect()
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)          # private, but present since Python 3.8
    if stop is not None:
        try:
            stop()
        except (OSError, ChildProcessError) as exc:
            log.debug("resource tracker: %s", exc)


class Slot:
    """Book-keeping of one slot; changed only by the supervisor loop."""

    def __init__(self, config: Config, plan: SlotPlan, turn: TurnSeat | None = None) -> None:
        self.plan = plan
        self.comfy = ComfyProcess(config, plan)
        self.worker = WorkerProcess(config, plan, turn)
        self.comfy_state = StateHolder(f"{plan.name} comfyui")
        self.worker_state = StateHolder(f"{plan.name} worker")
        self.comfy_crashes: list[float] = []
        self.worker_crashes: list[float] = []
        self.comfy_restart_at = 0.0
        self.worker_restart_at = 0.0
        self.next_probe = 0.0
        self.probe_future: Future | None = None
        self.generation = 0                 # bumped at each ComfyUI start; stale probes are ignored
        self.probe_generation = 0
        self.probe_failing_since: float | None = None
        self.silent_since: float | None = None   # an attached ComfyUI has not answered since (said at ...)
        self.silent_said_at = 0.0
        self.worker_waits_for_comfy = False
        self.fatal_reason = ""
        self.fatal_is_config = False
        self.jobs: dict[str, None] = {}     # the worker's jobs in flight, oldest first (they overlap)
        self.kill_reason = ""               # why the supervisor itself killed this ComfyUI, if it did
        self.settled = False                # ComfyUI came up, failed a first time, or is FATAL (READY=1)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def current_job(self) -> str | None:
        """The oldest of the worker's jobs in flight (a second may be queued behind it, or delivering)."""
        return next(iter(self.jobs), None)

    @property
    def fatal(self) -> bool:
        return S.FATAL in (self.comfy_state.state, self.worker_state.state)

    def move_port(self, port: int) -> None:
        self.plan = replace(self.plan, port=port)
        self.comfy.plan = self.plan


class Supervisor:
    def __init__(self, config: Config, plans: list[SlotPlan],
                 on_report: Callable[[Report], None] | None = None) -> None:
        self.config = config
        # one idle claim per poll_interval for the whole box: the workers take turns (claim_turns)
        config.state_path.mkdir(parents=True, exist_ok=True)
        self.turn = SharedTurn(multiprocessing.get_context("spawn"),
                               first_claim_at(time.monotonic(), config.api.poll_interval),
                               str(config.state_path / "claim-turn.lock"), seats=len(plans))
        self.slots = [Slot(config, plan, self.turn.seat(i)) for i, plan in enumerate(plans)]
        self.on_report = on_report or (lambda report: None)
        sup = config.supervisor
        self.policy = RestartPolicy(sup.backoff_start, sup.backoff_cap, sup.healthy_reset,
                                    sup.max_restarts, sup.restart_window)
        self.requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(self.slots))), thread_name_prefix="probe")
        self.draining = False
        self.stopping = False
        self.drain_deadline = 0.0
        self.ready_sent = False
        self.last_status = ""
        self.exit_code = exits.EXIT_OK
        self.signals = 0
        self.logged_fatal: set[str] = set()

    # ---- requests from signals and other threads --------------------------------------------------
    def request_drain(self) -> None:
        self._request(DRAIN)

    def request_stop(self) -> None:
        self._request(FAST_STOP)

    def _request(self, what: str) -> None:
        self.requests.put(what)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain; a second one: stop at once. Handlers only record the request."""
        def on_signal(signum: int, frame: object) -> None:
            self.requests.put(SIGNAL)
            try:
                os.write(self._wake_w, b"s")
            except OSError:
                pass

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Run every slot until drained (or every slot is FATAL); returns the exit code."""
        try:
            for slot in self.slots:
                self.start_comfy(slot, time.monotonic())
                self.start_worker(slot, time.monotonic())
            while True:
                self.wait()
                now = time.monotonic()
                self.handle_requests(now)
                self.read_reports(now)
                self.reap(now)
                self.probe(now)
                self.restart_due(now)
                self.check_heartbeats(now)
                self.tell_systemd()
                if self.draining and self.drained(now):
                    break
                if not self.draining and self.all_fatal():
                    self.begin_drain(now)       # workers report what their FATAL slots cannot run, then exit
        finally:
            self.shutdown()
        return self.exit_code

    def wait(self) -> None:
        sentinels = [s.worker.process.sentinel for s in self.slots
                     if s.worker.process is not None and s.worker.process.exitcode is None]
        ready = wait_for(sentinels + [self._wake_r], timeout=TICK)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass

    def handle_requests(self, now: float) -> None:
        sentinel = self.config.supervisor.sentinel_file
        if not self.draining and sentinel and Path(sentinel).exists():
            log.info("Found %s: draining (the file is removed, so the next start runs normally)", sentinel)
            Path(sentinel).unlink(missing_ok=True)
            self.begin_drain(now)
        while True:
            try:
                what = self.requests.get_nowait()
            except queue.Empty:
                return
            if what == SIGNAL:          # the first signal drains, the second stops at once
                self.signals += 1
                what = DRAIN if self.signals == 1 else FAST_STOP
            if what == DRAIN and not self.draining:
                self.begin_drain(now)
            elif what == FAST_STOP:
                self.begin_fast_stop()

    def begin_drain(self, now: float) -> None:
        log.info("Draining: no new jobs; running jobs finish (up to %g s)", self.config.supervisor.drain_timeout)
        sd_notify("STOPPING=1")
        self.draining = True
        self.drain_deadline = now + self.config.supervisor.drain_timeout
        for slot in self.slots:
            slot.worker.send(Command(Down.DRAIN))

    def begin_fast_stop(self) -> None:
        if self.stopping:
            return
        log.warning("Stopping now: running jobs are interrupted and reported failed")
        self.draining = self.stopping = True
        for slot in self.slots:
            slot.worker.send(Command(Down.STOP))
        # a stopping worker reports its job (one short webhook try, capped by stop_grace) before it exits
        self.drain_deadline = time.monotonic() + self.config.supervisor.stop_grace + 5

    # ---- children --------------------------------------------------------------------------------
    def start_comfy(self, slot: Slot, now: float) -> None:
        slot.comfy_state.set_state(S.STARTING)
        slot.generation += 1
        slot.probe_failing_since = None
        try:
            slot.comfy.start()
        except OSError as exc:
            self.start_failed(slot, exc, now)
            return
        slot.next_probe = now

    def start_failed(self, slot: Slot, exc: OSError, now: float) -> None:
        """A ComfyUI that could not even be started: a configuration fault (missing program or
        folder) is FATAL; anything else (out of processes, memory) counts as a crash."""
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR):
            key = "comfy.cwd" if "comfy.cwd" in str(exc) else f"comfy.command {list(self.config.comfy.command)}"
            self.make_fatal(slot, f"cannot start ComfyUI: {key} failed: {exc.strerror or exc}",
                            config_fault=True)
            return
        log.error("%s: cannot start ComfyUI: %s", slot.name, exc)
        slot.comfy_crashes.append(now)
        verdict = decide_restart(None, slot.comfy_crashes, now, self.policy)
        if verdict.action == "fatal":
            self.make_fatal(slot, verdict.reason)
            return
        slot.comfy_state.set_state(S.BACKOFF, verdict.reason)
        slot.comfy_restart_at = now + verdict.delay

    def start_worker(self, slot: Slot, now: float) -> None:
        slot.worker_state.set_state(S.STARTING)
        slot.worker.start()                 # it recovers its predecessor's job from the journal first
        slot.worker_state.set_state(S.RUNNING)
        if slot.comfy_state.state == S.RUNNING:
            self.tell_ready(slot)
        elif slot.comfy_state.state == S.FATAL:
            slot.worker.send(self.fatal_command(slot))     # so the jobs it recovers are reported, not held

    def tell_ready(self, slot: Slot) -> None:
        slot.worker_waits_for_comfy = False
        slot.worker.send(Command(Down.COMFY_READY, {"url": slot.plan.comfy_url}))

    def make_fatal(self, slot: Slot, reason: str, config_fault: bool = False) -> None:
        if reason in self.logged_fatal:
            log.error("%s: FATAL: the same as above", slot.name)
        else:
            self.logged_fatal.add(reason)
            log.error("%s: FATAL: %s; the other slots keep working", slot.name, reason)
        slot.fatal_reason = reason
        slot.fatal_is_config = config_fault
        slot.settled = True
        slot.comfy_state.set_state(S.FATAL, reason)
        slot.worker.send(self.fatal_command(slot))

    @staticmethod
    def fatal_command(slot: Slot) -> Command:
        return Command(Down.COMFY_EXITED, {"final": True, "fatal": True,
                                           "reason": f"ComfyUI of {slot.plan.label} is FATAL: {slot.fatal_reason}"})

    def read_reports(self, now: float) -> None:
        for slot in self.slots:
            for report in slot.worker.drain_reports():
                self.handle_report(slot, report, now)

    def handle_report(self, slot: Slot, report: Report, now: float) -> None:
        slot.worker.last_heartbeat = now
        if report.kind == Up.JOB_STARTED:
            slot.jobs[str(report.data.get("job_id"))] = None
        elif report.kind == Up.JOB_FINISHED:
            slot.jobs.pop(str(report.data.get("job_id")), None)
        elif report.kind == Up.COMFY_UNHEALTHY:
            slot.worker_waits_for_comfy = True
            slot.next_probe = now
        elif report.kind == Up.FATAL:
            log.error("%s: worker reported a fatal error: %s", slot.name, report.data.get("reason"))
        self.on_report(report)

    def reap(self, now: float) -> None:
        for slot in self.slots:
            code = slot.comfy.poll()
            if code is not None and slot.comfy_state.state in (S.STARTING, S.RUNNING):
                self.comfy_exited(slot, code, now)
            code = slot.worker.poll()
            if code is not None and slot.worker_state.state == S.RUNNING:
                self.worker_exited(slot, code, now)

    def comfy_exited(self, slot: Slot, code: int, now: float) -> None:
        why, slot.kill_reason = slot.kill_reason, ""
        data = {"code": code, "final": self.draining}
        if why:
            data["reason"] = f"the supervisor killed ComfyUI on {slot.plan.label} ({why})"
        slot.worker.send(Command(Down.COMFY_EXITED, data))
        tail = slot.comfy.exited_tail()
        slot.settled = True
        if self.draining:
            slot.comfy_state.set_state(S.EXITED)
            return
        healthy_for = now - slot.comfy.started_at if slot.comfy_state.state == S.RUNNING else 0.0
        slot.comfy_crashes.append(now)
        verdict = decide_restart(code, slot.comfy_crashes, now, self.policy, tail, healthy_for)
        hint = f" ({why})" if why else \
            " (out of memory? the kernel's OOM killer sends SIGKILL)" if code == -signal.SIGKILL else ""
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        log.error("%s: ComfyUI exited with %s%s; last line: %s (log %s)", slot.name, describe_status(code), hint,
                  last[:200] or "-", slot.comfy.log_path)
        if verdict.action == "fatal":
            self.make_fatal(slot, verdict.reason, verdict.config_fault)
            return
        if PORT_IN_USE in tail:
            self.pick_new_port(slot)
        log.info("%s: restarting ComfyUI in %.1f s", slot.name, verdict.delay)
        slot.comfy_state.set_state(S.BACKOFF, verdict.reason)
        slot.comfy_restart_at = now + verdict.delay

    def pick_new_port(self, slot: Slot) -> None:
        others = [s.plan.port for s in self.slots if s is not slot]
        port = assign_ports(1, slot.plan.port + 1, port_is_free, reserved=others)[0]
        log.warning("%s: port %d is taken by another program; ComfyUI moves to port %d", slot.name,
                    slot.plan.port, port)
        slot.move_port(port)

    def worker_exited(self, slot: Slot, code: int, now: float) -> None:
        slot.worker.close_channels()
        slot.jobs.clear()                   # its open jobs are in the journal: the next worker reports them
        if self.draining:
            log.info("%s: worker exited (%s)", slot.name, describe_status(code))
            slot.worker_state.set_state(S.EXITED)
            return
        slot.worker_crashes.append(now)
        verdict = decide_restart(code, slot.worker_crashes, now, self.policy,
                                 healthy_for=now - slot.worker.started_at)
        log.error("%s: worker exited with %s", slot.name, describe_status(code))
        if verdict.action == "fatal":
            log.error("%s: worker FATAL: %s; stopping its ComfyUI", slot.name, verdict.reason)
            slot.fatal_reason = verdict.reason
            slot.fatal_is_config = verdict.config_fault
            slot.worker_state.set_state(S.FATAL, verdict.reason)
            if slot.comfy_state.state not in (S.FATAL, S.EXITED):
                slot.comfy_state.set_state(S.FATAL, "its worker is FATAL")
                slot.comfy.signal_group(signal.SIGTERM)
            self.hand_over_jobs(slot)
            return
        log.info("%s: restarting the worker in %.1f s", slot.name, verdict.delay)
        slot.worker_state.set_state(S.BACKOFF, verdict.reason)
        slot.worker_restart_at = now + verdict.delay

    def hand_over_jobs(self, slot: Slot) -> None:
        """A FATAL worker's open jobs move, in the journal, to the live slot with the fewest, whose worker
        is told to take them up; with no live slot they wait for the next start."""
        live = {s.name: s for s in self.slots if s is not slot and not s.fatal}
        try:
            journal = Journal.open(self.config.state_path)
        except JournalError as exc:
            log.error("%s: cannot hand its open jobs over: %s", slot.name, exc)
            return
        try:
            moves = adopt_orphans(journal, list(live), time.time(), only=slot.name, why="whose worker is FATAL")
        finally:
            journal.close()
        for target in set(moves.values()):
            live[target].worker.send(Command(Down.RECOVER))

    # ---- probes ----------------------------------------------------------------------------------
    def probe(self, now: float) -> None:
        for slot in self.slots:
            future = slot.probe_future
            if future is not None:
                if not future.done():
                    continue
                slot.probe_future = None
                if slot.probe_generation == slot.generation and \
                        slot.comfy_state.state in (S.STARTING, S.RUNNING):
                    self.probe_result(slot, future.result(), now)
            if slot.comfy_state.state in (S.STARTING, S.RUNNING) and now >= slot.next_probe:
                slot.next_probe = now + self.config.supervisor.probe_interval
                slot.probe_generation = slot.generation
                slot.probe_future = self.pool.submit(slot.comfy.probe, 2.0)

    def probe_result(self, slot: Slot, ok: bool, now: float) -> None:
        if slot.comfy_state.state == S.STARTING:
            if ok:
                slot.settled = True
                if slot.silent_since is not None:
                    log.warning("%s: attached ComfyUI at %s answers again, after %.0f s", slot.name,
                                slot.plan.comfy_url, now - slot.silent_since)
                    slot.silent_since = None
                slot.comfy_state.set_state(S.RUNNING)
                log.info("%s: ComfyUI ready at %s after %.1f s", slot.name, slot.plan.comfy_url,
                         now - slot.comfy.started_at)
                self.tell_ready(slot)
            elif slot.comfy.attached:
                slot.settled = True          # an attached ComfyUI that is down does not hold up READY=1
                self.attached_silent(slot, now)
            elif now - slot.comfy.started_at > self.config.comfy.startup_timeout and not slot.kill_reason:
                log.error("%s: ComfyUI did not answer within %g s (comfy.startup_timeout); killing it",
                          slot.name, self.config.comfy.startup_timeout)
                slot.kill_reason = f"no answer within comfy.startup_timeout = {self.config.comfy.startup_timeout:g} s"
                slot.comfy.signal_group(signal.SIGKILL)
            return
        if ok:
            slot.probe_failing_since = None
            if slot.worker_waits_for_comfy:
                self.tell_ready(slot)
            return
        if slot.probe_failing_since is None:
            slot.probe_failing_since = now
            log.warning("%s: ComfyUI at %s does not answer its probe", slot.name, slot.plan.comfy_url)
        elif now - slot.probe_failing_since > self.config.supervisor.probe_timeout:
            self.comfy_unresponsive(slot, now)

    def attached_silent(self, slot: Slot, now: float) -> None:
        """Say that an attached ComfyUI does not answer: once, then every ``supervisor.probe_timeout``."""
        said = silence_report(slot.silent_since, slot.silent_said_at, now, self.config.supervisor.probe_timeout)
        if said == "gone":
            slot.silent_since = slot.silent_said_at = now
            log.warning("%s: attached ComfyUI at %s does not answer; this slot claims no job until it does "
                        "(asking every %g s)", slot.name, slot.plan.comfy_url, self.config.supervisor.probe_interval)
        elif said == "still":
            slot.silent_said_at = now
            log.warning("%s: attached ComfyUI at %s still does not answer, for %.0f s now", slot.name,
                        slot.plan.comfy_url, now - (slot.silent_since or now))

    def comfy_unresponsive(self, slot: Slot, now: float) -> None:
        limit = self.config.supervisor.probe_timeout
        slot.probe_failing_since = None
        if slot.comfy.attached:
            log.error("%s: attached ComfyUI at %s has not answered for %g s; waiting for it to come back",
                      slot.name, slot.plan.comfy_url, limit)
            slot.worker.send(Command(Down.COMFY_EXITED, {"code": None, "reason":
                             f"ComfyUI at {slot.plan.comfy_url} stopped answering for {limit:g} s"}))
            slot.comfy_state.set_state(S.BACKOFF, "not answering")
            slot.comfy_restart_at = now      # "restart" = probe it again until it answers
            slot.silent_since = slot.silent_said_at = now   # said: from now on, "still" and "again"
            return
        if slot.kill_reason:
            return
        log.error("%s: ComfyUI runs but has not answered for %g s; killing it for a restart", slot.name, limit)
        slot.kill_reason = f"it had not answered for {limit:g} s"
        slot.comfy.signal_group(signal.SIGKILL)

    def restart_due(self, now: float) -> None:
        if self.draining:
            return
        for slot in self.slots:
            if slot.comfy_state.state == S.BACKOFF and now >= slot.comfy_restart_at:
                self.start_comfy(slot, now)
            if slot.worker_state.state == S.BACKOFF and now >= slot.worker_restart_at:
                self.start_worker(slot, now)

    def check_heartbeats(self, now: float) -> None:
        limit = self.config.supervisor.heartbeat_timeout
        for slot in self.slots:
            if slot.worker_state.state == S.RUNNING and now - slot.worker.last_heartbeat > limit \
                    and slot.worker.poll() is None:
                log.error("%s: worker sent no heartbeat for %.0f s; killing it", slot.name,
                          now - slot.worker.last_heartbeat)
                slot.worker.kill()

    # ---- systemd and the end ---------------------------------------------------------------------
    def status_line(self) -> str:
        ready = sum(s.comfy_state.state == S.RUNNING and not s.fatal for s in self.slots)
        fatal = sum(s.fatal for s in self.slots)
        busy = sum(len(s.jobs) for s in self.slots)
        word = "draining; " if self.draining else ""
        return f"{word}{len(self.slots)} slot(s): {ready} ready, {fatal} fatal, {busy} job(s) running"

    def tell_systemd(self) -> None:
        if not self.ready_sent and all(s.settled for s in self.slots):
            self.ready_sent = True
            sd_notify("READY=1")
            log.info("Start-up settled, READY (%s)", self.status_line())
        status = self.status_line()
        if status != self.last_status:
            self.last_status = status
            sd_notify(f"STATUS={status}")

    def all_fatal(self) -> bool:
        if not self.slots or not all(s.fatal for s in self.slots):
            return False
        config_fault = all(s.fatal_is_config for s in self.slots)
        self.exit_code = exits.EXIT_CONFIG if config_fault else exits.EXIT_FAILURE
        log.error("Every slot is FATAL; stopping (exit code %d)", self.exit_code)
        return True

    def drained(self, now: float) -> bool:
        running = [s for s in self.slots if s.worker.process is not None and s.worker.poll() is None]
        if not running:
            return True
        if now > self.drain_deadline:
            if not self.stopping:
                log.warning("Drain timeout (%g s) reached", self.config.supervisor.drain_timeout)
                self.begin_fast_stop()
                return False
            for slot in running:
                log.error("%s: worker did not stop in time; killing it%s", slot.name,
                          f" (job {slot.current_job} stays open in the journal; the next start recovers it)"
                          if slot.current_job else "")
                if slot.current_job:
                    self.exit_code = exits.EXIT_FAILURE
                slot.worker.kill()
            return True
        return False

    def shutdown(self) -> None:
        """Workers first (they have drained, or are killed), then every ComfyUI: TERM to all groups at
        once, KILL what is left after ``stop_grace``."""
        grace = self.config.supervisor.stop_grace
        alive = [s for s in self.slots if s.worker.poll() is None and s.worker.process is not None]
        for slot in alive:
            slot.worker.send(Command(Down.STOP))
        deadline = time.monotonic() + (grace if alive else 0)
        for slot in self.slots:
            slot.worker.join_until(deadline)
            slot.worker.kill()
            slot.worker.release()
            slot.worker.pidfile.unlink(missing_ok=True)
        stop_resource_tracker()
        running = [s for s in self.slots if s.comfy.proc is not None and s.comfy.poll() is None]
        for slot in running:
            slot.comfy.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for slot in running:
            code = slot.comfy.stop(deadline)
            log.info("%s: ComfyUI stopped (%s)", slot.name, describe_status(code))
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("Supervisor stopped")
