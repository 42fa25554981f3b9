"""The supervisor loop: wait (signal | child exit | tick) -> read reports -> reap -> probe -> act.

One thread owns every child's state. Signal handlers (and :meth:`Supervisor.request_drain` from other
threads) only record the request; the loop logs and acts. A slot is one ComfyUI plus one worker; slots
never wait on each other, and one slot going FATAL leaves the others working.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for
from pathlib import Path

from worker import exits
from worker.config import Config
from worker.reports import Command, Down, Report, Up
from worker.supervision.children import ComfyProcess, SlotPlan, WorkerProcess
from worker.supervision.policy import RestartPolicy, decide_restart, describe_status
from worker.supervision.states import ChildState as S
from worker.supervision.states import StateHolder

log = logging.getLogger(__name__)

TICK = 0.2
DRAIN, FAST_STOP = "drain", "stop"


class Slot:
    """Book-keeping of one slot; changed only by the supervisor loop."""

    def __init__(self, config: Config, plan: SlotPlan) -> None:
        self.plan = plan
        self.comfy = ComfyProcess(config, plan)
        self.worker = WorkerProcess(config, plan)
        self.comfy_state = StateHolder(f"{plan.name} comfyui")
        self.worker_state = StateHolder(f"{plan.name} worker")
        self.comfy_crashes: list[float] = []
        self.worker_crashes: list[float] = []
        self.comfy_restart_at = 0.0
        self.worker_restart_at = 0.0
        self.next_probe = 0.0
        self.fatal_reason = ""
        self.current_job: str | None = None

    @property
    def name(self) -> str:
        return self.plan.name


class Supervisor:
    def __init__(self, config: Config, plans: list[SlotPlan],
                 on_report: Callable[[Report], None] | None = None) -> None:
        self.config = config
        self.slots = [Slot(config, plan) for plan in plans]
        self.on_report = on_report or (lambda report: None)
        sup = config.supervisor
        self.policy = RestartPolicy(sup.backoff_start, sup.backoff_cap, sup.healthy_reset,
                                    sup.max_restarts, sup.restart_window)
        self.requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.draining = False
        self.stopping = False
        self.drain_deadline = 0.0

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
            self.requests.put(FAST_STOP if self.draining else DRAIN)
            try:
                os.write(self._wake_w, b"s")
            except OSError:
                pass

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
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
            if self.draining and self.drained(now):
                break
        self.shutdown()
        return exits.EXIT_OK

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
        if not self.draining and self.config.supervisor.sentinel_file and \
                Path(self.config.supervisor.sentinel_file).exists():
            log.info("Found %s: draining", self.config.supervisor.sentinel_file)
            self.requests.put(DRAIN)
        while True:
            try:
                what = self.requests.get_nowait()
            except queue.Empty:
                return
            if what == DRAIN and not self.draining:
                self.begin_drain(now)
            elif what == FAST_STOP or (what == DRAIN and self.draining):
                self.begin_fast_stop()

    def begin_drain(self, now: float) -> None:
        log.info("Draining: no new jobs; running jobs finish (up to %g s)", self.config.supervisor.drain_timeout)
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
        self.drain_deadline = min(self.drain_deadline, time.monotonic() + self.config.supervisor.stop_grace)

    # ---- children --------------------------------------------------------------------------------
    def start_comfy(self, slot: Slot, now: float) -> None:
        slot.comfy_state.set_state(S.STARTING)
        try:
            slot.comfy.start()
        except OSError as exc:
            self.make_fatal(slot, f"cannot start ComfyUI: comfy.command {list(self.config.comfy.command)} "
                                  f"failed: {exc.strerror or exc}")
            return
        slot.next_probe = now

    def start_worker(self, slot: Slot, now: float) -> None:
        slot.worker_state.set_state(S.STARTING)
        slot.worker.start()
        slot.worker_state.set_state(S.RUNNING)
        if slot.comfy_state.state == S.RUNNING:
            slot.worker.send(Command(Down.COMFY_READY))

    def make_fatal(self, slot: Slot, reason: str) -> None:
        log.error("%s: FATAL: %s; the other slots keep working", slot.name, reason)
        slot.fatal_reason = reason
        slot.comfy_state.set_state(S.FATAL, reason)

    def read_reports(self, now: float) -> None:
        for slot in self.slots:
            for report in slot.worker.drain_reports():
                self.handle_report(slot, report, now)

    def handle_report(self, slot: Slot, report: Report, now: float) -> None:
        slot.worker.last_heartbeat = now
        if report.kind == Up.JOB_STARTED:
            slot.current_job = report.data.get("job_id")
        elif report.kind == Up.JOB_FINISHED:
            slot.current_job = None
        elif report.kind == Up.COMFY_UNHEALTHY and slot.comfy_state.state == S.RUNNING:
            slot.next_probe = now
        elif report.kind == Up.FATAL:
            log.error("%s: worker reported a fatal error: %s", slot.name, report.data.get("reason"))
        self.on_report(report)

    def reap(self, now: float) -> None:
        for slot in self.slots:
            code = slot.comfy.poll()
            if code is not None and slot.comfy_state.state in (S.STARTING, S.RUNNING, S.STOPPING):
                self.comfy_exited(slot, code, now)
            code = slot.worker.poll()
            if code is not None and slot.worker_state.state == S.RUNNING:
                self.worker_exited(slot, code, now)

    def comfy_exited(self, slot: Slot, code: int, now: float) -> None:
        slot.worker.send(Command(Down.COMFY_EXITED, {"code": code}))
        if self.draining:
            slot.comfy_state.set_state(S.EXITED)
            return
        healthy_for = now - slot.comfy.started_at if slot.comfy_state.state == S.RUNNING else 0.0
        slot.comfy_crashes.append(now)
        verdict = decide_restart(code, slot.comfy_crashes, now, self.policy, slot.comfy.log_tail(), healthy_for)
        hint = " (out of memory? the kernel OOM killer sends SIGKILL)" if code == -signal.SIGKILL else ""
        log.error("%s: ComfyUI exited with %s%s; log %s", slot.name, describe_status(code), hint,
                  slot.comfy.log_path)
        if verdict.action == "fatal":
            self.make_fatal(slot, verdict.reason)
            return
        log.info("%s: restarting ComfyUI in %.1f s", slot.name, verdict.delay)
        slot.comfy_state.set_state(S.BACKOFF, verdict.reason)
        slot.comfy_restart_at = now + verdict.delay

    def worker_exited(self, slot: Slot, code: int, now: float) -> None:
        slot.worker.close_channels()
        if self.draining:
            log.info("%s: worker exited (%s)", slot.name, describe_status(code))
            slot.worker_state.set_state(S.EXITED)
            return
        slot.worker_crashes.append(now)
        verdict = decide_restart(code, slot.worker_crashes, now, self.policy,
                                 healthy_for=now - slot.worker.started_at)
        log.error("%s: worker exited with %s", slot.name, describe_status(code))
        if verdict.action == "fatal":
            log.error("%s: worker FATAL: %s", slot.name, verdict.reason)
            slot.worker_state.set_state(S.FATAL, verdict.reason)
            return
        slot.worker_state.set_state(S.BACKOFF, verdict.reason)
        slot.worker_restart_at = now + verdict.delay

    def probe(self, now: float) -> None:
        for slot in self.slots:
            if slot.comfy_state.state not in (S.STARTING, S.RUNNING) or now < slot.next_probe:
                continue
            slot.next_probe = now + self.config.supervisor.probe_interval
            if slot.comfy_state.state == S.STARTING:
                self.probe_starting(slot, now)
            elif not slot.comfy.probe():
                self.comfy_unresponsive(slot, now)
            else:
                slot.worker.send(Command(Down.COMFY_READY))
                slot.next_probe = now + 60.0

    def probe_starting(self, slot: Slot, now: float) -> None:
        if slot.comfy.probe():
            slot.comfy_state.set_state(S.RUNNING)
            log.info("%s: ComfyUI ready at %s after %.1f s", slot.name, slot.plan.comfy_url,
                     now - slot.comfy.started_at)
            slot.worker.send(Command(Down.COMFY_READY))
            slot.next_probe = now + 60.0
        elif now - slot.comfy.started_at > self.config.comfy.startup_timeout and not slot.comfy.attached:
            log.error("%s: ComfyUI did not answer within %g s (comfy.startup_timeout); killing it",
                      slot.name, self.config.comfy.startup_timeout)
            slot.comfy.signal_group(signal.SIGKILL)

    def comfy_unresponsive(self, slot: Slot, now: float) -> None:
        if slot.comfy.attached:
            log.warning("%s: attached ComfyUI at %s stopped answering", slot.name, slot.plan.comfy_url)
            slot.comfy_state.set_state(S.BACKOFF)
            slot.comfy_restart_at = now
            slot.worker.send(Command(Down.COMFY_EXITED, {"code": None}))

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
            if slot.worker_state.state == S.RUNNING and now - slot.worker.last_heartbeat > limit:
                log.error("%s: worker sent no heartbeat for %.0f s; killing it", slot.name,
                          now - slot.worker.last_heartbeat)
                slot.worker.kill()

    # ---- stopping --------------------------------------------------------------------------------
    def drained(self, now: float) -> bool:
        running = [s for s in self.slots if s.worker.poll() is None and s.worker.process is not None]
        if not running:
            return True
        if now > self.drain_deadline:
            if not self.stopping:
                log.warning("Drain timeout (%g s) reached", self.config.supervisor.drain_timeout)
                self.begin_fast_stop()
                return False
            for slot in running:
                log.error("%s: worker did not stop in time; killing it", slot.name)
                slot.worker.kill()
            return True
        return False

    def shutdown(self) -> None:
        grace = self.config.supervisor.stop_grace
        for slot in self.slots:
            slot.worker.terminate(grace)
            slot.worker.close_channels()
        for slot in self.slots:
            if slot.comfy.proc is not None and slot.comfy.poll() is None:
                code = slot.comfy.stop(grace)
                log.info("%s: ComfyUI stopped (%s)", slot.name, describe_status(code))
        log.info("Supervisor stopped")
