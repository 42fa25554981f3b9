"""Messages between the supervisor and a worker process (picklable, one per queue item).

Up (worker -> supervisor, on the worker's own report queue): ``ready``, ``heartbeat``,
``job_started``, ``job_progress``, ``job_finished``, ``comfy_unhealthy``, ``fatal``.
Down (supervisor -> worker, on its command queue): ``comfy_ready``, ``comfy_exited`` (with the exit
code or signal, so a failed job can say why; ``final``: it will not be restarted, ``fatal``: its slot is
FATAL), ``recover`` (jobs were moved to this slot in the journal: take them up), ``drain``, ``stop``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum


class Up(str, Enum):
    READY = "ready"
    HEARTBEAT = "heartbeat"
    JOB_STARTED = "job_started"
    JOB_PROGRESS = "job_progress"
    JOB_FINISHED = "job_finished"
    COMFY_UNHEALTHY = "comfy_unhealthy"
    FATAL = "fatal"


class Down(str, Enum):
    COMFY_READY = "comfy_ready"
    COMFY_EXITED = "comfy_exited"
    RECOVER = "recover"
    DRAIN = "drain"
    STOP = "stop"


@dataclass(frozen=True)
class Report:
    kind: Up
    slot: str
    data: dict = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Command:
    kind: Down
    data: dict = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
