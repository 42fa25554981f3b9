"""One ComfyUI execution, top to bottom: inputs in, prompt queued, events followed, outputs out.

Knows nothing of GmAnimato, polling or processes: the caller gives an :class:`ExecutionRequest` (the
workflow, its input files, the prompt id it chose) and :class:`ExecutionDeps` (the ComfyUI client, the
output store, a progress callback, a step callback and an abort check) and gets a :class:`Result`, or a
:class:`~handler.errors.WorkerError` that says what went wrong and whether retrying can help.

``on_step`` is called, and must have returned, before the step it names is acted on:
``inputs_uploaded`` after the uploads, ``prompt_queueing`` (with the prompt id, client id and ComfyUI
address) just before ``POST /prompt``. It also names what ComfyUI does with the prompt, as it happens:
``execution_started`` (ComfyUI took it up: a prompt queued behind another waits for this),
``progress_tail`` (every node that reports progress is done, see :func:`handler.watch.in_tail`) and
``execution_ended`` (with ``outcome``: the GPU is free for the next prompt; outputs are fetched and
stored after it). :func:`resume_job` picks up a prompt queued by an earlier
process: it follows the prompt to its end (or reads its history) under the same client id.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from handler import outputs as out
from handler import watch as w
from handler.comfy_client import ComfyClient, node_error_lines
from handler.comfy_events import EventStream
from handler import media
from handler.errors import ComfyUnavailable, ExecutionFailed, NoVideoProduced, PermanentError
from handler.inputs import InputRules, load_input
from handler.storage import OutputStore, store_with_retry

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict, bool], None]   # (progress snapshot, node changed)
StepCallback = Callable[[str, dict], None]        # (step name, its facts), before the step is acted on
AbortCheck = Callable[[], "str | None"]           # a reason to stop now, or None

RECONNECT_DELAYS = (0.2, 0.5, 1.0, 1.5)           # about 3 s of tries before ComfyUI counts as gone
HISTORY_WAIT = 3.0                                # /history can be {} for a moment after success
SILENCE_CHECK = 10.0                              # no frame this long: check /history and /queue
QUEUE_WAIT_FACTOR = 2                             # a prompt waits in the queue at most this x job_timeout


@dataclass(frozen=True)
class ExecutionRequest:
    workflow: Mapping[str, Any] = field(repr=False)
    inputs: tuple = ()                    # objects with .name and .source (worker.jobs.task.InputFile)
    node_weights: Mapping[str, float] = field(default_factory=dict)
    key_prefix: str = ""                  # S3 key prefix: the job id
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    label: str = ""                       # for log lines and messages


@dataclass
class ExecutionDeps:
    comfy: ComfyClient
    store: OutputStore
    session: requests.Session
    on_progress: ProgressCallback = lambda snapshot, changed: None
    on_step: StepCallback = lambda step, data: None
    abort: AbortCheck = lambda: None              # stop at once: ComfyUI went away, or a stop
    stop_requested: AbortCheck = lambda: None     # a stop only (storing fetched outputs needs no ComfyUI)
    job_timeout: float = 1500.0
    storage_retry_for: float = 120.0
    client_id: str = field(default_factory=lambda: f"gmanimato-worker-{uuid.uuid4().hex[:12]}")
    receive_tick: float = 0.25
    input_rules: InputRules = field(default_factory=InputRules)
    progress_types: set[str] = field(default_factory=set)   # node types seen reporting progress (shared)


@dataclass(frozen=True)
class Result:
    prompt_id: str
    files: list[dict]
    seconds: float


def run_job(request: ExecutionRequest, deps: ExecutionDeps) -> Result:
    """Run ``request`` on ComfyUI and store its outputs; raises a WorkerError on any failure."""
    started = time.monotonic()
    try:
        upload_inputs(request, deps)
        deps.on_step("inputs_uploaded", {})
        stream = EventStream(deps.comfy.ws_url, deps.client_id)
        stream.connect()
    except ComfyUnavailable as exc:
        exc.before_prompt = True        # nothing ran yet: the caller may retry once ComfyUI is back
        raise
    with stream:
        deps.on_step("prompt_queueing", {"prompt_id": request.prompt_id, "client_id": deps.client_id,
                                         "comfy_url": deps.comfy.base_url})
        try:
            node_errors = deps.comfy.queue_prompt(request.workflow, deps.client_id, request.prompt_id)
        except ComfyUnavailable as exc:
            exc.before_prompt = "connection refused" in exc.message
            raise
        warn_partial(request, node_errors)
        watch = follow_prompt(stream, w.start_watch(request.prompt_id, request.workflow,
                                                    request.node_weights), deps)
    refs = confirm_outputs(watch, deps)
    files = store_outputs(refs, request, deps, node_errors)
    return Result(prompt_id=request.prompt_id, files=files, seconds=time.monotonic() - started)


def resume_job(request: ExecutionRequest, deps: ExecutionDeps) -> Result:
    """Pick up ``request.prompt_id``, queued earlier under ``deps.client_id`` by a process that died:
    follow it to its end (no GPU work is repeated) and store its outputs. A prompt ComfyUI no longer
    knows raises :class:`ComfyUnavailable` (run the job again)."""
    started = time.monotonic()
    stream = EventStream(deps.comfy.ws_url, deps.client_id)
    stream.connect()
    with stream:
        watch = catch_up(w.start_watch(request.prompt_id, request.workflow, request.node_weights), deps)
        if not watch.done:
            watch = follow_prompt(stream, watch, deps)
    if watch.outcome != w.SUCCEEDED:
        raise ExecutionFailed(*w.describe_failure(watch))
    files = store_outputs(confirm_outputs(watch, deps), request, deps, {})
    return Result(prompt_id=request.prompt_id, files=files, seconds=time.monotonic() - started)


def upload_inputs(request: ExecutionRequest, deps: ExecutionDeps) -> None:
    for item in request.inputs:
        stop_if_aborted(deps, "before uploading inputs")
        data = load_input(item.name, item.source, deps.session, deps.input_rules)
        deps.comfy.upload_input(item.name, data)
        log.debug("%s: uploaded input %s (%d bytes)", request.label, item.name, len(data))


def warn_partial(request: ExecutionRequest, node_errors: Mapping[str, Any]) -> None:
    for line in node_error_lines(node_errors):
        log.warning("%s: ComfyUI accepted the prompt but will skip an output: %s", request.label, line)


def follow_prompt(stream: EventStream, watch: w.PromptWatch, deps: ExecutionDeps) -> w.PromptWatch:
    """Fold events until the prompt succeeds; raise on error, interrupt, abort, timeout or loss.
    ``job_timeout`` counts from the moment ComfyUI takes the prompt up; before that, a prompt queued
    behind another (that may itself run up to ``job_timeout``) waits at most twice as long."""
    deadline = time.monotonic() + deps.job_timeout * (1 if watch.started else QUEUE_WAIT_FACTOR)
    last_event = time.monotonic()
    timed_from_start = watch.started
    while not watch.done:
        if watch.started and not timed_from_start:
            deadline, timed_from_start = time.monotonic() + deps.job_timeout, True
        check_abort(watch, deps, deadline)
        try:
            event = stream.receive(deps.receive_tick)
        except ComfyUnavailable:
            watch = recover_stream(stream, watch, deps)
            last_event = time.monotonic()
            continue
        if event is not None:
            last_event = time.monotonic()
            watch = report_progress(watch, w.apply_event(watch, event), deps)
        elif time.monotonic() - last_event > SILENCE_CHECK:
            watch = catch_up(watch, deps)      # frames can be lost (reconnects): ask ComfyUI directly
            last_event = time.monotonic()
    if watch.outcome != w.SUCCEEDED:
        raise ExecutionFailed(*w.describe_failure(watch))
    return watch


def stop_if_aborted(deps: ExecutionDeps, where: str) -> None:
    reason = deps.abort()
    if reason:
        raise ComfyUnavailable(f"{reason} {where}")


def check_abort(watch: w.PromptWatch, deps: ExecutionDeps, deadline: float) -> None:
    reason = deps.abort()
    if reason:
        deps.comfy.cancel(watch.prompt_id)
        raise ComfyUnavailable(f"{reason} while running {watch.describe_node(watch.current_node)}")
    if time.monotonic() > deadline:
        deps.comfy.cancel(watch.prompt_id)
        if not watch.started:
            raise ExecutionFailed(f"prompt waited in ComfyUI's queue longer than "
                                  f"{deps.job_timeout * QUEUE_WAIT_FACTOR:g} s ({QUEUE_WAIT_FACTOR} x "
                                  "comfy.job_timeout) and was cancelled")
        raise ExecutionFailed(f"prompt ran longer than {deps.job_timeout:g} s (comfy.job_timeout) and was "
                              f"interrupted at {watch.describe_node(watch.current_node)}")


MAX_PROGRESS_TYPES = 256


def report_progress(old: w.PromptWatch, new: w.PromptWatch, deps: ExecutionDeps) -> w.PromptWatch:
    """Tell the caller what changed: the prompt started, its tail began, its progress moved, it ended."""
    if new.started and not old.started:
        deps.on_step("execution_started", {})
    if new.reporting != old.reporting and len(deps.progress_types) < MAX_PROGRESS_TYPES:
        deps.progress_types.update(w.reporting_types(new))
    if new.progress != old.progress and not new.done:
        if not w.in_tail(old, deps.progress_types) and w.in_tail(new, deps.progress_types):
            deps.on_step("progress_tail", {})
        deps.on_progress(new.progress.snapshot(), new.current_node != old.current_node)
    if new.done and not old.done:
        deps.on_step("execution_ended", {"outcome": new.outcome})
    return new


def recover_stream(stream: EventStream, watch: w.PromptWatch, deps: ExecutionDeps) -> w.PromptWatch:
    """The socket dropped: reconnect (briefly), then learn from /history or /queue what we missed."""
    where = watch.describe_node(watch.current_node)
    for delay in RECONNECT_DELAYS:
        time.sleep(delay)
        reason = deps.abort()
        if reason:
            raise ComfyUnavailable(f"{reason} while running {where}")
        try:
            stream.connect()
        except ComfyUnavailable:
            continue
        return catch_up(watch, deps)
    reason = deps.abort()
    raise ComfyUnavailable(f"{reason or f'ComfyUI at {deps.comfy.base_url} went away'} while running {where}")


def catch_up(watch: w.PromptWatch, deps: ExecutionDeps) -> w.PromptWatch:
    entry, known = deps.comfy.find_prompt(watch.prompt_id)
    if not known:
        raise ComfyUnavailable(f"ComfyUI at {deps.comfy.base_url} does not know the prompt (it restarted "
                               f"and lost it) while running {watch.describe_node(watch.current_node)}")
    if entry is not None:
        return report_progress(watch, w.apply_history(watch, entry), deps)
    log.debug("prompt %s: still queued or running", watch.prompt_id)
    return watch


def confirm_outputs(watch: w.PromptWatch, deps: ExecutionDeps) -> list[out.OutputRef]:
    """Output files named by the ``executed`` frames, confirmed (or completed) by ``/history``.

    ``/history`` can still be ``{}`` just after ``execution_success``: when the frames already name a
    video it is asked once, otherwise polled for up to ``HISTORY_WAIT`` seconds."""
    named_video = any(ref.is_video for ref in out.collect_outputs(watch.executed, None))
    try:
        entry = deps.comfy.history(watch.prompt_id)
    except ComfyUnavailable:
        if not named_video:
            raise
        entry = None        # ComfyUI went away after the prompt (the next one crashed it): the frames say
    deadline = time.monotonic() + HISTORY_WAIT
    while entry is None and not named_video and time.monotonic() < deadline:
        time.sleep(0.05)
        entry = deps.comfy.history(watch.prompt_id)
    history_outputs = entry.get("outputs") if isinstance(entry, dict) else None
    return out.collect_outputs(watch.executed, history_outputs if isinstance(history_outputs, dict) else None)


class UnusableOutput(PermanentError):
    """An output file that must not be delivered as the video (empty, or not an MP4/WebM)."""


def store_outputs(refs: list[out.OutputRef], request: ExecutionRequest, deps: ExecutionDeps,
                  node_errors: Mapping[str, Any]) -> list[dict]:
    """Store every safe output (videos first), streamed from ComfyUI; a file with an unsafe name or a
    ``type`` other than ``output``, or a "video" that is empty or not MP4/WebM, is set aside and named
    in the log. No video left: :class:`NoVideoProduced` saying why."""
    kept, set_aside = out.screen(refs)
    reasons = [f"{ref.shown}: {why}" for ref, why in set_aside]
    for line in reasons:
        log.warning("%s: output set aside, not fetched: %s", request.label, line)
    if not any(ref.is_video for ref in kept):
        return _no_video(refs, reasons, node_errors)
    files: list[dict] = []
    for ref in kept:
        # the prompt is done: ComfyUI going away now (the next prompt may crash it) does not end this
        # job; its files wait in the output folder, and store_with_retry tries again until it is back
        reason = deps.stop_requested()
        if reason:
            raise ComfyUnavailable(f"{reason} before storing {ref.delivery_name}")
        try:
            files.append(store_with_retry(deps.store, request.key_prefix, ref.delivery_name,
                                          _opener(deps, ref), deps.storage_retry_for, deps.stop_requested,
                                          content_type=lambda body: media.content_type(body.head)))
        except UnusableOutput as exc:
            log.warning("%s: output set aside: %s", request.label, exc.message)
            reasons.append(exc.message)
            continue
        log.debug("%s: stored %s", request.label, ref.delivery_name)
    if not any(entry["filename"].endswith(out.VIDEO_EXTENSIONS) for entry in files):
        return _no_video(refs, reasons, node_errors)
    return files


def _opener(deps: ExecutionDeps, ref: out.OutputRef):
    """Opens the file's stream; a video must start like an MP4/WebM."""
    @contextmanager
    def opened():
        with deps.comfy.open_output(ref.filename, ref.subfolder, ref.type) as body:
            if ref.is_video and media.sniff(body.head) not in media.VIDEO_KINDS:
                raise UnusableOutput(f"{ref.shown} is not an MP4/WebM video ({media.describe_head(body.head)})")
            yield body
    return opened


def _no_video(refs: list[out.OutputRef], reasons: list[str], node_errors: Mapping[str, Any]) -> list[dict]:
    skipped = node_error_lines(node_errors)
    message = out.describe_missing_video([r for r in refs if r.type == "output"]) if not reasons else \
        "workflow produced no deliverable video: " + "; ".join(reasons[:5])
    raise NoVideoProduced(message + (f" (ComfyUI skipped outputs: {'; '.join(skipped)})" if skipped else ""),
                          reasons + skipped)
