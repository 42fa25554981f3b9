"""Start, signal, reap and probe the processes of a slot. Never decides when to restart.

A started ComfyUI gets its own session (so TERM/KILL reach its whole process group), a parent-death
signal (it dies with the supervisor even on SIGKILL), its GPU pinned by UUID, its own port,
directories and database, and its output copied to the rotating ``<work_dir>/<slot>/comfyui.log``.
An attached ComfyUI is only probed. Workers are ``spawn``-context processes with a fresh report and
command queue. Each child's pid (with its start time) is kept in ``<slot>/*.pid``, so a supervisor
started after a crash kills what is left of its own slots, and nothing else.
"""
from __future__ import annotations

import collections
import ctypes
import json
import logging
import logging.handlers
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from worker.config import Config
from worker.jobs.loop import SlotSpec, worker_process_main

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
TAIL_LINES = 40


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


try:   # resolved here, in the parent: the child between fork and exec should only make the call
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):   # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor's thread that forked us dies.

    The supervisor starts ComfyUI from its main thread, the one that lives as long as it does."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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


SECRET_ENV = ("WORKER_TASK_SECRET", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")


def comfy_env(config: Config, plan: SlotPlan) -> dict[str, str]:
    """ComfyUI's environment: ours without the worker's secrets, plus ``comfy.env`` and the GPU pin."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(config.comfy.env)
    env["CUDA_VISIBLE_DEVICES"] = plan.gpu_uuid
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ComfyOutput:
    """Copies a ComfyUI's merged stdout/stderr into its rotating ``comfyui.log`` and keeps the tail."""

    def __init__(self, name: str, path: Path, max_bytes: int, backups: int) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._logger = logging.getLogger(f"comfyui-output.{name}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self._logger.handlers:
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes or 0,
                                                           backupCount=backups, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        self.tail.append(line)
        self._logger.info(line)

    def follow(self, stream) -> None:
        def pump() -> None:
            for raw in iter(stream.readline, b""):
                self.write(raw.decode("utf-8", "replace").rstrip("\n"))
            stream.close()

        self._thread = threading.Thread(target=pump, daemon=True, name=f"{self._logger.name}-pump")
        self._thread.start()

    def finish(self, timeout: float = 1.0) -> str:
        """Wait (briefly) for the last lines of an exited process; returns the tail."""
        if self._thread is not None:
            self._thread.join(timeout)
        return "\n".join(self.tail)


def write_pidfile(path: Path, pid: int) -> None:
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = 0.0
    path.write_text(json.dumps({"pid": pid, "create_time": created}))


def kill_leftover(path: Path, what: str) -> bool:
    """Kill the process (and its group) a pidfile names, if it is still the one we started."""
    try:
        data = json.loads(path.read_text())
        proc = psutil.Process(int(data["pid"]))
        if abs(proc.create_time() - float(data["create_time"])) > 0.01:
            return False
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False
    finally:
        path.unlink(missing_ok=True)
    log.warning("Found a leftover %s (pid %d) from an earlier run; killing it", what, proc.pid)
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)
    except (OSError, psutil.Error):
        pass
    return True


class ComfyProcess:
    """One slot's ComfyUI: a child we started, or an address we attach to."""

    def __init__(self, config: Config, plan: SlotPlan) -> None:
        self.config = config
        self.plan = plan
        self.slot_dir = Path(config.comfy.work_dir).resolve() / plan.name
        self.log_path = self.slot_dir / "comfyui.log"
        self.pidfile = self.slot_dir / "comfyui.pid"
        self.proc: subprocess.Popen | None = None
        self.output: ComfyOutput | None = None
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
        kill_leftover(self.pidfile, f"ComfyUI of {self.plan.name}")
        if self.output is None:
            sup = self.config.supervisor
            self.output = ComfyOutput(self.plan.name, self.log_path, sup.log_max_bytes, sup.log_backups)
        cmd = comfy_command(self.config, self.plan, self.slot_dir)
        self.output.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}")
        self.output.tail.clear()
        self.proc = subprocess.Popen(cmd, cwd=self.config.comfy.cwd or None, env=comfy_env(self.config, self.plan),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.output.follow(self.proc.stdout)
        write_pidfile(self.pidfile, self.proc.pid)
        log.info("%s: started ComfyUI (pid %d) on port %d, log %s", self.plan.name, self.proc.pid,
                 self.plan.port, self.log_path)

    def poll(self) -> int | None:
        """The exit status once the process has exited (and is reaped), else None."""
        return self.proc.poll() if self.proc else None

    def probe(self, timeout: float = 2.0) -> bool:
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
            code = self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            code = self.proc.wait(5)
        self.pidfile.unlink(missing_ok=True)
        return code

    def exited_tail(self) -> str:
        """The last lines it printed, once it has exited."""
        self.pidfile.unlink(missing_ok=True)
        return self.output.finish() if self.output else ""


class WorkerProcess:
    """One slot's worker process (spawn context) with its own report and command queues."""

    def __init__(self, config: Config, plan: SlotPlan) -> None:
        self.config = config
        self.plan = plan
        self.ctx = multiprocessing.get_context("spawn")
        self.process = None
        self.reports = None
        self.commands = None
        self.pidfile = Path(config.comfy.work_dir).resolve() / plan.name / "worker.pid"
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
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        kill_leftover(self.pidfile, f"worker of {self.plan.name}")
        self.process.start()
        write_pidfile(self.pidfile, self.process.pid)
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
