"""Start a simulator as a real child process and learn the address it bound.

Used by the tests and by ``supervisor.py demo``. A simulator started with ``--port 0`` binds a free
port and announces it on one output line; :func:`start_sim` waits (with a deadline) for the line that
``ready_pattern`` matches and returns the running process with its base URL.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GMANIMATO_READY = re.compile(r"listening on (http://\S+)")
COMFYUI_READY = re.compile(r"To see the GUI go to: (http://\S+)")


class SimStartError(RuntimeError):
    """The simulator exited or stayed silent before announcing its address."""


@dataclass
class SimProcess:
    """A running simulator: its process, its base URL and everything it printed so far."""

    proc: subprocess.Popen
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the simulator (TERM, then KILL after ``timeout``); safe to call twice."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def start_sim(module: str, args: list[str], ready_pattern: re.Pattern[str],
              timeout: float = 20.0, env: dict[str, str] | None = None) -> SimProcess:
    """Run ``python -m <module> <args>`` and wait until it prints its address.

    stdout and stderr are merged and collected into ``SimProcess.lines`` by a reader thread, so the
    child never blocks on a full pipe.
    """
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(project_root()), child_env.get("PYTHONPATH", "")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=child_env,
                            cwd=str(project_root()))
    lines: list[str] = []
    found = threading.Event()
    url_box: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            match = ready_pattern.search(line)
            if match and not found.is_set():
                url_box.append(match.group(1).rstrip("/"))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True, name=f"sim-output-{module}").start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.05):
        if time.monotonic() > deadline:
            break
    if not url_box:
        proc.kill()
        proc.wait(5)
        raise SimStartError(f"{module} did not announce its address: {' | '.join(lines[-10:])}")
    return SimProcess(proc=proc, url=url_box[0], lines=lines)
