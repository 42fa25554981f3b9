"""Prompt execution of the simulated ComfyUI: one prompt at a time, frames in ComfyUI's order.

For one prompt the websocket sees (see ``comfyui-protocol/README.md``)::

    status, execution_start, execution_cached,
    [progress_state(running), executing, (progress_state, progress, preview)*, executed?, progress_state(finished)]*,
    execution_success | execution_error | execution_interrupted,
    -- history filed ~``history_delay`` later --  status, executing {node: null}

Nodes do no real work: each takes ``--node-time`` seconds, samplers report ``steps`` progress frames,
output nodes write real files (fake media). A node's ``_meta.sim`` script can make it fail, sleep,
crash the server or cut every websocket (see :mod:`worker.sim.comfyui`). With ``--tamper-outputs`` the
video nodes also report (and write) hostile entries (:mod:`worker.sim.comfy_tamper`).
"""
from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

from worker.sim.comfy_files import (Dirs, FileLog, annotated_path, mp4_chunks, png_bytes, save_image_path,
                                    vhs_counter, webp_bytes)
from worker.sim.comfy_nodes import NodeSpec
from worker.sim.comfy_queue import (CacheEntry, CycleError, ExecutionList, OutputCache, PromptQueue, QueueItem,
                                    node_signatures, sim_options)
from worker.sim.comfy_tamper import VIDEO_NODE_KEYS, Tamper, apply_tamper, load_tamper
from worker.sim.comfy_validate import is_link
from worker.sim.comfy_ws import SocketHub

logger = logging.getLogger(__name__)

OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
            "have accidentally set the batch_size to a large number.")
_PREVIEW_PNG = png_bytes(16, 16, (90, 120, 160))


@dataclass(frozen=True)
class SimConfig:
    """Timing and output knobs from the command line."""

    node_time: float = 0.01
    steps: int = 4
    step_time: float = 0.02
    output_size: int = 65536
    crash_on_prompt: int = 0
    previews: bool = True
    history_delay: float = 0.05
    record: str = ""             # append one JSON line per finished prompt here (outlives the process)
    tamper_outputs: str = ""     # hostile video entries, read at each prompt (tests only)


class Interrupted(Exception):
    """``/interrupt`` was seen at a node boundary or a sampler step (ComfyUI's InterruptProcessingException)."""


@dataclass(frozen=True)
class SimValue:
    """What a node 'returns': a typed placeholder that remembers where it came from."""

    type_name: str
    node_id: str
    slot: int
    batch: int = 1

    def __repr__(self) -> str:
        return f"<sim.{self.type_name} object from node {self.node_id}:{self.slot} at 0x{id(self):x}>"


@dataclass
class Failure:
    """Why a prompt stopped: an interrupt or an exception at ``node_id``."""

    node_id: str
    interrupted: bool
    details: dict = field(default_factory=dict)


@dataclass
class PromptRun:
    """Everything one running prompt accumulates."""

    item: QueueItem
    keys: dict[str, str]
    messages: list = field(default_factory=list)
    progress: dict[str, dict] = field(default_factory=dict)
    values: dict[str, tuple] = field(default_factory=dict)
    ui_outputs: dict[str, dict] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    success: bool = False
    tamper: Tamper | None = None

    @property
    def prompt_id(self) -> str:
        return self.item.prompt_id

    @property
    def client_id(self) -> str | None:
        return self.item.extra_data.get("client_id")

    def node(self, node_id: str) -> dict:
        return self.item.prompt[node_id]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def make_exception(message: str, type_name: str = "RuntimeError") -> Exception:
    """An exception of a builtin type, or of a made-up ``module.Name`` class (``torch.OutOfMemoryError``)."""
    builtin = getattr(builtins, type_name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin(message)
    module, _, name = type_name.rpartition(".")
    klass = type(name or "SimError", (Exception,), {"__module__": module or "builtins"})
    return klass(message)


def _format_value(value: object) -> object:
    """``current_inputs`` values: primitives as they are, anything else as its repr string."""
    return value if value is None or isinstance(value, (int, float, bool, str)) else str(value)


class Executor:
    """Takes prompts off the queue and runs them; also answers ``/interrupt`` and ``/free``."""

    def __init__(self, cfg: SimConfig, specs: dict[str, NodeSpec], dirs: Dirs, hub: SocketHub,
                 queue: PromptQueue, files: FileLog) -> None:
        self.cfg, self.specs, self.dirs, self.hub, self.queue, self.files = cfg, specs, dirs, hub, queue, files
        self.cache = OutputCache()
        self.interrupt_flag = False
        self.free_memory_pending = False
        self.prompts_started = 0

    # ------------------------------------------------------------ control from HTTP

    def interrupt(self, prompt_id: str | None) -> None:
        """``POST /interrupt``: all, or only when ``prompt_id`` is the running prompt."""
        if not prompt_id:
            logger.info("Global interrupt (no prompt_id specified)")
            self.interrupt_flag = True
        elif self.queue.running is not None and self.queue.running.prompt_id == prompt_id:
            logger.info("Interrupting prompt %s", prompt_id)
            self.interrupt_flag = True
        else:
            logger.info("Prompt %s is not currently running, skipping interrupt", prompt_id)

    def free(self, free_memory: bool) -> None:
        """``POST /free``: ``free_memory`` empties the cache, after the running prompt if there is one."""
        if free_memory:
            self.free_memory_pending = True
            if self.queue.running is None:
                self._apply_free()

    def _apply_free(self) -> None:
        if self.free_memory_pending:
            self.cache.clear()
            self.free_memory_pending = False

    # ------------------------------------------------------------ the worker loop

    async def run_forever(self) -> None:
        """Run prompts one after another, forever."""
        while True:
            item = await self.queue.get()
            await self.run_prompt(item)
            self._apply_free()

    async def run_prompt(self, item: QueueItem) -> None:
        """Execute one prompt and file its history entry."""
        started = time.perf_counter()
        self.interrupt_flag = False
        self.prompts_started += 1
        self.hub.client_id, self.hub.last_node_id = item.extra_data.get("client_id"), None
        run = PromptRun(item, node_signatures(item.prompt, self.dirs))
        run.tamper = load_tamper(self.cfg.tamper_outputs)
        await self._message(run, "execution_start", {"prompt_id": run.prompt_id})
        if self.prompts_started == self.cfg.crash_on_prompt:
            self._crash(f"prompt #{self.prompts_started} ({run.prompt_id})")
        self.cache.keep_only(set(run.keys.values()))
        cached = [nid for nid in item.prompt if self.cache.get(run.keys[nid]) is not None]
        await self._message(run, "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id})
        failure = await self._execute_all(run)
        if failure is None:
            run.success = True
            await self._message(run, "execution_success", {"prompt_id": run.prompt_id})
        else:
            await self._report_failure(run, failure)
        self._record(run)
        await self._finish(run, started)

    def _record(self, run: PromptRun) -> None:
        """``--record``: one line per finished prompt, written and flushed before ``_finish``."""
        if not self.cfg.record:
            return
        line = json.dumps({"prompt_id": run.prompt_id, "success": run.success, "t": time.time(),
                           "pid": os.getpid()})
        with open(self.cfg.record, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def _finish(self, run: PromptRun, started: float) -> None:
        """Clean-up pause, history entry + ``status``, then ``executing null`` (ComfyUI's order)."""
        self.hub.last_node_id = None
        await asyncio.sleep(self.cfg.history_delay)
        await self.queue.task_done(self._history_entry(run))
        if run.client_id is not None:
            await self.hub.send_json("executing", {"node": None, "prompt_id": run.prompt_id}, run.client_id)
        logger.info("Prompt executed in %.2f seconds", time.perf_counter() - started)

    def _history_entry(self, run: PromptRun) -> dict:
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in run.ui_outputs}
        status = {"status_str": "success" if run.success else "error", "completed": run.success,
                  "messages": run.messages}
        return {"prompt": run.item.as_list(), "outputs": dict(run.ui_outputs), "status": status, "meta": meta}

    async def _execute_all(self, run: PromptRun) -> Failure | None:
        order = ExecutionList(run.item.prompt, self.specs, lambda nid: self._cached(run, nid) is not None)
        for output in run.item.outputs:
            order.add_node(output)
        while not order.is_empty():
            try:
                node_id = order.stage()
            except CycleError as ex:
                return self._error_failure(next(iter(order.pending)), ex, {})
            failure = await self._execute_node(run, node_id)
            if failure is not None:
                return failure
            order.complete(node_id)
        return None

    def _cached(self, run: PromptRun, node_id: str) -> CacheEntry | None:
        return self.cache.get(run.keys.get(node_id))

    # ------------------------------------------------------------ one node

    async def _execute_node(self, run: PromptRun, node_id: str) -> Failure | None:
        """Run (or replay from cache) one node; returns a Failure instead of raising."""
        cached = self._cached(run, node_id)
        if cached is not None:
            await self._replay_cached(run, node_id, cached)
            return None
        await self._progress(run, node_id, 0.0, 1.0, "running")
        if run.client_id is not None:
            self.hub.last_node_id = node_id
            await self._to_client(run, "executing", {"node": node_id, "display_node": node_id,
                                                     "prompt_id": run.prompt_id})
        inputs = self._resolve_inputs(run, node_id)
        try:
            self._check_interrupt()
            outputs, ui = await self._run_body(run, node_id, inputs)
        except Interrupted:
            logger.info("Processing interrupted")
            return Failure(node_id, interrupted=True)
        except Exception as ex:  # noqa: BLE001 - every node error becomes execution_error, as in ComfyUI
            return self._error_failure(node_id, ex, inputs)
        await self._store_result(run, node_id, outputs, ui)
        return None

    async def _store_result(self, run: PromptRun, node_id: str, outputs: tuple, ui: dict | None) -> None:
        run.values[node_id] = outputs
        self.cache.set(run.keys[node_id], CacheEntry(outputs, ui or None))
        if ui:
            run.ui_outputs[node_id] = ui
            await self._to_client(run, "executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                    "prompt_id": run.prompt_id})
        entry = run.progress[node_id]
        await self._progress(run, node_id, entry["max"], entry["max"], "finished")
        run.executed.append(node_id)

    async def _replay_cached(self, run: PromptRun, node_id: str, cached: CacheEntry) -> None:
        """A cached output node: ``executed`` with the old UI output, then a finished progress_state."""
        run.values[node_id] = cached.outputs
        if cached.ui is not None:
            run.ui_outputs[node_id] = cached.ui
        await self._to_client(run, "executed", {"node": node_id, "display_node": node_id, "output": cached.ui,
                                                "prompt_id": run.prompt_id})
        await self._progress(run, node_id, 1, 1, "finished")

    def _resolve_inputs(self, run: PromptRun, node_id: str) -> dict:
        """Widget values as given, links replaced by the upstream node's output value."""
        resolved = {}
        for name, value in run.node(node_id)["inputs"].items():
            if is_link(value):
                upstream = run.values.get(value[0]) or getattr(self._cached(run, value[0]), "outputs", ())
                slot = int(value[1])
                resolved[name] = upstream[slot] if slot < len(upstream) else None
            else:
                resolved[name] = value
        return resolved

    def _error_failure(self, node_id: str, ex: BaseException, inputs: dict) -> Failure:
        typ, _, tb = sys.exc_info()
        typ = typ or type(ex)
        type_name = _full_type_name(typ)
        tips = ""
        if type_name.endswith("OutOfMemoryError"):
            logger.error("Got an OOM, unloading all loaded models.")
            tips = OOM_TIPS
        logger.error("!!! Exception during processing !!! %s", ex)
        logger.error("%s", traceback.format_exc())
        details = {"exception_message": f"{ex}\n{tips}", "exception_type": type_name,
                   "traceback": traceback.format_tb(tb) if tb else [],
                   "current_inputs": {k: [_format_value(v)] for k, v in inputs.items()}}
        return Failure(node_id, interrupted=False, details=details)

    async def _report_failure(self, run: PromptRun, failure: Failure) -> None:
        base = {"prompt_id": run.prompt_id, "node_id": failure.node_id,
                "node_type": run.node(failure.node_id)["class_type"], "executed": list(reversed(run.executed))}
        if failure.interrupted:
            await self._message(run, "execution_interrupted", base, broadcast=True)
            return
        data = {**base, **failure.details, "current_outputs": list(reversed(list(run.item.prompt)))}
        await self._message(run, "execution_error", data)

    # ------------------------------------------------------------ what a node does

    async def _run_body(self, run: PromptRun, node_id: str, inputs: dict) -> tuple[tuple, dict | None]:
        """Simulate the node: scripted effects, time, progress, output files."""
        node = run.node(node_id)
        spec = self.specs[node["class_type"]]
        sim = sim_options(node)
        if sim.get("crash"):
            self._crash(f"node {node_id}")
        if sim.get("drop_ws"):
            logger.warning("sim: dropping every websocket connection (node %s)", node_id)
            await self.hub.drop_all()
        if spec.name == "LoadImage":
            with open(annotated_path(str(inputs.get("image")), self.dirs), "rb"):
                pass
        batch = self._batch(spec, inputs)
        await self._spend_time(run, node_id, spec, inputs, sim, batch)
        if "error" in sim:
            raise make_exception(str(sim["error"]), str(sim.get("error_type", "RuntimeError")))
        ui = await self._write_outputs(run, node_id, spec, inputs, sim, batch) if spec.output_node else None
        outputs = tuple(SimValue(t, node_id, i, batch) for i, t in enumerate(spec.outputs))
        return outputs, ui

    @staticmethod
    def _batch(spec: NodeSpec, inputs: dict) -> int:
        if spec.name == "EmptyImage" and isinstance(inputs.get("batch_size"), int):
            return max(1, inputs["batch_size"])
        return next((v.batch for v in inputs.values() if isinstance(v, SimValue)), 1)

    async def _spend_time(self, run: PromptRun, node_id: str, spec: NodeSpec, inputs: dict, sim: dict,
                          batch: int) -> None:
        if "sleep" in sim:
            await self._pause(float(sim["sleep"]))
        if spec.sampler:
            await self._sample(run, node_id, inputs, sim)
        elif spec.name == "SaveImageWebsocket":
            await self._stream_images(run, node_id, batch)
        elif "sleep" not in sim:
            await asyncio.sleep(self.cfg.node_time)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, checking for an interrupt at least every 50 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            self._check_interrupt()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.05, remaining))

    def _check_interrupt(self) -> None:
        if self.interrupt_flag:
            self.interrupt_flag = False
            raise Interrupted("Interrupted")

    async def _sample(self, run: PromptRun, node_id: str, inputs: dict, sim: dict) -> None:
        """Sampler steps: each waits ``step_time`` (interruptible) and reports progress 1..steps."""
        declared = inputs.get("steps")
        steps = int(sim.get("steps") or (declared if isinstance(declared, int) and declared > 0 else self.cfg.steps))
        step_time = float(sim.get("step_time", self.cfg.step_time))
        for step in range(1, steps + 1):
            await self._pause(step_time)
            await self._step(run, node_id, step, steps, _PREVIEW_PNG if self.cfg.previews else None)

    async def _stream_images(self, run: PromptRun, node_id: str, batch: int) -> None:
        """SaveImageWebsocket: one binary image per batch item, progress 0..batch-1."""
        for index in range(batch):
            await self._step(run, node_id, index, batch, png_bytes(32, 24))

    async def _step(self, run: PromptRun, node_id: str, value: int, total: int, png: bytes | None) -> None:
        """progress_state, then progress + preview (legacy) or preview + progress (metadata clients)."""
        await self._progress(run, node_id, value, total, "running")
        meta = {"node_id": node_id, "prompt_id": run.prompt_id, "display_node_id": node_id,
                "parent_node_id": None, "real_node_id": node_id, "image_type": "image/png"}
        preview_first = png is not None and run.client_id is not None and self.hub.wants_metadata(run.client_id)
        if preview_first:
            await self.hub.send_preview(run.client_id, png, meta)
        await self.hub.send_json("progress", {"value": value, "max": total, "prompt_id": run.prompt_id,
                                              "node": node_id}, run.client_id)
        if png is not None and not preview_first:
            await self.hub.send_preview(run.client_id, png, meta)

    # ------------------------------------------------------------ output files

    async def _write_outputs(self, run: PromptRun, node_id: str, spec: NodeSpec, inputs: dict, sim: dict,
                             batch: int) -> dict | None:
        """Write the node's files; returns its UI output (None with ``_meta.sim.no_output``)."""
        if sim.get("no_output"):
            return None
        size = int(sim.get("output_size", self.cfg.output_size))
        seed = f"{run.prompt_id}:{node_id}"
        if spec.name in VIDEO_NODE_KEYS:
            save = self._save_vhs if spec.name == "VHS_VideoCombine" else self._save_video
            ui = await asyncio.to_thread(save, inputs, size, seed)
            if run.tamper is None:
                return ui
            return await asyncio.to_thread(apply_tamper, run.tamper, spec.name, ui, self.dirs, self.files,
                                           size, seed)
        if spec.name == "SaveAnimatedWEBP":
            return self._save_webp(inputs, seed, batch)
        if spec.name == "SaveImage":
            return self._save_images(str(inputs.get("filename_prefix", "ComfyUI")), "output", batch)
        if spec.name == "PreviewImage":
            letters = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
            return self._save_images(f"ComfyUI_temp_{letters}", "temp", batch)
        return {}

    def _save_images(self, prefix: str, kind: str, batch: int) -> dict:
        folder, base, counter, subfolder = save_image_path(prefix, self.dirs.by_type(kind))
        images = []
        for index in range(batch):
            name = f"{base}_{counter + index:05}_.png"
            self.files.write(os.path.join(folder, name), png_bytes(), kind, self.dirs)
            images.append({"filename": name, "subfolder": subfolder, "type": kind})
        return {"images": images}

    def _save_video(self, inputs: dict, size: int, seed: str) -> dict:
        folder, base, counter, subfolder = save_image_path(str(inputs.get("filename_prefix", "video/ComfyUI")),
                                                           self.dirs.output)
        name = f"{base}_{counter:05}_.mp4"
        self.files.write(os.path.join(folder, name), mp4_chunks(size, seed), "output", self.dirs)
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}

    def _save_webp(self, inputs: dict, seed: str, batch: int) -> dict:
        folder, base, counter, subfolder = save_image_path(str(inputs.get("filename_prefix", "ComfyUI")),
                                                           self.dirs.output)
        name = f"{base}_{counter:05}_.webp"
        self.files.write(os.path.join(folder, name), webp_bytes(512, seed), "output", self.dirs)
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [batch != 1]}

    def _save_vhs(self, inputs: dict, size: int, seed: str) -> dict:
        """VideoHelperSuite: ``<prefix>_00001.mp4`` plus its metadata ``.png``, reported under ``gifs``."""
        kind = "output" if inputs.get("save_output", True) else "temp"
        folder, base, _, subfolder = save_image_path(str(inputs.get("filename_prefix", "AnimateDiff")),
                                                     self.dirs.by_type(kind))
        counter = vhs_counter(folder, base)
        fmt = str(inputs.get("format", "image/gif"))
        ext = fmt.split("-")[-1] if "-" in fmt else fmt.split("/")[-1]
        video, workflow = f"{base}_{counter:05}.{ext}", f"{base}_{counter:05}.png"
        self.files.write(os.path.join(folder, workflow), png_bytes(), kind, self.dirs)
        self.files.write(os.path.join(folder, video), mp4_chunks(size, seed), kind, self.dirs)
        entry = {"filename": video, "subfolder": subfolder, "type": kind, "format": fmt,
                 "frame_rate": float(inputs.get("frame_rate", 8)), "workflow": workflow,
                 "fullpath": os.path.join(folder, video)}
        return {"gifs": [entry]}

    # ------------------------------------------------------------ frames

    async def _message(self, run: PromptRun, event: str, data: dict, broadcast: bool = False) -> None:
        """ComfyUI's ``add_message``: timestamped, kept for history, sent to the client (or everyone)."""
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            await self.hub.send_json(event, data, run.client_id)

    async def _to_client(self, run: PromptRun, event: str, data: dict) -> None:
        """Frames that exist only for a prompt with a client id (executing, executed)."""
        if run.client_id is not None:
            await self.hub.send_json(event, data, run.client_id)

    async def _progress(self, run: PromptRun, node_id: str, value: float, total: float, state: str) -> None:
        """Update one node's progress entry and send ``progress_state`` with every node touched so far."""
        run.progress[node_id] = {"value": value, "max": total, "state": state, "node_id": node_id,
                                 "prompt_id": run.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                                 "real_node_id": node_id}
        nodes = {nid: dict(entry) for nid, entry in run.progress.items()}
        await self.hub.send_json("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, run.client_id)

    def _crash(self, where: str) -> None:
        """Die at once, like a SIGKILL'd ComfyUI (no clean-up, no close frames)."""
        logger.warning("sim: SIGKILL requested at %s", where)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
