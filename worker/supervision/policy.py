"""Restart decisions (pure functions of exits and clocks; the caller passes ``now``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker import exits
from worker.exits import describe_status
from worker.backoff import backoff_delay

NO_GPU_MARKER = "No CUDA GPUs are available"


@dataclass(frozen=True)
class RestartPolicy:
    backoff_start: float = 1.0
    backoff_cap: float = 60.0
    healthy_reset: float = 300.0
    max_restarts: int = 5
    restart_window: float = 300.0


@dataclass(frozen=True)
class Verdict:
    action: str          # "restart" | "fatal"
    delay: float
    reason: str
    config_fault: bool = False   # restarting cannot help until a person changes something


def decide_restart(code: int | None, crash_times: Sequence[float], now: float, policy: RestartPolicy,
                   log_tail: str = "", healthy_for: float = 0.0) -> Verdict:
    """After a child exited unexpectedly: restart after a delay, or give up (FATAL) and why.

    ``crash_times`` includes this crash. A config-error exit, or a ComfyUI that says no GPU is visible,
    is FATAL at once: restarting cannot help.
    """
    if code == exits.EXIT_CONFIG:
        return Verdict("fatal", 0.0, "exited with the configuration-error code 2", True)
    if NO_GPU_MARKER in log_tail:
        return Verdict("fatal", 0.0, f"ComfyUI says '{NO_GPU_MARKER}': its GPU pin matches no device", True)
    recent = [t for t in crash_times if now - t <= policy.restart_window]
    if len(recent) > policy.max_restarts:
        return Verdict("fatal", 0.0, f"{len(recent)} crashes within {policy.restart_window:g} s")
    streak = 1 if healthy_for >= policy.healthy_reset else len(recent)
    delay = backoff_delay(streak, policy.backoff_start, policy.backoff_cap, jitter=0.0)
    return Verdict("restart", delay, f"{describe_status(code)}; restarting in {delay:g} s")


def silence_report(silent_since: float | None, said_at: float, now: float, repeat: float) -> str | None:
    """What to say of an attached ComfyUI that does not answer, at ``now``: ``gone`` the first time,
    ``still`` every ``repeat`` seconds while it stays away, None otherwise (pure)."""
    if silent_since is None:
        return "gone"
    return "still" if now - said_at >= repeat else None
