"""A faithful fake ComfyUI server: ``python -m worker.sim.comfyui [ComfyUI flags] [sim flags]``.

It speaks the HTTP + websocket protocol of ComfyUI 0.3.64 as captured in ``comfyui-protocol/`` (routes,
``/api`` aliases, validation bodies, frame order, history, uploads, ``/view``), runs prompts without any
model, and is started, stopped and killed like the real program: it logs to stderr, prints
``To see the GUI go to: http://HOST:PORT`` once its port is bound, dies at once on SIGTERM, logs
``Stopped server`` on SIGINT, and exits 1 with ComfyUI's traceback when the port is taken.

Without ``--cpu`` it runs on the GPU CUDA would give it: the boards of the simulated NVML (``SIM_NVML_GPUS``,
see :mod:`worker.sim.nvml`) filtered by ``CUDA_VISIBLE_DEVICES`` as CUDA does (:mod:`worker.sim.comfy_gpu`);
device 0 is its GPU. With none visible it exits 1 with ComfyUI's "No CUDA GPUs are available" traceback.

Simulator-only flags: ``--startup-delay S``, ``--node-time S``, ``--steps N``, ``--step-time S``,
``--output-size BYTES``, ``--crash-on-prompt N``, ``--disable-node CLASS`` (repeatable),
``--history-delay S``, ``--gpu-fail-delay S`` (before the no-GPU traceback), ``--fail-on-gpu UUID``
(repeatable: exit 1 at once with a CUDA error when pinned to that GPU), ``--record FILE`` (one JSON line
per finished prompt, so a test can count executions across kills of the simulator),
``--tamper-outputs FILE`` (hostile tests: extra or replaced video entries, and their files, read from FILE
at each prompt; see :mod:`worker.sim.comfy_tamper`). Unknown flags are ignored, so a supervisor can pass
real ComfyUI flags unchanged.
``--output-size`` files are written in chunks and ``/view`` streams them, so 1 GiB outputs stay out of memory.

Per-node scripting, in the prompt itself: ``"_meta": {"sim": {...}}`` with keys ``error`` (+
``error_type``), ``sleep``, ``steps``, ``step_time``, ``output_size``, ``no_output``, ``drop_ws``,
``crash``. ``GET /sim/state`` reports the prompts run, the files written, ``cuda_visible_devices`` and
``gpu_uuid`` (the GPU it runs on, null on CPU).
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import signal
import sys
import time
import uuid

from aiohttp import web

from worker.sim import comfy_gpu
from worker.sim.comfy_exec import Executor, SimConfig
from worker.sim.comfy_files import Dirs, FileLog, input_dir_files, prepare_dirs, store_upload, view_headers, view_target
from worker.sim.comfy_nodes import NodeSpec, known_nodes, object_info
from worker.sim.comfy_queue import PromptQueue, QueueItem
from worker.sim.comfy_validate import validate_prompt
from worker.sim.comfy_ws import SocketHub
from worker.sim.nvml import SimGpu, sim_gpus, sim_is_lost

logger = logging.getLogger(__name__)

COMFYUI_VERSION = "0.3.64"
PYTORCH_VERSION = "2.14.1+cu130"
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

_BIND_TRACEBACK = """Traceback (most recent call last):
  File "<comfyui>/main.py", line 367, in <module>
    event_loop.run_until_complete(x)
  File "<pyenv>/versions/3.11.7/lib/python3.11/asyncio/base_events.py", line 653, in run_until_complete
    return future.result()
           ^^^^^^^^^^^^^^^
  File "<comfyui>/main.py", line 349, in start_all
    await run(prompt_server, address=args.listen, port=args.port, verbose=not args.dont_print_server, \
call_on_start=call_on_start)
  File "<comfyui>/main.py", line 243, in run
    await asyncio.gather(
  File "<comfyui>/server.py", line 978, in start_multi_address
    await site.start()
  File "<venv>/lib/python3.11/site-packages/aiohttp/web_runner.py", line 138, in start
    self._server = await loop.create_server(
                   ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<pyenv>/versions/3.11.7/lib/python3.11/asyncio/base_events.py", line 1525, in create_server
    raise OSError(err.errno, 'error while attempting '"""

_NO_GPU_TRACEBACK = comfy_gpu.NO_GPU_TRACEBACK


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """Real ComfyUI flags a supervisor passes, plus the simulator's own."""
    p = argparse.ArgumentParser(prog="python -m worker.sim.comfyui", description="Simulated ComfyUI server")
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    for flag in ("--input-directory", "--output-directory", "--temp-directory", "--user-directory",
                 "--database-url", "--front-end-root", "--base-directory"):
        p.add_argument(flag, default=None)
    p.add_argument("--cuda-device", type=int, default=None)
    p.add_argument("--max-upload-size", type=float, default=100)
    p.add_argument("--preview-method", default="auto", help="sim default auto; 'none' sends no sampler previews")
    for flag in ("--cpu", "--disable-auto-launch", "--log-stdout", "--dont-print-server"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds before binding (real: ~10)")
    p.add_argument("--node-time", type=float, default=0.01, help="seconds per non-sampler node")
    p.add_argument("--steps", type=int, default=4, help="sampler steps when the node has no int 'steps'")
    p.add_argument("--step-time", type=float, default=0.02, help="seconds per sampler step")
    p.add_argument("--output-size", type=int, default=65536, help="bytes of each video file")
    p.add_argument("--crash-on-prompt", type=int, default=0, help="SIGKILL itself when the N-th prompt starts")
    p.add_argument("--disable-node", action="append", default=[], help="make a node class unknown")
    p.add_argument("--history-delay", type=float, default=0.05,
                   help="seconds between execution_success and filing history")
    p.add_argument("--gpu-fail-delay", type=float, default=0.3,
                   help="seconds before the 'No CUDA GPUs are available' exit (real: 3.5-4.7)")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="append a JSON line (prompt_id, success, t, pid) per finished prompt")
    p.add_argument("--tamper-outputs", default="", metavar="FILE",
                   help="tests: JSON {mode: append|replace, entries: [...]} for video nodes, read at each prompt")
    p.add_argument("--fail-on-gpu", action="append", default=[], metavar="UUID",
                   help="exit 1 at once with a CUDA error when cuda:0 is this GPU (repeatable)")
    return p


def configure_logging(to_stdout: bool) -> None:
    """Plain ``%(message)s`` lines on stderr (stdout with ``--log-stdout``), like ComfyUI."""
    handler = logging.StreamHandler(sys.stdout if to_stdout else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _ram() -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


def log_startup(args: argparse.Namespace, dirs: Dirs) -> None:
    """The first lines of ComfyUI's startup log."""
    for flag, label, path in (("output_directory", "output", dirs.output), ("input_directory", "input", dirs.input),
                              ("user_directory", "user", args.user_directory)):
        if getattr(args, flag):
            logger.info("Setting %s directory to: %s", label, os.path.abspath(path))
    logger.info("Checkpoint files will always be loaded safely.")


def log_device(args: argparse.Namespace, gpu: SimGpu | None) -> None:
    """The device lines: CPU with ``--cpu`` (``gpu`` None), else the GPU it runs on."""
    ram_total = _ram()[0] // (1024 * 1024)
    vram = ram_total if gpu is None else round(gpu.cuda_total / (1024 * 1024))  # ComfyUI logs it with %0.0f
    logger.info("Total VRAM %d MB, total RAM %d MB", vram, ram_total)
    logger.info("pytorch version: %s", PYTORCH_VERSION)
    logger.info("Set vram state to: %s", "DISABLED" if gpu is None else "NORMAL_VRAM")
    logger.info("Device: %s", "cpu" if gpu is None else comfy_gpu.device_label(gpu))
    logger.info("Using pytorch attention" if gpu is not None else
                "Using sub quadratic optimization for attention, if you have memory or speed issues try using: "
                "--use-split-cross-attention")
    logger.info("Python version: %s", sys.version)
    logger.info("ComfyUI version: %s", COMFYUI_VERSION)


def cuda_device(args: argparse.Namespace) -> SimGpu | None:
    """The GPU CUDA gives this process as ``cuda:0``, or None. ``--cuda-device N`` sets
    ``CUDA_VISIBLE_DEVICES=N`` first, as ComfyUI does."""
    if args.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.cuda_device)
    visible = comfy_gpu.visible_devices(sim_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                        os.environ.get("CUDA_DEVICE_ORDER"))
    return visible[0] if visible else None


def gpu_is_broken(args: argparse.Namespace, gpu: SimGpu) -> bool:
    """``--fail-on-gpu`` names it, or ``SIM_NVML_STATE`` says it is lost."""
    return gpu.uuid.lower() in {u.strip().lower() for u in args.fail_on_gpu} or sim_is_lost(gpu)


# ---------------------------------------------------------------- the server object

class SimServer:
    """Routes, queue, executor and sockets of one simulated ComfyUI."""

    def __init__(self, args: argparse.Namespace, dirs: Dirs, gpu: SimGpu | None = None) -> None:
        self.args, self.dirs, self.gpu = args, dirs, gpu
        self.specs: dict[str, NodeSpec] = known_nodes(args.disable_node)
        self.number = 0
        self.files = FileLog()
        self.features = {"supports_preview_metadata": True,
                         "max_upload_size": round(args.max_upload_size * 1024 * 1024)}
        self.hub = SocketHub(self.features, lambda: self.queue.queue_info())
        self.queue = PromptQueue(self.hub.broadcast_status)
        cfg = SimConfig(node_time=args.node_time, steps=args.steps, step_time=args.step_time,
                        output_size=args.output_size, crash_on_prompt=args.crash_on_prompt,
                        previews=args.preview_method != "none", history_delay=args.history_delay,
                        record=args.record or "", tamper_outputs=args.tamper_outputs or "")
        self.executor = Executor(cfg, self.specs, dirs, self.hub, self.queue, self.files)

    def make_app(self) -> web.Application:
        """The aiohttp application: every route also under ``/api``; other GETs answer 404."""
        app = web.Application(client_max_size=self.features["max_upload_size"])
        routes = [("GET", "/ws", self.hub.handle), ("GET", "/system_stats", self.get_system_stats),
                  ("GET", "/queue", self.get_queue), ("POST", "/queue", self.post_queue),
                  ("GET", "/prompt", self.get_prompt), ("POST", "/prompt", self.post_prompt),
                  ("GET", "/history", self.get_history), ("GET", "/history/{prompt_id}", self.get_history_one),
                  ("POST", "/history", self.post_history), ("POST", "/interrupt", self.post_interrupt),
                  ("POST", "/free", self.post_free), ("GET", "/features", self.get_features),
                  ("GET", "/embeddings", self.get_list), ("GET", "/extensions", self.get_list),
                  ("GET", "/models", self.get_models), ("GET", "/models/{folder}", self.get_model_folder),
                  ("GET", "/object_info", self.get_object_info), ("GET", "/object_info/{node}", self.get_object_info),
                  ("GET", "/view", self.get_view), ("POST", "/upload/image", self.post_upload),
                  ("GET", "/sim/state", self.get_sim_state)]
        for prefix in ("", "/api"):
            for method, path, handler in routes:
                if method == "GET":
                    app.router.add_get(prefix + path, handler)  # GET routes answer HEAD too
                else:
                    app.router.add_route(method, prefix + path, handler)
        app.router.add_get("/{tail:.*}", self.not_found)
        return app

    # ------------------------------------------------------------ GET routes

    async def get_system_stats(self, request: web.Request) -> web.Response:
        ram_total, ram_free = _ram()
        if self.gpu is None:
            device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                      "torch_vram_total": ram_total, "torch_vram_free": ram_free}
        else:
            device = comfy_gpu.device_stats(self.gpu)
        system = {"os": os.name, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": COMFYUI_VERSION,
                  "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                  "required_templates_version": "0.1.95", "python_version": sys.version,
                  "pytorch_version": PYTORCH_VERSION, "embedded_python": False, "argv": sys.argv}
        return web.json_response({"system": system, "devices": [device]})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [self.queue.running.as_list()] if self.queue.running else []
        return web.json_response({"queue_running": running,
                                  "queue_pending": [item.as_list() for item in self.queue.pending()]})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.queue_info())

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        offset = int(request.rel_url.query.get("offset", -1))
        return web.json_response(self.queue.get_history(
            max_items=int(max_items) if max_items is not None else None, offset=offset))

    async def get_history_one(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features)

    async def get_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def get_models(self, request: web.Request) -> web.Response:
        return web.json_response(["checkpoints", "loras", "vae", "text_encoders", "diffusion_models",
                                  "upscale_models", "unet"])

    async def get_model_folder(self, request: web.Request) -> web.Response:
        known = request.match_info["folder"] in {"checkpoints", "loras", "vae", "text_encoders",
                                                 "diffusion_models", "upscale_models", "unet"}
        return web.json_response([]) if known else web.Response(status=404)

    async def get_object_info(self, request: web.Request) -> web.Response:
        files = input_dir_files(self.dirs.input)
        wanted = request.match_info.get("node")
        if wanted is not None:
            spec = self.specs.get(wanted)
            return web.json_response(object_info(spec, files) if spec else {})
        info: dict = {}
        for spec in self.specs.values():
            info.update(object_info(spec, files))
        return web.json_response(info)

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        status, path = view_target(self.dirs, dict(request.rel_url.query))
        if path is None:
            return web.Response(status=status)
        return web.FileResponse(path, headers=view_headers(path))

    async def get_sim_state(self, request: web.Request) -> web.Response:
        """Simulator introspection for tests: prompts run, files written, cache size."""
        history = {pid: entry["status"]["status_str"] for pid, entry in self.queue.history.items()}
        return web.json_response({"prompts_started": self.executor.prompts_started, "history": history,
                                  "files": self.files.entries, "cache_entries": len(self.executor.cache.entries),
                                  "dirs": {"input": self.dirs.input, "output": self.dirs.output,
                                           "temp": self.dirs.temp},
                                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                  "gpu_uuid": self.gpu.uuid if self.gpu else None})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """ComfyUI's static-file fallback: 404, empty chunked body, application/octet-stream."""
        response = web.StreamResponse(status=404, headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write_eof()
        return response

    # ------------------------------------------------------------ POST routes

    async def post_prompt(self, request: web.Request) -> web.Response:
        """Validate and queue a prompt; 400 with ComfyUI's error body when it cannot run."""
        logger.info("got prompt")
        body = await request.json()  # bad JSON raises: aiohttp answers 500, as ComfyUI does
        number = self._next_number(body)
        if not isinstance(body, dict) or "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = copy.deepcopy(body["prompt"])
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        result = validate_prompt(prompt, self.specs, self.dirs, body.get("partial_execution_targets"))
        if not result.ok:
            logger.warning("invalid prompt: %s", result.error)
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra.pop(key, None)
        await self.queue.put(QueueItem(number, prompt_id, prompt, extra, result.good_outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})

    def _next_number(self, body: object) -> float:
        """ComfyUI's numbering: explicit ``number`` as float, else the counter (negated with ``front``)."""
        if isinstance(body, dict) and "number" in body:
            return float(body["number"])
        number = self.number
        if isinstance(body, dict) and body.get("front"):
            number = -number
        self.number += 1
        return number

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            await self.queue.wipe()
        for prompt_id in body.get("delete", []):
            await self.queue.delete(prompt_id)
        return web.Response(status=200)

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.history.clear()
        for prompt_id in body.get("delete", []):
            self.queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        self.executor.interrupt(body.get("prompt_id") if isinstance(body, dict) else None)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        self.executor.free(bool(body.get("free_memory", False)) if isinstance(body, dict) else False)
        return web.Response(status=200)

    async def post_upload(self, request: web.Request) -> web.Response:
        status, body = store_upload(self.dirs, await request.post())
        return web.json_response(body) if body is not None else web.Response(status=status)


async def _json_or_empty(request: web.Request) -> object:
    text = await request.text()
    if not text.strip():
        return {}
    try:
        return await request.json()
    except ValueError:
        return {}


# ---------------------------------------------------------------- serving

class BindError(Exception):
    """The listening socket could not be bound (carries the OSError)."""


async def serve(server: SimServer, sigint_enabled: bool) -> None:
    """Bind, announce the URL, then run the executor forever (SIGINT handled from before the bind)."""
    if sigint_enabled:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, _stop_on_sigint)
    runner = web.AppRunner(server.make_app(), access_log=None)
    await runner.setup()
    port = server.args.port
    for address in [a for a in server.args.listen.split(",") if a]:
        site = web.TCPSite(runner, address, port)
        try:
            await site.start()
        except OSError as err:
            raise BindError(err) from err
        port = site._server.sockets[0].getsockname()[1]  # the real port when --port 0
        shown = f"[{address}]" if ":" in address else address
        if not server.args.dont_print_server:
            logger.info("To see the GUI go to: http://%s:%d", shown, port)
    await server.executor.run_forever()


def _stop_on_sigint() -> None:
    """SIGINT: log like ComfyUI and leave at once (no websocket close frames)."""
    logger.info("\nStopped server")
    _flush_logs()
    os._exit(0)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the simulated ComfyUI until killed; returns 1 when it cannot start (GPU or port)."""
    args, _unknown = build_parser().parse_known_args(argv)
    configure_logging(args.log_stdout)
    sigint_enabled = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    dirs = prepare_dirs(args.input_directory, args.output_directory, args.temp_directory, args.base_directory)
    log_startup(args, dirs)
    gpu = None if args.cpu else cuda_device(args)
    if not args.cpu and gpu is None:
        time.sleep(args.gpu_fail_delay)
        print(_NO_GPU_TRACEBACK, file=sys.stderr, flush=True)
        return 1
    if gpu is not None and gpu_is_broken(args, gpu):
        print(comfy_gpu.CUDA_FAILURE_TRACEBACK, file=sys.stderr, end="", flush=True)
        return 1
    log_device(args, gpu)
    logger.info("Setting temp directory to: %s", dirs.temp)
    logger.info("[Prompt Server] web root: %s", args.front_end_root or "<simulated frontend>")
    time.sleep(args.startup_delay)
    logger.info("Starting server\n")
    try:
        asyncio.run(serve(SimServer(args, dirs, gpu), sigint_enabled))
    except BindError as err:
        print(f"{_BIND_TRACEBACK}\nOSError: {err.__cause__}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
