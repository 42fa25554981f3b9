"""Lifecycle states of a supervised child (a ComfyUI or a worker), with their one writer.

::

    STOPPED -> STARTING -> RUNNING -> STOPPING -> EXITED
                  |  ^        |                     |
                  v  |        v                     v
                 BACKOFF <----+------------------ FATAL (given up: config fault or too many crashes)
"""
from __future__ import annotations

import logging
from enum import Enum

log = logging.getLogger(__name__)


class ChildState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


S = ChildState
ALLOWED: dict[ChildState, frozenset[ChildState]] = {
    S.STOPPED: frozenset({S.STARTING, S.FATAL, S.EXITED}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.FATAL, S.EXITED}),
    S.RUNNING: frozenset({S.BACKOFF, S.STOPPING, S.FATAL, S.EXITED}),
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.EXITED, S.STOPPING}),
    S.STOPPING: frozenset({S.EXITED, S.FATAL}),
    S.EXITED: frozenset({S.STARTING}),
    S.FATAL: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the supervisor, never a runtime condition."""


class StateHolder:
    """Owns one child's state; :meth:`set_state` is the only way to change it."""

    def __init__(self, name: str, state: ChildState = ChildState.STOPPED) -> None:
        self.name = name
        self.state = state

    def set_state(self, new: ChildState, reason: str = "") -> None:
        if new == self.state:
            return
        if new not in ALLOWED[self.state]:
            allowed = ", ".join(s.value for s in sorted(ALLOWED[self.state], key=lambda s: s.value))
            raise IllegalTransition(f"{self.name}: cannot go from {self.state.value} to {new.value} "
                                    f"(allowed: {allowed or 'none'})")
        log.debug("%s: %s -> %s %s", self.name, self.state.value, new.value, reason)
        self.state = new
