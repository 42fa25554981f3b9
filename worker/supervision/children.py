"""Start, signal, reap and probe the processes of a slot. Never decides when to restart.

A started ComfyUI gets its own session (so TERM/KILL reach its whole process group), a parent-death
signal (it dies with the supervisor even on SIGKILL), its GPU pinned by UUID, its own port,
directories and database, and its output appended to ``<work_dir>/<slot>/comfyui.log``. An attached
ComfyUI is only probed. Workers are ``spawn``-context processes with a fresh report and command queue.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from worker.config import Config
from worker.jobs.loop import SlotSpec, worker_process_main

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class SlotPlan:
    """One slot: its name, the GPU it owns (UUID, or "" for the CPU slot) and its ComfyUI address."""

    name: str
    label: str
    port: int
    gpu_uuid: str = ""
    attach_url: str = ""        # set when attaching to a running ComfyUI

    @property
    def comfy_url(self) -> str:
        return self.attach_url or f"http://127.0.0.1:{self.port}"

    @property
    def spec(self) -> SlotSpec:
        return SlotSpec(self.name, self.label, self.comfy_url)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor's thread that forked us dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def comfy_command(config: Config, plan: SlotPlan, slot_dir: Path) -> list[str]:
    """The ComfyUI command line of a slot (pure)."""
    cmd = list(config.comfy.command) + [
        "--listen", "127.0.0.1", "--port", str(plan.port),
        "--input-directory", str(slot_dir / "input"), "--output-directory", str(slot_dir / "output"),
        "--temp-directory", str(slot_dir / "temp"), "--user-directory", str(slot_dir / "user"),
        "--database-url", f"sqlite:///{slot_dir / 'user' / 'comfyui.db'}",
        "--disable-auto-launch"]
    if not plan.gpu_uuid:
        cmd.append("--cpu")
    return cmd + list(config.comfy.extra_args)


def comfy_env(config: Config, plan: SlotPlan) -> dict[str, str]:
    env = dict(os.environ)
    env.update(config.comfy.env)
    env["CUDA_VISIBLE_DEVICES"] = plan.gpu_uuid
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ComfyProcess:
    """One slot's ComfyUI: a child we started, or an address we attach to."""

    def __init__(self, config: Config, plan: SlotPlan) -> None:
        self.config = config
        self.plan = plan
        self.slot_dir = Path(config.comfy.work_dir).resolve() / plan.name
        self.log_path = self.slot_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def attached(self) -> bool:
        return bool(self.plan.attach_url)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start ComfyUI (no-op when attached). Raises OSError when the command cannot run."""
        self.started_at = time.monotonic()
        if self.attached:
            return
        for sub in ("input", "output", "temp", "user"):
            (self.slot_dir / sub).mkdir(parents=True, exist_ok=True)
        cmd = comfy_command(self.config, self.plan, self.slot_dir)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log_file.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.config.comfy.cwd or None, env=comfy_env(self.config, self.plan),
                                         stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        log.info("%s: started ComfyUI (pid %d) on port %d, log %s", self.plan.name, self.proc.pid,
                 self.plan.port, self.log_path)

    def poll(self) -> int | None:
        """The exit status once the process has exited (and is reaped), else None."""
        return self.proc.poll() if self.proc else None

    def probe(self, timeout: float = 1.0) -> bool:
        try:
            return requests.get(self.plan.comfy_url + "/system_stats", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def signal_group(self, signum: int) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float) -> int | None:
        """TERM to the process group, KILL after ``grace`` seconds; returns the exit status."""
        if not self.proc:
            return None
        self.signal_group(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            return self.proc.wait(5)

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""


class WorkerProcess:
    """One slot's worker process (spawn context) with its own report and command queues."""

    def __init__(self, config: Config, plan: SlotPlan) -> None:
        self.config = config
        self.plan = plan
        self.ctx = multiprocessing.get_context("spawn")
        self.process = None
        self.reports = None
        self.commands = None
        self.started_at = 0.0
        self.last_heartbeat = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.reports = self.ctx.Queue()
        self.commands = self.ctx.Queue()
        self.process = self.ctx.Process(target=worker_process_main, name=f"worker-{self.plan.name}",
                                        args=(self.config, self.plan.spec, self.reports, self.commands,
                                              os.getpid()))
        self.process.start()
        self.started_at = self.last_heartbeat = time.monotonic()
        log.info("%s: started worker (pid %d)", self.plan.name, self.process.pid)

    def poll(self) -> int | None:
        if self.process is None:
            return None
        return self.process.exitcode

    def send(self, command) -> None:
        if self.commands is not None and self.process is not None and self.process.exitcode is None:
            try:
                self.commands.put(command)
            except (ValueError, OSError):
                pass

    def drain_reports(self) -> list:
        items = []
        while self.reports is not None:
            try:
                items.append(self.reports.get_nowait())
            except Exception:   # queue.Empty, or a channel broken by a worker killed mid-write
                break
        return items

    def kill(self) -> None:
        if self.process is not None and self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)

    def terminate(self, grace: float) -> None:
        if self.process is not None and self.process.exitcode is None:
            self.process.terminate()
            self.process.join(grace)
            self.kill()

    def close_channels(self) -> None:
        for q in (self.reports, self.commands):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self.reports = self.commands = None
