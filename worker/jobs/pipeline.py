"""The jobs of one slot in flight at once, and when the next may be claimed (decisions pure, state locked).

A slot's jobs overlap, so that the worker's own time hides behind the GPU:

* **deliver behind the GPU** — a job lets go of the GPU at ``execution_success`` (or its failure): its
  outputs are fetched and stored and its final webhook sent while the next job executes;
* **prefetch** (``jobs.prefetch``) — once the running job's estimated time left (:func:`time_left`: the
  weighted progress still to come, at the rate of the points gained since its sampler's first step over
  the time since ComfyUI took the prompt up, so the nodes after the sampler count by their weights) is
  under ``jobs.prefetch_window``, the
  next job is claimed, its inputs uploaded and its prompt queued on ComfyUI behind the running one, which
  starts it the moment the running one ends. Never earlier: a job claimed minutes before its GPU can run
  it is a job an idle GPU elsewhere in the fleet could have had.

:func:`claim_kind` decides: at most one job executing and one queued behind it, at most
:data:`MAX_DELIVERING` past the GPU still delivering, and no prefetch after the slot's last job ended
for a reason that was not its own (:func:`slot_fault`). Draining, a stop, and a ComfyUI that is not ready
are the loop's checks, before it asks. :class:`JobLanes` runs each job in its own thread and keeps what
the decision needs; the first exception a job thread lets out (a journal that cannot be written) is
re-raised in the loop, which ends the worker as before.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from handler.errors import PermanentError

log = logging.getLogger(__name__)

IDLE, PREFETCH = "idle", "prefetch"
MAX_DELIVERING = 2           # jobs past the GPU whose outputs and final webhook are still on their way


@dataclass(frozen=True)
class SlotLoad:
    on_gpu: int                  # jobs queued on or running on ComfyUI (or about to be)
    delivering: int              # jobs past the GPU, storing outputs or sending their final webhook
    head_left: float | None      # estimated seconds left of the oldest job on the GPU (None: not known)
    faulted: bool = False        # a job in flight lost its ComfyUI and has not completed since


def time_left(base: float, percentage: float, elapsed: float) -> float | None:
    """Seconds left of a prompt now at ``percentage`` (weighted), ``elapsed`` seconds after ComfyUI took
    it up, counting as progress only the points gained since ``base`` (where it stood at its first step
    inside a node that reports progress, a sampler's); None while there is no such gain yet (pure).
    The loaders' points are left out (quick for their weight here, slow on a GPU's first job: they say
    nothing of the rest) but not their time, and two frames that arrive together cannot fake a fast rate:
    the estimate errs long, never short. Without a new frame it grows as time passes."""
    if percentage >= 100.0:
        return 0.0
    gained = percentage - base
    if not gained > 0.0 or not elapsed > 0.0:
        return None
    return elapsed * (100.0 - percentage) / gained


def claim_kind(load: SlotLoad, prefetch: bool, window: float, slot_faulted: bool) -> str | None:
    """``idle`` (nothing on the GPU: claim), ``prefetch`` (the running job is near its end: claim the
    next one to queue behind it) or None (wait) (pure)."""
    if load.delivering >= MAX_DELIVERING:
        return None
    if load.on_gpu == 0:
        return IDLE
    if load.on_gpu == 1 and prefetch and not slot_faulted and load.head_left is not None \
            and load.head_left < window:
        return PREFETCH
    return None


def slot_fault(exc: BaseException | None) -> bool:
    """Whether a job ended for a reason that is not its own (ComfyUI lost, storage down, a bug of ours),
    rather than completing or failing on its own input or workflow (pure)."""
    return exc is not None and not isinstance(exc, PermanentError)


@dataclass
class _Lane:
    on_gpu: bool = True
    faulted: bool = False               # its ComfyUI went away under it (it waits, or starts again)
    started: bool = False               # ComfyUI took up its prompt
    started_at: float = 0.0             # monotonic time ComfyUI took it up
    base: float | None = None           # its percentage at its first step inside a node (a sampler's)
    percentage: float = 0.0


class JobLanes:
    """The slot's jobs in flight, each in its own thread, and the figures :func:`claim_kind` needs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, _Lane] = {}       # in claim order
        self._threads: set[threading.Thread] = set()
        self._failure: BaseException | None = None

    # ---- the loop's side --------------------------------------------------------------------------
    def start(self, key: Hashable, action: Callable[[], None], name: str, on_gpu: bool = True) -> None:
        """Run ``action`` in a new thread; ``on_gpu``: it holds the GPU until :meth:`release`."""
        thread = threading.Thread(target=self._run, args=(key, action), daemon=True, name=name)
        with self._cond:
            self._lanes[key] = _Lane(on_gpu=on_gpu)
            self._threads.add(thread)
        thread.start()

    def load(self) -> SlotLoad:
        with self._cond:
            on_gpu = [lane for lane in self._lanes.values() if lane.on_gpu]
            head = on_gpu[0] if on_gpu else None
            left = None
            if head is not None and head.started and head.base is not None:
                left = time_left(head.base, head.percentage, self.clock() - head.started_at)
            return SlotLoad(len(on_gpu), len(self._lanes) - len(on_gpu), left,
                            any(lane.faulted for lane in self._lanes.values()))

    def busy(self) -> bool:
        with self._cond:
            return bool(self._lanes)

    def keys(self) -> list[Hashable]:
        """The jobs in flight, oldest first."""
        with self._cond:
            return list(self._lanes)

    def wait(self, timeout: float) -> None:
        """Until a job moves (starts executing, progresses, lets go of the GPU, ends) or :meth:`poke`."""
        with self._cond:
            self._cond.wait(timeout)

    def poke(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every job thread to end; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            alive[0].join(left if left is None else min(left, 1.0))

    def raise_failure(self) -> None:
        """Re-raise, in the caller's thread, what a job thread let out."""
        with self._cond:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    # ---- the job's side (any key not started here, e.g. a recovered job, is ignored) ----------------
    def started(self, key: Hashable) -> None:
        """ComfyUI took up the job's prompt (a new start counts anew)."""
        self._update(key, started=True, started_at=self.clock(), base=None, percentage=0.0)

    def faulted(self, key: Hashable) -> None:
        """The job's ComfyUI went away under it: what was measured of this start no longer holds, and
        nothing is prefetched behind it until it completes."""
        self._update(key, faulted=True, started=False, base=None, percentage=0.0)

    def recovered(self, key: Hashable) -> None:
        """The job got past its fault (its prompt ended on a ComfyUI that was back)."""
        self._update(key, faulted=False)

    def progressed(self, key: Hashable, percentage: float, in_node: bool) -> None:
        """The job's weighted percentage moved; ``in_node``: by a step inside a node (a sampler's)."""
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None:
                return
            lane.percentage = percentage
            if in_node and lane.base is None:
                lane.base = percentage
            self._cond.notify_all()

    def release(self, key: Hashable) -> None:
        """The job no longer needs the GPU (its prompt ended, or never will run)."""
        self._update(key, on_gpu=False)

    def _update(self, key: Hashable, **changes: object) -> None:
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None:
                return
            for name, value in changes.items():
                setattr(lane, name, value)
            self._cond.notify_all()

    def _run(self, key: Hashable, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as exc:       # a journal fault or a bug: the loop re-raises it
            log.debug("job thread %s ended with %r", threading.current_thread().name, exc)
            with self._cond:
                if self._failure is None:
                    self._failure = exc
        finally:
            with self._cond:
                self._lanes.pop(key, None)
                self._threads.discard(threading.current_thread())
                self._cond.notify_all()
