"""Every task shape GmAnimato has served, parsed into one :class:`Job` (pure, no I/O).

Shapes (contract §1):

* current (since ``1ef5670``): ``{"id": "local-<videoId>", "input": {"images", "workflow",
  "node_weights", "callback_url"?}}``; the video id is ``id`` minus ``local-``.
* early (``ed66ae4``, one hour in December 2025): a flat object whose ``id`` is the video id, with
  ``job_id``, ``original_image_url`` and ``callback_url``; it runs only when it carries a ``workflow``
  (the original worker's README variant), its image uploaded as ``<videoId>.png``.

A task whose ids can be read but whose content is unusable raises :class:`TaskError` carrying those
ids, so the worker can still send GmAnimato a ``failed`` webhook naming the fault.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from handler.errors import InputError

JOB_PREFIX = "local-"


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


def parse_task(task: Any, api_url: str, callback_mode: str = "task") -> Job:
    """Turn a claimed task (decoded JSON) into a :class:`Job`, or raise :class:`TaskError`."""
    if not isinstance(task, dict):
        raise TaskError(f"task is not a JSON object (got {type(task).__name__})")
    if "input" in task:
        return _parse_current(task, api_url, callback_mode)
    if "job_id" in task or "original_image_url" in task:
        return _parse_early(task, api_url, callback_mode)
    job_id = task.get("id") if isinstance(task.get("id"), str) else ""
    raise TaskError("task has neither an 'input' object nor the early flat fields", job_id=job_id)


def _parse_current(task: dict, api_url: str, callback_mode: str) -> Job:
    job_id = _job_id(task.get("id"))
    body = task["input"]
    video_id = _video_id(job_id, body)
    fallback = callback_for(api_url, video_id) if video_id else ""
    ids = {"job_id": job_id, "video_id": video_id, "callback_url": fallback}
    if not isinstance(body, dict):
        raise TaskError(f"task input must be an object, got {type(body).__name__}", **ids)
    callback = _callback(body.get("callback_url"), fallback, callback_mode, ids)
    ids["callback_url"] = callback
    if not video_id:
        raise TaskError(f"task id {job_id!r} does not start with {JOB_PREFIX!r} and no image names "
                        "the video", **ids)
    return Job(job_id=job_id, video_id=video_id, workflow=_workflow(body.get("workflow"), ids),
               images=_images(body.get("images"), ids),
               node_weights=_node_weights(body.get("node_weights"), ids),
               callback_url=callback, shape="current")


def _parse_early(task: dict, api_url: str, callback_mode: str) -> Job:
    video_id = task.get("id")
    if not isinstance(video_id, str) or not video_id:
        raise TaskError("early-shape task has no video id in 'id'")
    job_id = task.get("job_id") if isinstance(task.get("job_id"), str) and task["job_id"] else \
        JOB_PREFIX + video_id
    ids = {"job_id": job_id, "video_id": video_id, "callback_url": callback_for(api_url, video_id)}
    callback = _callback(task.get("callback_url"), ids["callback_url"], callback_mode, ids)
    ids["callback_url"] = callback
    if task.get("workflow") is None:
        raise TaskError("task has no workflow", **ids)
    image_url = task.get("original_image_url")
    if not isinstance(image_url, str) or not image_url:
        raise TaskError("task has no original_image_url to use as the input image", **ids)
    return Job(job_id=job_id, video_id=video_id, workflow=_workflow(task["workflow"], ids),
               images=(InputFile(f"{video_id}.png", image_url),), node_weights={},
               callback_url=callback, shape="early")


def _job_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"task has no job id: 'id' must be a non-empty string, got {value!r}")
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
                if name.endswith(suffix) and len(name) > len(suffix):
                    return name[: -len(suffix)]
    return ""


def _callback(value: Any, fallback: str, mode: str, ids: dict) -> str:
    if mode == "derive" or value is None or value == "":
        return fallback
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)
    except ValueError:
        ok = False
    if not ok:
        raise TaskError(f"task callback_url is not an http(s) URL: {value!r}", **ids)
    return value


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
            raise TaskError(f"task images[{index}].name must be a plain file name, got {name!r}", **ids)
        if not isinstance(source, str) or not source.strip():
            raise TaskError(f"task images[{index}].image ({name}) is empty or not a string", **ids)
        files.append(InputFile(name, source))
    return tuple(files)


def _is_plain_filename(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name \
        and "\x00" not in name


def _node_weights(value: Any, ids: dict) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TaskError(f"task node_weights must be an object, got {type(value).__name__}", **ids)
    weights = {}
    for node_id, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise TaskError(f"task node_weights[{node_id!r}] must be a number >= 0, got {weight!r}", **ids)
        weights[str(node_id)] = float(weight)
    return weights
