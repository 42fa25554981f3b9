"""What one prompt has done so far, folded from its websocket events (pure, no I/O).

The outcome is final at ``execution_success`` / ``execution_error`` / ``execution_interrupted``: the
worker need not wait for the ``executing`` ``node: null`` frame that follows ComfyUI's clean-up
(~200 ms on a GPU). Outputs are named by the ``executed`` frames of output nodes.
"""
from __future__ import annotations

import math

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from handler import progress as prog
from handler.comfy_events import Event

RUNNING, SUCCEEDED, FAILED, INTERRUPTED = "running", "succeeded", "failed", "interrupted"


@dataclass(frozen=True)
class PromptWatch:
    prompt_id: str
    classes: Mapping[str, str]                      # node id -> class_type, for messages
    progress: prog.Progress
    outcome: str = RUNNING
    executed: Mapping[str, Any] = field(default_factory=dict)   # node id -> ui output
    error: Mapping[str, Any] = field(default_factory=dict)      # execution_error/interrupted data
    started: bool = False

    @property
    def done(self) -> bool:
        return self.outcome != RUNNING

    @property
    def current_node(self) -> str | None:
        return self.progress.current

    def describe_node(self, node_id: str | None) -> str:
        if not node_id:
            return "before any node ran"
        return f"node {node_id} ({self.classes.get(str(node_id), '?')})"


def start_watch(prompt_id: str, workflow: Mapping[str, Any], node_weights: Mapping[str, float]) -> PromptWatch:
    classes = {str(n): str(node.get("class_type", "?")) for n, node in workflow.items()}
    return PromptWatch(prompt_id=prompt_id, classes=classes,
                       progress=prog.start_progress(classes, node_weights))


def apply_event(watch: PromptWatch, event: Event) -> PromptWatch:
    """Fold one event; events of other prompts (and queue ``status`` frames) change nothing."""
    if watch.done:
        return watch
    if event.prompt_id is not None and event.prompt_id != watch.prompt_id:
        return watch
    handler = _HANDLERS.get(event.type)
    if handler is None:
        return watch
    if event.prompt_id is None and event.type != "executing":
        return watch
    return handler(watch, event.data)


def _on_start(watch: PromptWatch, data: dict) -> PromptWatch:
    return replace(watch, started=True)


def _on_cached(watch: PromptWatch, data: dict) -> PromptWatch:
    nodes = data.get("nodes") if isinstance(data.get("nodes"), list) else []
    return replace(watch, started=True, progress=prog.on_cached(watch.progress, nodes))


def _on_executing(watch: PromptWatch, data: dict) -> PromptWatch:
    node = data.get("node")
    if node is None and data.get("prompt_id") is None:
        return watch
    return replace(watch, started=True, progress=prog.on_executing(watch.progress, node))


def _on_progress(watch: PromptWatch, data: dict) -> PromptWatch:
    try:
        value, maximum = float(data.get("value", 0)), float(data.get("max", 0))
    except (TypeError, ValueError, OverflowError):
        return watch
    if not (math.isfinite(value) and math.isfinite(maximum)):
        return watch
    node = data.get("node")
    return replace(watch, progress=prog.on_node_progress(watch.progress, node, value, maximum))


def _on_executed(watch: PromptWatch, data: dict) -> PromptWatch:
    node = data.get("node")
    if node is None:
        return watch
    executed = dict(watch.executed)
    executed[str(node)] = data.get("output")
    return replace(watch, executed=executed)


def _on_success(watch: PromptWatch, data: dict) -> PromptWatch:
    return replace(watch, outcome=SUCCEEDED, progress=prog.on_success(watch.progress))


def _on_error(watch: PromptWatch, data: dict) -> PromptWatch:
    return replace(watch, outcome=FAILED, error=dict(data))


def _on_interrupted(watch: PromptWatch, data: dict) -> PromptWatch:
    return replace(watch, outcome=INTERRUPTED, error=dict(data))


_HANDLERS = {
    "execution_start": _on_start,
    "execution_cached": _on_cached,
    "executing": _on_executing,
    "progress": _on_progress,
    "executed": _on_executed,
    "execution_success": _on_success,
    "execution_error": _on_error,
    "execution_interrupted": _on_interrupted,
}


def apply_history(watch: PromptWatch, entry: Mapping[str, Any]) -> PromptWatch:
    """Recover the outcome from a ``/history`` entry (after frames were lost on a reconnect)."""
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), Mapping) else {}
    watch = replace(watch, executed={**dict(outputs), **dict(watch.executed)})
    for message in messages:
        if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
            event = Event(str(message[0]), {**message[1], "prompt_id": watch.prompt_id})
            if event.type in ("execution_error", "execution_interrupted", "execution_success"):
                watch = apply_event(watch, event)
    if not watch.done and status.get("status_str") == "success":
        watch = _on_success(watch, {})
    elif not watch.done and status.get("completed") is False and status.get("status_str") == "error":
        watch = _on_error(watch, {})
    return watch


def describe_failure(watch: PromptWatch) -> tuple[str, list[str]]:
    """A failed or interrupted prompt -> (message naming node, type and exception; traceback tail)."""
    data = watch.error
    node = data.get("node_id")
    where = watch.describe_node(node) if node else "a node"
    if node and data.get("node_type"):
        where = f"node {node} ({data['node_type']})"
    if watch.outcome == INTERRUPTED:
        return f"ComfyUI interrupted the prompt at {where}", []
    kind = data.get("exception_type") or "error"
    text = str(data.get("exception_message") or "no message").strip()
    trace = data.get("traceback") if isinstance(data.get("traceback"), list) else []
    return f"ComfyUI failed at {where}: {kind}: {text}", [str(line).rstrip() for line in trace[-5:]]
