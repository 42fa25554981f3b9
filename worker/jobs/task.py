"""Every task shape GmAnimato has served, parsed into one :class:`Job` (pure, no I/O).

Shapes (contract §1):

* current (since ``1ef5670``): ``{"id": "local-<videoId>", "input": {"images", "workflow",
  "node_weights", "callback_url"?}}``; the video id is ``id`` minus ``local-``.
* early (``ed66ae4``, one hour in December 2025): a flat object whose ``id`` is the video id, with
  ``job_id``, ``original_image_url`` and ``callback_url``; it runs only when it carries a ``workflow``
  (the original worker's README variant), its image uploaded as ``<videoId>.png``.

A task whose ids can be read but whose content is unusable raises :class:`TaskError` carrying those
ids, so the worker can still send GmAnimato a ``failed`` webhook naming the fault.

Everything here is hostile until checked (:class:`TaskRules`): job and video ids must look like the
ids GmAnimato issues (letters, digits, ``-``, ``_``) before they go into a URL, a key or a path; a
``callback_url`` is used only on ``api.url``'s origin or a host in ``api.callback_hosts`` (else the
derived URL, with a note saying why); nesting is bounded; ``jobs.allowed_node_types`` limits the
workflow's node types.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from handler.errors import InputError
from handler.untrusted import display_url, safe_text, url_origin

JOB_PREFIX = "local-"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,200}")
MAX_DEPTH = 64                  # a real task nests 5 levels; a deeper one is refused before it is walked
MAX_NAME_LENGTH = 255


def is_issued_id(value: Any) -> bool:
    """Whether ``value`` looks like an id GmAnimato issues (cuid, ``local-<cuid>``): safe in a URL or key."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class TaskRules:
    """What a task may ask for, from the configuration."""

    api_url: str
    callback_mode: str = "task"             # task | derive
    callback_hosts: tuple[str, ...] = ()     # hosts (host or host:port) besides api.url's origin
    allowed_node_types: frozenset[str] = frozenset()   # empty: any node type

    @classmethod
    def from_config(cls, config: Any) -> "TaskRules":
        return cls(config.api.url, config.api.callback, tuple(config.api.callback_hosts),
                   frozenset(config.jobs.allowed_node_types))


@dataclass(frozen=True)
class InputFile:
    """One file for ComfyUI's input folder: its exact name and where its bytes come from."""

    name: str
    source: str = field(repr=False)   # data URI, bare base64, or an http(s) URL


@dataclass(frozen=True)
class Job:
    job_id: str
    video_id: str
    workflow: Mapping[str, Any] = field(repr=False)
    images: tuple[InputFile, ...]
    node_weights: Mapping[str, float]
    callback_url: str
    shape: str = "current"
    notes: tuple[str, ...] = ()     # warnings about the task for the log (a callback_url not used, ...)


class TaskError(InputError):
    """The task cannot run. ``job_id``/``video_id``/``callback_url`` are set when they were readable."""

    def __init__(self, message: str, job_id: str = "", video_id: str = "", callback_url: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.video_id = video_id
        self.callback_url = callback_url

    @property
    def reportable(self) -> bool:
        return bool(self.job_id and self.callback_url)


def callback_for(api_url: str, video_id: str) -> str:
    """The webhook URL GmAnimato serves for a video: ``<api base>/api/i2v-webhook/<videoId>``."""
    return f"{api_url.rstrip('/')}/api/i2v-webhook/{video_id}"


def parse_task(task: Any, api_url: "str | TaskRules", callback_mode: str = "task") -> Job:
    """Turn a claimed task (decoded JSON) into a :class:`Job`, or raise :class:`TaskError`."""
    rules = api_url if isinstance(api_url, TaskRules) else TaskRules(api_url, callback_mode)
    if not isinstance(task, dict):
        raise TaskError(f"task is not a JSON object (got {type(task).__name__})")
    too_deep = nesting_exceeds(task, MAX_DEPTH)
    if "input" in task:
        job = _parse_current(task, rules, too_deep)
    elif "job_id" in task or "original_image_url" in task:
        job = _parse_early(task, rules, too_deep)
    else:
        raise TaskError("task has neither an 'input' object nor the early flat fields",
                        **salvage_ids(task, rules.api_url))
    _check_node_types(job, rules)
    return job


def salvage_ids(task: Any, api_url: str) -> dict:
    """The ids of a task that cannot be read whole, for its ``failed`` webhook: only a ``local-<id>`` in
    ``id`` that passes :func:`is_issued_id` counts (TaskError keyword arguments)."""
    job_id = task.get("id") if isinstance(task, dict) else None
    if not is_issued_id(job_id) or not job_id.startswith(JOB_PREFIX) or job_id == JOB_PREFIX:
        return {}
    video_id = job_id[len(JOB_PREFIX):]
    return {"job_id": job_id, "video_id": video_id, "callback_url": callback_for(api_url, video_id)}


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects deeper than ``limit`` (iterative: no recursion to blow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _refuse_deep(too_deep: bool, ids: dict) -> None:
    if too_deep:
        raise TaskError(f"task nests deeper than {MAX_DEPTH} levels; no GmAnimato task does", **ids)


def _parse_current(task: dict, rules: TaskRules, too_deep: bool) -> Job:
    job_id = _job_id(task.get("id"))
    body = task["input"]
    video_id = _video_id(job_id, body)
    fallback = callback_for(rules.api_url, video_id) if video_id else ""
    ids = {"job_id": job_id, "video_id": video_id, "callback_url": fallback}
    _refuse_deep(too_deep, ids)
    if not isinstance(body, dict):
        raise TaskError(f"task input must be an object, got {type(body).__name__}", **ids)
    callback, notes = _callback(body.get("callback_url"), fallback, rules, ids)
    ids["callback_url"] = callback
    if not video_id:
        raise TaskError(f"task id {safe_text(job_id, 80)!r} does not start with {JOB_PREFIX!r} and no "
                        "image names the video", **ids)
    return Job(job_id=job_id, video_id=video_id, workflow=_workflow(body.get("workflow"), ids),
               images=_images(body.get("images"), ids),
               node_weights=_node_weights(body.get("node_weights"), ids),
               callback_url=callback, shape="current", notes=notes)


def _parse_early(task: dict, rules: TaskRules, too_deep: bool) -> Job:
    video_id = task.get("id")
    if not is_issued_id(video_id):
        raise TaskError(f"early-shape task has no usable video id in 'id' (got {_shown(video_id)})")
    ids = {"job_id": JOB_PREFIX + video_id, "video_id": video_id,
           "callback_url": callback_for(rules.api_url, video_id)}
    job_id = task.get("job_id")
    if job_id not in (None, "") and not is_issued_id(job_id):
        raise TaskError(f"task job_id {_shown(job_id)} is not an id GmAnimato issues "
                        "(letters, digits, '-', '_')", **ids)
    ids["job_id"] = job_id or ids["job_id"]
    _refuse_deep(too_deep, ids)
    callback, notes = _callback(task.get("callback_url"), ids["callback_url"], rules, ids)
    ids["callback_url"] = callback
    if task.get("workflow") is None:
        raise TaskError("task has no workflow", **ids)
    image_url = task.get("original_image_url")
    if not isinstance(image_url, str) or not image_url:
        raise TaskError("task has no original_image_url to use as the input image", **ids)
    return Job(job_id=ids["job_id"], video_id=video_id, workflow=_workflow(task["workflow"], ids),
               images=(InputFile(f"{video_id}.png", image_url),), node_weights={},
               callback_url=callback, shape="early", notes=notes)


def _shown(value: Any) -> str:
    return repr(safe_text(value, 80)) if isinstance(value, str) else type(value).__name__


def _check_node_types(job: Job, rules: TaskRules) -> None:
    if not rules.allowed_node_types:
        return
    for node_id, node in job.workflow.items():
        if node["class_type"] not in rules.allowed_node_types:
            raise TaskError(f"task workflow node {safe_text(node_id, 40)} uses node type "
                            f"{safe_text(node['class_type'], 80)!r}, which jobs.allowed_node_types does not "
                            "allow on this worker", job.job_id, job.video_id, job.callback_url)


def _job_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"task has no job id: 'id' must be a non-empty string, got {_shown(value)}")
    if not is_issued_id(value):
        raise TaskError(f"task id {_shown(value)} is not an id GmAnimato issues (letters, digits, '-', '_'); "
                        "it is not used in any URL, so this job cannot be reported")
    return value


def _video_id(job_id: str, body: Any) -> str:
    """``local-<videoId>`` -> ``<videoId>``; without the prefix, the first image's name tells."""
    if job_id.startswith(JOB_PREFIX) and len(job_id) > len(JOB_PREFIX):
        return job_id[len(JOB_PREFIX):]
    images = body.get("images") if isinstance(body, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict):
        name = images[0].get("name")
        if isinstance(name, str):
            for suffix in ("_first.png", ".png"):
                if name.endswith(suffix) and is_issued_id(name[: -len(suffix)]):
                    return name[: -len(suffix)]
    return ""


def _callback(value: Any, fallback: str, rules: TaskRules, ids: dict) -> tuple[str, tuple[str, ...]]:
    """The URL the job's webhooks go to, and a note when the task's own was set aside."""
    if rules.callback_mode == "derive" or value is None or value == "":
        return fallback, ()
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)
    except ValueError:
        ok = False
    try:
        ok = ok and bool(url_origin(value))
    except ValueError:
        ok = False
    if not ok:
        raise TaskError(f"task callback_url is not an http(s) URL: {_shown(value)}", **ids)
    if callback_allowed(value, rules):
        return value, ()
    return fallback, (f"callback_url {display_url(value)} is neither on api.url's origin nor in "
                      f"api.callback_hosts; sending this job's webhooks to {display_url(fallback)}",)


def callback_allowed(url: str, rules: TaskRules) -> bool:
    """Same origin as ``api.url`` (scheme, host, port), or a host listed in ``api.callback_hosts``; both
    read as the HTTP library will connect (:func:`handler.untrusted.url_origin`)."""
    try:
        scheme, host, port = url_origin(url)
        if (scheme, host, port) == url_origin(rules.api_url):
            return True
    except ValueError:
        return False
    listed = {h.strip().lower() for h in rules.callback_hosts}
    return host in listed or f"{host}:{port}" in listed


def _workflow(value: Any, ids: dict) -> dict:
    if not isinstance(value, dict) or not value:
        kind = "empty" if value in ({}, None) else type(value).__name__
        raise TaskError(f"task workflow must be a non-empty ComfyUI API-format object, got {kind}", **ids)
    for node_id, node in value.items():
        if not isinstance(node, dict):
            raise TaskError(f"task workflow node {node_id!r} is not an object", **ids)
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise TaskError(f"task workflow node {node_id!r} has no class_type (is it a UI-format "
                            "workflow? GmAnimato must send the API format)", **ids)
        if not isinstance(node.get("inputs", {}), dict):
            raise TaskError(f"task workflow node {node_id!r} has inputs that are not an object", **ids)
    return value


def _images(value: Any, ids: dict) -> tuple[InputFile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TaskError(f"task images must be a list, got {type(value).__name__}", **ids)
    files = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise TaskError(f"task images[{index}] is not an object", **ids)
        name, source = item.get("name"), item.get("image")
        if not isinstance(name, str) or not _is_plain_filename(name):
            raise TaskError(f"task images[{index}].name must be a plain file name, got {_shown(name)}", **ids)
        if not isinstance(source, str) or not source.strip():
            raise TaskError(f"task images[{index}].image ({name}) is empty or not a string", **ids)
        files.append(InputFile(name, source))
    return tuple(files)


def _is_plain_filename(name: str) -> bool:
    return bool(name) and len(name) <= MAX_NAME_LENGTH and name not in (".", "..") and "/" not in name \
        and "\\" not in name and name.isprintable() and name.strip() == name


def _node_weights(value: Any, ids: dict) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TaskError(f"task node_weights must be an object, got {type(value).__name__}", **ids)
    weights = {}
    for node_id, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e6:
            raise TaskError(f"task node_weights[{_shown(node_id)}] must be a number from 0 to 1000000, got "
                            f"{_shown(weight) if not isinstance(weight, (int, float)) else str(weight)[:40]}",
                            **ids)
        weights[str(node_id)] = float(weight)
    return weights
