"""Weighted progress of one prompt, folded from ComfyUI events (pure, no I/O).

Each node weighs ``node_weights.get(id, 1.0)``; the total is the weight of every node in the
workflow. A node counts as done when ComfyUI moves on from it (the next ``executing``), when it is
served from cache (``execution_cached``: unlike the original worker, so a finished job reaches 100 %),
and everything is done at ``execution_success``. Within the running node, ``progress`` frames give
``value/max``; a node's first progress frame at >= 99 % is ignored (samplers report a spurious 100 %
before they start). The percentage never goes back (``floor``): a node that ComfyUI runs again, or a
sampler that starts a second pass, holds it where it was.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Progress:
    weights: Mapping[str, float]
    done: frozenset[str] = frozenset()
    current: str | None = None
    current_fraction: float = 0.0
    seen_progress: bool = False   # the current node has sent a progress frame we accepted
    finished: bool = False
    floor: float = 0.0            # the highest percentage reached so far

    @property
    def total_weight(self) -> float:
        return sum(self.weights.values())

    @property
    def percentage(self) -> float:
        if self.finished:
            return 100.0
        total = self.total_weight
        if total <= 0:
            return 0.0
        done = sum(self.weights.get(n, 0.0) for n in self.done)
        running = self.weights.get(self.current, 0.0) * self.current_fraction if self.current else 0.0
        return max(self.floor, round(min(100.0, 100.0 * (done + running) / total), 1))

    def snapshot(self) -> dict:
        """The ``progress`` object of a GmAnimato webhook."""
        return {
            "percentage": self.percentage,
            "completed_nodes": len(self.weights) if self.finished else len(self.done),
            "total_nodes": len(self.weights),
            "current_node": None if self.finished else self.current,
            "current_node_progress": round(100.0 * self.current_fraction, 1) if self.current else 0.0,
        }


def start_progress(node_ids: Iterable[str], node_weights: Mapping[str, float]) -> Progress:
    """Progress at 0 for a workflow with these node ids (unlisted nodes weigh 1.0)."""
    weights = {str(n): float(node_weights.get(str(n), 1.0)) for n in node_ids}
    return Progress(weights=weights)


def on_cached(state: Progress, nodes: Iterable[str]) -> Progress:
    cached = frozenset(str(n) for n in nodes if str(n) in state.weights)
    return replace(state, done=state.done | cached, floor=state.percentage)


def on_executing(state: Progress, node: str | None) -> Progress:
    """ComfyUI started ``node`` (``None``: the prompt ended): the previous node is done."""
    done = state.done | {state.current} if state.current else state.done
    if node is None:
        return replace(state, done=done, current=None, current_fraction=0.0, seen_progress=False,
                       floor=state.percentage)
    return replace(state, done=done - {str(node)}, current=str(node), current_fraction=0.0,
                   seen_progress=False, floor=state.percentage)


def on_node_progress(state: Progress, node: str | None, value: float, maximum: float) -> Progress:
    if not maximum or maximum <= 0:
        return state
    fraction = max(0.0, min(1.0, float(value) / float(maximum)))
    if node is not None and str(node) != state.current:
        state = on_executing(state, str(node))
    if not state.seen_progress and fraction >= 0.99:
        return replace(state, seen_progress=True)
    return replace(state, current_fraction=fraction, seen_progress=True, floor=state.percentage)


def on_success(state: Progress) -> Progress:
    return replace(state, done=frozenset(state.weights), current=None, current_fraction=0.0,
                   finished=True)
