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
import errno
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
from worker.jobs.claim_turns import TurnSeat
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


def die_with_parent(parent_pid: int):
    """A ``preexec_fn``: in the child, before exec, ask for SIGKILL when the supervisor's thread that
    forked it dies (the supervisor forks from its main thread, which lives as long as it does), and
    exit at once if the supervisor already died between fork and this call."""
    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
    return preexec


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


# The worker's own settings, secrets and endpoints: ComfyUI runs the task's workflow (custom nodes,
# arbitrary code), so it gets none of them. ``comfy.env`` is applied after, so an operator can still
# hand ComfyUI any of these on purpose.
SECRET_ENV = ("WORKER_TASK_SECRET", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
SECRET_ENV_PREFIXES = ("AWS_", "BUCKET_", "GMANIMATO_", "WORKER_")
SECRET_ENV_NAMES = SECRET_ENV + ("COMFY_HOST",)


def comfy_env(config: Config, plan: SlotPlan) -> dict[str, str]:
    """ComfyUI's environment (least privilege): ours without the worker's variables (``AWS_*``,
    ``BUCKET_*``, ``GMANIMATO_*``, ``WORKER_*``, ``COMFY_HOST``) and without any variable holding one of
    the configured secrets, then ``comfy.env`` on top, then the GPU pin."""
    secrets = {value for value in config.secrets() if value}
    env = {name: value for name, value in os.environ.items()
           if name.upper() not in SECRET_ENV_NAMES and not name.upper().startswith(SECRET_ENV_PREFIXES)
           and value not in secrets and value.strip() not in secrets}
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
    """Remember a child (pid, process group, start time) so a later run can find its leftovers."""
    try:
        created = psutil.Process(pid).create_time()
        pgid = os.getpgid(pid)
    except (psutil.Error, OSError):
        created, pgid = 0.0, pid
    path.write_text(json.dumps({"pid": pid, "pgid": pgid, "create_time": created}))


def group_members(pgid: int, since: float) -> list[psutil.Process]:
    """Live processes of process group ``pgid`` started at or after ``since`` (epoch seconds)."""
    members = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["create_time"] >= since - 0.01:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def kill_leftover(path: Path, what: str) -> bool:
    """Kill what is left of a child a pidfile names: its process, or any member of its process group
    started since (a wrapper's children survive it). Nothing else is touched; the pidfile goes."""
    try:
        data = json.loads(path.read_text())
        pid, since = int(data["pid"]), float(data["create_time"])
        pgid = int(data.get("pgid", pid))
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return False
    path.unlink(missing_ok=True)
    members = group_members(pgid, since) if pgid == pid else []
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - since) < 0.01 and leader not in members:
            members.append(leader)
    except psutil.Error:
        pass
    if not members:
        return False
    log.warning("Found a leftover %s from an earlier run (pids %s); killing it", what,
                ", ".join(str(m.pid) for m in members))
    for member in members:
        try:
            member.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(members, timeout=5)
    return True


def sweep_leftovers(work_dir: str) -> None:
    """Before planning ports: kill leftovers of every slot of an earlier run under ``work_dir``."""
    root = Path(work_dir).resolve()
    if not root.is_dir():
        return
    for pidfile in sorted(root.glob("*/*.pid")):
        what = {"comfyui": "ComfyUI", "worker": "worker"}.get(pidfile.stem, pidfile.stem)
        kill_leftover(pidfile, f"{what} of {pidfile.parent.name}")


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
        cwd = self.config.comfy.cwd or None
        if cwd and not Path(cwd).is_dir():
            raise FileNotFoundError(errno.ENOENT, f"comfy.cwd {cwd} is not a directory")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=comfy_env(self.config, self.plan),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
        self.output.follow(self.proc.stdout)
        write_pidfile(self.pidfile, self.proc.pid)
        log.info("%s: started ComfyUI (pid %d) on port %d, log %s", self.plan.name, self.proc.pid,
                 self.plan.port, self.log_path)

    def poll(self) -> int | None:
        """The exit status once the process has exited (and is reaped), else None."""
        return self.proc.poll() if self.proc else None

    def probe(self, timeout: float = 2.0) -> bool:
        """True when the slot's address answers ``/system_stats`` — and, for a ComfyUI we started, when
        the answer is from our own process (its argv names this slot's folders), not from a stranger
        that holds the port."""
        try:
            response = requests.get(self.plan.comfy_url + "/system_stats", timeout=timeout)
            if response.status_code != 200:
                return False
            if self.attached:
                return True
            argv = response.json().get("system", {}).get("argv") or []
        except (requests.RequestException, ValueError, AttributeError):
            return False
        return str(self.slot_dir / "user") in argv

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the process group (a wrapper's children), after an exit."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def signal_group(self, signum: int) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, deadline: float) -> int | None:
        """After TERM to the group (``signal_group``): wait until ``deadline`` (monotonic), then KILL
        the group; returns the exit status."""
        if not self.proc:
            return None
        try:
            code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            code = self.proc.wait(5)
        self.kill_group()
        self.pidfile.unlink(missing_ok=True)
        return code

    def exited_tail(self) -> str:
        """The last lines it printed, once it has exited (what is left of its group is killed)."""
        self.kill_group()
        self.pidfile.unlink(missing_ok=True)
        return self.output.finish() if self.output else ""


class WorkerProcess:
    """One slot's worker process (spawn context) with its own report and command queues."""

    def __init__(self, config: Config, plan: SlotPlan, turn: TurnSeat | None = None) -> None:
        self.config = config
        self.plan = plan
        self.turn = turn                     # the box's claim turn, shared by every worker
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
                                              os.getpid(), self.turn))
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
        """Reports waiting on the queue. An exited worker's queue is not read: a message cut short by
        its death would block the reader for good."""
        items = []
        if self.process is None or self.process.exitcode is not None:
            return items
        while self.reports is not None:
            try:
                items.append(self.reports.get_nowait())
            except Exception:   # queue.Empty, or a channel broken by a worker killed mid-write
                break
        return items

    def join_until(self, deadline: float) -> None:
        if self.process is not None and self.process.exitcode is None:
            self.process.join(max(0.0, deadline - time.monotonic()))

    def kill(self) -> None:
        if self.process is not None and self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)

    def close_channels(self) -> None:
        for q in (self.reports, self.commands):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self.reports = self.commands = None

    def release(self) -> None:
        """At shutdown, after the process has exited: drop it and its queues (so their locks go too)."""
        self.close_channels()
        if self.process is not None and self.process.exitcode is not None:
            self.process.close()
            self.process = None
