"""Queue, history, output cache and execution order of the simulated ComfyUI.

* :class:`PromptQueue` is ComfyUI's ``PromptQueue``: a heap ordered by ``number`` (pending items are
  listed in heap order, not sorted), one running item, an in-memory history.
* :func:`node_signatures` and :class:`OutputCache` give the classic cache: a node is cached when its class,
  widget inputs, IS_CHANGED value and all upstream nodes match a node of the previous prompt.
* :class:`ExecutionList` is ComfyUI's ``ExecutionList`` (depth-first registration, "UX friendly" pick of
  the next ready node), so nodes run in the order the real server runs them.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from worker.sim.comfy_files import Dirs, annotated_path, file_sha256
from worker.sim.comfy_nodes import NodeSpec
from worker.sim.comfy_validate import is_link

logger = logging.getLogger(__name__)

MAX_HISTORY = 10000


@dataclass
class QueueItem:
    """One accepted prompt: ComfyUI's 5-element queue item."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]

    def as_list(self) -> list:
        """The item as ``/queue`` and ``/history`` show it."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    """Pending prompts (a heap), the running one and the history; ``on_change`` broadcasts ``status``."""

    def __init__(self, on_change: Callable[[], Awaitable[None]]) -> None:
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._on_change = on_change
        self.running: QueueItem | None = None
        self.history: dict[str, dict] = {}

    def remaining(self) -> int:
        """``queue_remaining``: pending plus running."""
        return len(self._heap) + (self.running is not None)

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.remaining()}}

    def pending(self) -> list[QueueItem]:
        """Pending items in heap order, as ComfyUI lists them."""
        return [entry[2] for entry in self._heap]

    async def put(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item.number, next(self._seq), item))
        self._wake.set()
        await self._on_change()

    async def get(self) -> QueueItem:
        """Wait for the next prompt and mark it running."""
        while not self._heap:
            self._wake.clear()
            await self._wake.wait()
        self.running = heapq.heappop(self._heap)[2]
        await self._on_change()
        return self.running

    async def task_done(self, entry: dict) -> None:
        """File the running prompt's history entry and clear it."""
        if self.running is not None:
            self.history[self.running.prompt_id] = entry
            while len(self.history) > MAX_HISTORY:
                self.history.pop(next(iter(self.history)))
        self.running = None
        await self._on_change()

    async def delete(self, prompt_id: str) -> bool:
        """Remove one pending prompt (never the running one)."""
        for index, entry in enumerate(self._heap):
            if entry[2].prompt_id == prompt_id:
                self._heap.pop(index)
                heapq.heapify(self._heap)
                await self._on_change()
                return True
        return False

    async def wipe(self) -> None:
        self._heap = []
        await self._on_change()

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        """ComfyUI's ``get_history``: one entry, or the last ``max_items`` (oldest first) from ``offset``."""
        if prompt_id is not None:
            return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out = {}
        for index, key in enumerate(self.history):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out


# ---------------------------------------------------------------- cache

@dataclass
class CacheEntry:
    """A node's outputs and its UI output (None when it had none)."""

    outputs: tuple
    ui: dict | None


class OutputCache:
    """The classic cache: entries keyed by signature, pruned to the current prompt's signatures."""

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}

    def get(self, key: str | None) -> CacheEntry | None:
        return self.entries.get(key) if key is not None else None

    def set(self, key: str, entry: CacheEntry) -> None:
        self.entries[key] = entry

    def keep_only(self, keys: set[str]) -> None:
        """Drop every entry whose signature is not one of ``keys``."""
        self.entries = {k: v for k, v in self.entries.items() if k in keys}

    def clear(self) -> None:
        self.entries = {}


def sim_options(node: dict) -> dict:
    """The ``_meta.sim`` script of a node ({} when absent or malformed)."""
    meta = node.get("_meta") if isinstance(node, dict) else None
    sim = meta.get("sim") if isinstance(meta, dict) else None
    return sim if isinstance(sim, dict) else {}


def _is_changed(node: dict, dirs: Dirs) -> object:
    """IS_CHANGED: LoadImage hashes its file (NaN-like when missing); SaveImageWebsocket always changes."""
    class_type = node.get("class_type")
    if class_type == "LoadImage" and isinstance(node.get("inputs", {}).get("image"), str):
        path = annotated_path(node["inputs"]["image"], dirs)
        digest = file_sha256(path)
        if digest is None:
            logger.warning("WARNING: [Errno 2] No such file or directory: '%s'", path)
            return f"nan:{uuid.uuid4()}"
        return digest
    if class_type == "SaveImageWebsocket":
        return f"changed:{time.time()}:{uuid.uuid4()}"
    return None


def node_signatures(prompt: dict, dirs: Dirs) -> dict[str, str]:
    """A cache key per node id: class, IS_CHANGED, inputs (links by upstream key) and ``_meta.sim``.

    ``_meta.sim`` is part of the key (unlike real ComfyUI, which ignores ``_meta``) so that a scripted
    node is never served from the cache.
    """
    memo: dict[str, str] = {}

    def key(node_id: str, path: frozenset[str]) -> str:
        if node_id in memo:
            return memo[node_id]
        if node_id in path:
            return f"cycle:{node_id}"
        node = prompt[node_id]
        inputs = {name: (["@link", key(value[0], path | {node_id}), value[1]]
                         if is_link(value) and value[0] in prompt else value)
                  for name, value in (node.get("inputs") or {}).items()}
        body = {"class": node.get("class_type"), "changed": _is_changed(node, dirs), "inputs": inputs,
                "sim": sim_options(node)}
        memo[node_id] = hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()
        return memo[node_id]

    return {node_id: key(node_id, frozenset()) for node_id in prompt}


# ---------------------------------------------------------------- execution order

class CycleError(RuntimeError):
    """The prompt's links form a loop."""


class ExecutionList:
    """Which node runs next: ComfyUI's ``ExecutionList`` without lazy inputs and subgraphs."""

    def __init__(self, prompt: dict, specs: dict[str, NodeSpec], is_cached: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.specs = specs
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}

    def add_node(self, node_id: str) -> None:
        """Register ``node_id`` and (depth first) every uncached node it needs."""
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = {}
            for value in self.prompt[current]["inputs"].values():
                if is_link(value):
                    if not self.is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], value[1], current))
        for from_id, slot, to_id in links:
            self._add_strong_link(from_id, slot, to_id)

    def _add_strong_link(self, from_id: str, slot: int, to_id: str) -> None:
        if self.is_cached(from_id):
            return
        self.add_node(from_id)
        if to_id not in self.blocking[from_id]:
            self.blocking[from_id][to_id] = {}
            self.block_count[to_id] += 1
        self.blocking[from_id][to_id][slot] = True

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        """The next node to run; raises :class:`CycleError` when nothing is ready."""
        ready = [node_id for node_id in self.pending if self.block_count[node_id] == 0]
        if not ready:
            raise CycleError("Dependency cycle detected")
        return self._ux_friendly_pick(ready)

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for to_id in self.blocking[node_id]:
            self.block_count[to_id] -= 1

    def _is_output(self, node_id: str) -> bool:
        return self.specs[self.prompt[node_id]["class_type"]].output_node

    def _ux_friendly_pick(self, ready: list[str]) -> str:
        """Outputs first, then nodes one or two steps before an output, else the first ready node."""
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self._is_output(b2) for b in self.blocking[node_id] for b2 in self.blocking[b]):
                return node_id
        return ready[0]
