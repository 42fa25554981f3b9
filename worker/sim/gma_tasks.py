"""Jobs and task payloads of the simulated GmAnimato.

The workflow templates in ``data/template-*.json`` are the real server's answers captured in
``shared/gmanimato-tasks/`` with the image names replaced by the builders' placeholders
(``{image_name}``, ``{first_image_name}``, ``{last_image_name}``). :func:`build_video` turns a job spec
(the body of ``POST /sim/jobs``) into a ``videos`` row; :func:`current_task` and :func:`early_task` build
what ``GET /api/worker/task`` returns for it. A spec's ``task_patch`` / ``input_patch`` (hostile tests)
change only the JSON served at the claim: :func:`apply_task_patches`.
"""
from __future__ import annotations

import base64
import copy
import functools
import json
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DATA_DIR = Path(__file__).with_name("data")
TEMPLATE_NAMES = ("i2v", "i2v-720p", "fl2v")
SHAPES = ("current", "early")
IMAGE_MODES = ("base64", "url")
CLAIM_ERRORS = ("image_fetch", "no_workflow")
LOOPBACK_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SPEC_KEYS = frozenset({"template", "shape", "image_mode", "workflow", "patch", "with_workflow", "video_id",
                       "prompt", "seed", "node_weights", "claim_error", "is_local_job", "status",
                       "image_b64", "last_image_b64", "task_patch", "input_patch"})


class SpecError(ValueError):
    """A job spec that cannot be turned into a video (answered 400 by ``POST /sim/jobs``)."""


class ClaimError(Exception):
    """The task route failed after the claim; ``str()`` is the real server's ``String(err)`` text."""


@functools.lru_cache(maxsize=None)
def _template_text(name: str) -> str:
    return (DATA_DIR / f"template-{name}.json").read_text(encoding="utf-8")


def load_template(name: str) -> dict[str, Any]:
    """A fresh copy of template ``name``: ``{"kind": "i2v"|"fl2v", "workflow": …, "node_weights": …}``."""
    if name not in TEMPLATE_NAMES:
        raise SpecError(f"template: must be one of {', '.join(TEMPLATE_NAMES)}, got {name!r}")
    return json.loads(_template_text(name))


@functools.lru_cache(maxsize=None)
def default_png() -> bytes:
    """The 64×48 input image of the captured tasks."""
    return (DATA_DIR / "input.png").read_bytes()


@functools.lru_cache(maxsize=None)
def generated_png(width: int = 16, height: int = 12, rgb: tuple[int, int, int] = (40, 90, 200)) -> bytes:
    """A tiny solid-colour PNG (the default last frame of FL2V jobs, so first and last differ)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def image_names(video_id: str, kind: str) -> list[str]:
    """Input file names the task lists: ``<id>.png``, or ``<id>_first.png`` and ``<id>_last.png``."""
    return [f"{video_id}_first.png", f"{video_id}_last.png"] if kind == "fl2v" else [f"{video_id}.png"]


def build_video(spec: dict[str, Any], video_id: str, seq: int, created_at: str, seed: int) -> dict[str, Any]:
    """A new ``videos`` row (``in_queue`` local job unless the spec says otherwise) with its ``sim`` part."""
    check_spec(spec)
    template = load_template(spec.get("template", "i2v"))
    kind = template["kind"]
    workflow = build_workflow(spec, template, video_id, spec.get("seed", seed))
    names = image_names(video_id, kind)
    sim = {"seq": seq, "template": spec.get("template", "i2v"), "kind": kind,
           "shape": spec.get("shape", "current"), "image_mode": spec.get("image_mode", "base64"),
           "with_workflow": bool(spec.get("with_workflow", False)), "seed": spec.get("seed", seed),
           "workflow": workflow, "node_weights": spec.get("node_weights") or weights_for(template, workflow),
           "claim_error": spec.get("claim_error"), "claimed_count": 0,
           "task_patch": spec.get("task_patch"), "input_patch": spec.get("input_patch"),
           "images": dict(zip(names, [spec.get("image_b64"), spec.get("last_image_b64")]))}
    return {"id": video_id, "user_id": "sim-user", "original_image_url": f"/sim/media/{names[0]}",
            "last_image_url": f"/sim/media/{names[1]}" if kind == "fl2v" else None,
            "prompt": positive_prompt(workflow), "tags": [], "is_photo_realistic": None, "is_nsfw": None,
            "status": spec.get("status", "in_queue"), "job_id": f"local-{video_id}",
            "is_local_job": bool(spec.get("is_local_job", True)), "final_video_url": None,
            "processing_time_ms": None, "progress_percentage": None, "progress_details": None,
            "created_at": created_at, "updated_at": created_at, "processing_started_at": created_at,
            "dequeued_at": None, "sim": sim}


def check_spec(spec: dict[str, Any]) -> None:
    """Raise :class:`SpecError` naming the first bad key of a job spec."""
    unknown = sorted(set(spec) - SPEC_KEYS - {"count"})
    if unknown:
        raise SpecError(f"unknown keys: {', '.join(unknown)}")
    for key, allowed in (("shape", SHAPES), ("image_mode", IMAGE_MODES), ("claim_error", CLAIM_ERRORS)):
        if spec.get(key) is not None and spec[key] not in allowed:
            raise SpecError(f"{key}: must be one of {', '.join(allowed)}, got {spec[key]!r}")
    for key in ("workflow", "patch", "node_weights", "task_patch", "input_patch"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise SpecError(f"{key}: must be an object")
    for key in ("image_b64", "last_image_b64"):
        if spec.get(key) is not None:
            try:
                base64.b64decode(spec[key], validate=True)
            except (ValueError, TypeError) as exc:
                raise SpecError(f"{key}: not base64 ({exc})") from exc


def build_workflow(spec: dict[str, Any], template: dict[str, Any], video_id: str, seed: int) -> dict[str, Any]:
    """Template (or the spec's full ``workflow``), new seed, prompt, ``patch`` merged, image names filled."""
    custom = spec.get("workflow")
    workflow = copy.deepcopy(custom if custom is not None else template["workflow"])
    set_seed(workflow, seed)
    if spec.get("prompt") is not None:
        set_positive_prompt(workflow, str(spec["prompt"]))
    if custom is not None:
        name_load_images(workflow, template["kind"])
    deep_merge(workflow, spec.get("patch") or {})
    return fill_placeholders(workflow, video_id)


def set_seed(workflow: dict[str, Any], seed: int) -> None:
    """Give every sampler node (class name containing ``Sampler``) with a literal seed the new ``seed``."""
    for node in workflow.values():
        if not isinstance(node, dict) or "Sampler" not in str(node.get("class_type", "")):
            continue
        inputs = node.get("inputs") or {}
        for key in ("seed", "noise_seed"):
            if isinstance(inputs.get(key), int) and not isinstance(inputs[key], bool):
                inputs[key] = seed


def positive_prompt(workflow: dict[str, Any]) -> str:
    """Text of the positive ``CLIPTextEncode`` node (the row's ``prompt``)."""
    node = _positive_node(workflow)
    text = node["inputs"].get("text") if node else None
    return text if isinstance(text, str) else "A beautiful video"


def set_positive_prompt(workflow: dict[str, Any], text: str) -> None:
    node = _positive_node(workflow)
    if node is not None:
        node["inputs"]["text"] = text


def _positive_node(workflow: dict[str, Any]) -> dict[str, Any] | None:
    for node in workflow.values():
        if isinstance(node, dict) and node.get("class_type") == "CLIPTextEncode" \
                and "positive" in str(node.get("_meta", {}).get("title", "")).lower():
            return node
    return None


def name_load_images(workflow: dict[str, Any], kind: str) -> None:
    """In a custom workflow, point ``LoadImage`` nodes without a placeholder at the job's image(s)."""
    for node in workflow.values():
        if not isinstance(node, dict) or node.get("class_type") != "LoadImage":
            continue
        current = str(node.setdefault("inputs", {}).get("image", ""))
        if "{" in current:
            continue
        is_last = "last" in str(node.get("_meta", {}).get("title", "")).lower()
        node["inputs"]["image"] = ("{last_image_name}" if is_last else "{first_image_name}") \
            if kind == "fl2v" else "{image_name}"


def fill_placeholders(workflow: dict[str, Any], video_id: str) -> dict[str, Any]:
    """Replace the image-name placeholders in every string of the workflow."""
    text = json.dumps(workflow, ensure_ascii=False)
    for placeholder, name in (("{image_name}", f"{video_id}.png"),
                              ("{first_image_name}", f"{video_id}_first.png"),
                              ("{last_image_name}", f"{video_id}_last.png")):
        text = text.replace(placeholder, name)
    return json.loads(text)


def deep_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Merge ``patch`` into ``target`` recursively (objects merge, anything else replaces)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def weights_for(template: dict[str, Any], workflow: dict[str, Any]) -> dict[str, Any]:
    """The template's node weights, for the node ids the workflow actually has."""
    return {node: weight for node, weight in template["node_weights"].items() if node in workflow}


# ---- task payloads ---------------------------------------------------------------------------
def omits_callback(origin: str) -> bool:
    """True when the origin's hostname is exactly ``localhost``, ``127.0.0.1`` or ``::1`` (rule of e76cfd1)."""
    hostname = (urlsplit(origin).hostname or "").lower()
    return hostname in LOOPBACK_HOSTNAMES


def image_bytes(video: dict[str, Any], name: str) -> bytes:
    """Bytes of one input image of ``video`` (custom ones from the spec, else the packaged PNGs)."""
    custom = video["sim"]["images"].get(name)
    if custom:
        return base64.b64decode(custom)
    return generated_png() if name.endswith("_last.png") else default_png()


def image_entry(video: dict[str, Any], name: str, origin: str) -> dict[str, str]:
    """``{"name", "image"}``: a data URI (base64 mode, fails like a 404 fetch) or an URL the sim serves."""
    if video["sim"]["image_mode"] == "url":
        return {"name": name, "image": f"{origin}/sim/media/{name}"}
    if video["sim"].get("claim_error") == "image_fetch":
        raise ClaimError("Error: Failed to fetch image: 404 File not found")
    encoded = base64.b64encode(image_bytes(video, name)).decode("ascii")
    return {"name": name, "image": f"data:image/png;base64,{encoded}"}


def current_task(video: dict[str, Any], origin: str) -> dict[str, Any]:
    """``{"id": job_id, "input": {images, workflow, [callback_url], node_weights}}``; may raise ClaimError."""
    sim = video["sim"]
    if sim.get("claim_error") == "no_workflow":
        raise ClaimError(f"No {sim['kind'].upper()} workflow configured")
    names = image_names(video["id"], sim["kind"])
    task_input: dict[str, Any] = {"images": [image_entry(video, name, origin) for name in names],
                                  "workflow": sim["workflow"]}
    if not omits_callback(origin):
        task_input["callback_url"] = f"{origin}/api/i2v-webhook/{video['id']}"
    task_input["node_weights"] = sim["node_weights"]
    return {"id": video["job_id"], "input": task_input}


def early_task(video: dict[str, Any], origin: str) -> dict[str, Any]:
    """The flat shape of ``ed66ae4``: ``id`` is the video id; ``callback_url`` is always present."""
    task = {"id": video["id"], "job_id": video["job_id"],
            "original_image_url": origin + video["original_image_url"], "prompt": video["prompt"],
            "tags": video["tags"], "is_photo_realistic": video["is_photo_realistic"],
            "is_nsfw": video["is_nsfw"], "processing_started_at": video["processing_started_at"],
            "callback_url": f"{origin}/api/i2v-webhook/{video['id']}"}
    if video["sim"]["with_workflow"]:
        task["workflow"] = video["sim"]["workflow"]
    return task


def apply_task_patches(task: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """Merge ``input_patch`` into the task's ``input`` object (the top level of the flat early shape),
    then ``task_patch`` into the top level; each key replaces the served value as it is (null too)."""
    input_patch, task_patch = sim.get("input_patch"), sim.get("task_patch")
    if input_patch:
        target = task["input"] if isinstance(task.get("input"), dict) else task
        target.update(copy.deepcopy(input_patch))
    if task_patch:
        task.update(copy.deepcopy(task_patch))
    return task


def build_task(video: dict[str, Any], origin: str) -> dict[str, Any]:
    """The task for a just-claimed video in its configured shape, test patches applied."""
    shape = early_task if video["sim"]["shape"] == "early" else current_task
    return apply_task_patches(shape(video, origin), video["sim"])
