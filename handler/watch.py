"""What one prompt has done so far, folded from its websocket events (pure, no I/O).

The outcome is final at ``execution_success`` / ``execution_error`` / ``execution_interrupted``: the
worker need not wait for the ``executing`` ``node: null`` frame that follows ComfyUI's clean-up
(~200 ms on a GPU). Outputs are named by the ``executed`` frames of output nodes.

The *tail* of a prompt (:func:`in_tail`) begins once every node that reports progress (a sampler, an
upscaler: a node type seen sending ``progress`` frames, or named like one) is done: what is left is
decoding, encoding and saving, which send none. A worker sends no progress webhook in the tail, so the
final webhook never waits behind one.
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
    reporting: frozenset[str] = frozenset()                     # node ids that sent progress frames

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
    progress = prog.on_node_progress(watch.progress, node, value, maximum)
    current = progress.current
    reporting = watch.reporting | {current} if current in watch.classes else watch.reporting
    return replace(watch, progress=progress, reporting=reporting)


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


PROGRESS_MARKERS = ("Sampler", "Upscale")     # class names of node types that send progress frames


def reports_progress(class_type: str, known: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether a node of this type sends ``progress`` frames: seen doing so (``known``), or named like
    a sampler or an upscaler."""
    return class_type in known or any(marker in class_type for marker in PROGRESS_MARKERS)


def in_tail(watch: PromptWatch, known: frozenset[str] | set[str] = frozenset()) -> bool:
    """Every node that reports progress is done, and there was at least one: only silent nodes (decode,
    encode, save) are left (pure). A workflow with no such node has no tail."""
    if not watch.started:
        return False
    reporting = [n for n, cls in watch.classes.items() if n in watch.reporting or reports_progress(cls, known)]
    return bool(reporting) and all(n in watch.progress.done for n in reporting)


def reporting_types(watch: PromptWatch) -> set[str]:
    """The node types this prompt saw sending progress frames (to carry over to the next prompts)."""
    return {watch.classes[n] for n in watch.reporting if n in watch.classes}


def apply_history(watch: PromptWatch, entry: Mapping[str, Any]) -> PromptWatch:
    """Recover the outcome from a ``/history`` entry (after frames were lost on a reconnect)."""
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), Mapping) else {}
    # a prompt in /history was taken up by ComfyUI, whether or not its execution_start frame was seen
    watch = replace(watch, started=True, executed={**dict(outputs), **dict(watch.executed)})
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
