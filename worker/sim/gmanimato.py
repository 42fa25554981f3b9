"""Simulated GmAnimato API: the task route, the webhook route and control routes for tests.

Run it as a program::

    python -m worker.sim.gmanimato [--host H ...] [--port N] [--secret S] [--origin URL]
                                   [--body-limit BYTES] [--state-file PATH] [--jobs N] [--job-template NAME]

It prints exactly one stdout line, ``listening on http://<first host>:<port>``, once every host is bound,
and logs everything else to stderr. The two product routes follow ``shared/gmanimato-api.md`` §1 and §2
(GmAnimato ``68f0ddb``, Postgres backend); the webhook rules live in :mod:`worker.sim.gma_webhook`, the
task payloads in :mod:`worker.sim.gma_tasks`, the tables in :mod:`worker.sim.gma_state`. Routes under
``/sim/`` exist only here. Every other path answers like the real app does for a non-public route:
``303`` to ``/login``; a trailing slash answers ``308`` to the path without it. Those requests, and
unknown ``/sim/`` paths, are *strays*: recorded for ``GET /sim/stray`` (:mod:`worker.sim.gma_hostile`).

Control routes (JSON)::

    POST /sim/jobs      {"template": "i2v"|"i2v-720p"|"fl2v", "shape": "current"|"early",
                         "image_mode": "base64"|"url", "workflow": {...}, "patch": {node: {...}},
                         "with_workflow": bool, "video_id": str, "prompt": str, "seed": int,
                         "node_weights": {...}, "claim_error": "image_fetch"|"no_workflow",
                         "is_local_job": bool, "status": str, "image_b64": str, "last_image_b64": str,
                         "task_patch": {...}, "input_patch": {...},
                         "count": n}                   -> 201 {"video_id", "job_id"} (a list with count)
                        (task_patch/input_patch: merged into the served task's top level / its ``input``
                         at the claim; the row is claimed as usual)
    GET  /sim/videos                                   -> every row, plus claimed_count, template, ...
    GET  /sim/videos/<id>                              -> one row with its "sim" part (workflow, ...)
    GET  /sim/webhooks[?video_id=X]                    -> [{"t", "video_id", "body", "status", "response"}]
    GET  /sim/uploads/<name>  (also /uploads/<name>)   -> bytes of a base64-uploaded video
    GET  /sim/media/<name>                             -> input image (url mode, early shape)
    POST /sim/faults    {"task": [503, "reset"], "webhook": {"<id>"|"*": [500]}, "webhook_delay": s,
                         "progress_delay": s, "task_delay": s, "media_delay": s, "clear": bool,
                         "task_raw": [{"status": 200, "content_type": "application/json",
                                       "body": str | "body_b64": str | "deep": N [, "id": str]
                                       | "truncate": true}, ...]}
                                                       -> the pending faults (GET shows them too)
                        (task_raw: served once each, in order, to the next authorized task calls;
                         webhook_delay: every webhook waits s before its answer; progress_delay: only
                         progress webhooks (body status "processing") wait s more, final ones do not;
                         clear / POST /sim/reset set every delay back to 0)
    GET  /sim/summary                                  -> {"in_queue": n, "processing": n, ...}
    GET  /sim/stats                                    -> {"task_calls": {"200": n, ...}, "webhook_calls": n,
                                                           "media_calls": n}
    GET  /sim/stray                                    -> [{"method", "path", "raw_path", "query",
                                                           "body_size", "headers"}] (secrets "***")
    POST /sim/reset                                    -> forget videos, webhooks, uploads, faults, strays
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from worker.sim.gma_hostile import StrayLog, raw_body, raw_response, truncated
from worker.sim.gma_http import (webhook_status, TASK_FAULT_BODIES, Faults, drop_connection, fault_response, js_json,
                                 method_not_allowed, provided_secret, read_json_object, sim_json,
                                 strip_trailing_slash)
from worker.sim.gma_state import Store, new_video_id, now_s
from worker.sim.gma_tasks import (TEMPLATE_NAMES, ClaimError, SpecError, build_task, build_video,
                                  image_bytes)
from worker.sim.gma_webhook import evaluate_webhook

log = logging.getLogger("worker.sim.gmanimato")

PRODUCTION_BODY_LIMIT = 512 * 1024
ENTRY_FIELDS = ("id", "user_id", "original_image_url", "last_image_url", "prompt", "tags",
                "is_photo_realistic", "is_nsfw", "status", "job_id", "is_local_job", "final_video_url",
                "processing_time_ms", "processing_started_at", "dequeued_at", "progress_percentage",
                "progress_details", "created_at")
SIM_ROW_FIELDS = ("claimed_count", "template", "shape", "image_mode", "seed", "claim_error")
STRAY_ROUTES = frozenset({"stray-sim", "stray-app"})


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated GmAnimato (the CLI flags)."""

    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 0
    secret: str = ""
    origin: str | None = None
    body_limit: int = 0
    body_limit_mode: str = "413"
    state_file: Path | None = None
    jobs: int = 0
    job_template: str = "i2v"


def entry_view(video: dict[str, Any]) -> dict[str, Any]:
    """The row as ``updated`` in the webhook answer: ``mapToVideoEntry`` drops empty columns."""
    entry = {k: video[k] for k in ENTRY_FIELDS if video.get(k) is not None}
    entry["likes"] = []
    return entry


def row_view(video: dict[str, Any]) -> dict[str, Any]:
    """The row as ``GET /sim/videos`` shows it: every column plus the simulator's bookkeeping."""
    row = {k: v for k, v in video.items() if k != "sim"}
    row.update({k: video["sim"].get(k) for k in SIM_ROW_FIELDS})
    return row


def parse_recorded(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- the application --------------------------------------------------------------------------
class GmAnimatoApp:
    """Handlers of the simulated GmAnimato over one :class:`Store`."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.store = Store(config.state_file)
        self.faults = Faults()
        self.claim_lock = asyncio.Lock()
        self.task_calls: dict[str, int] = {}
        self.media_calls = 0
        self.stray = StrayLog()

    def routes(self) -> list[web.RouteDef]:
        """Product routes, control routes (``/sim/…``), then the 303 catch-all."""
        return [
            web.route("*", "/api/worker/task", self.handle_task_route),
            web.route("*", "/api/i2v-webhook/{id}", self.handle_webhook_route),
            web.post("/sim/jobs", self.create_jobs),
            web.get("/sim/videos", self.list_videos),
            web.get("/sim/videos/{id}", self.get_video),
            web.get("/sim/webhooks", self.list_webhooks),
            web.get("/sim/uploads/{name}", self.get_upload),
            web.get("/uploads/{name}", self.get_upload),
            web.get("/sim/media/{name}", self.get_media),
            web.get("/sim/faults", self.get_faults),
            web.post("/sim/faults", self.set_faults),
            web.get("/sim/summary", self.summary),
            web.get("/sim/stats", self.stats),
            web.get("/sim/stray", self.list_stray),
            web.post("/sim/reset", self.reset),
            web.get("/login", self.login_page),
            web.route("*", "/sim/{tail:.*}", self.sim_not_found, name="stray-sim"),
            web.route("*", "/{tail:.*}", self.redirect_to_login, name="stray-app"),
        ]

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30, middlewares=[self.record_strays, strip_trailing_slash])
        app.add_routes(self.routes())
        return app

    @web.middleware
    async def record_strays(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record a request the app has no route for (a catch-all, or a trailing slash: 308) first."""
        trailing_slash = request.path != "/" and request.path.endswith("/")
        if trailing_slash or request.match_info.route.name in STRAY_ROUTES:
            await self.stray.record(request)
        return await handler(request)

    def origin(self, request: web.Request) -> str:
        """The request origin as the server sees it: ``--origin``, else ``http://`` + Host."""
        return (self.config.origin or f"http://{request.host}").rstrip("/")

    # ---- GET /api/worker/task -------------------------------------------------------------
    async def handle_task_route(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed(request.method, "GET, HEAD")
        response = await self.answer_task(request)
        self.task_calls[str(response.status)] = self.task_calls.get(str(response.status), 0) + 1
        return response

    async def answer_task(self, request: web.Request) -> web.Response:
        """§1: faults, then secret configured (500), auth (401), atomic claim (404), payload (200/500)."""
        if self.faults.task_delay:
            await asyncio.sleep(self.faults.task_delay)
        fault = self.faults.next_task()
        if fault is not None:
            log.info("task: simulated fault %s", fault)
            return fault_response(request, fault, TASK_FAULT_BODIES.get(fault, {"error": "simulated"}))
        if not self.config.secret:
            return js_json({"error": "Worker secret not configured"}, status=500)
        secret = provided_secret(request.headers)
        if not secret or secret != self.config.secret:
            return js_json({"error": "Unauthorized"}, status=401)
        raw = self.faults.next_task_raw()
        if raw is not None:
            return await self.raw_task_answer(raw, self.origin(request))
        return await self.claim_task(self.origin(request))

    async def claim_task(self, origin: str) -> web.Response:
        """The atomic claim and its payload: 404 when the queue is empty."""
        async with self.claim_lock:
            video = self.store.claim_next(now_s())
        if video is None:
            return js_json({"message": "No tasks available"}, status=404)
        return self.task_payload(video, origin)

    async def raw_task_answer(self, raw: dict[str, Any], origin: str) -> web.Response:
        """A scripted raw answer; ``truncate`` makes a real claim and serves half its JSON (a claim
        that fails or finds no job answers as usual)."""
        if not raw.get("truncate"):
            shown = {k: v for k, v in raw.items() if k not in ("body", "body_b64")}
            log.info("task: simulated raw answer %s", shown)
            return raw_response(raw, raw_body(raw))
        response = await self.claim_task(origin)
        if response.status != 200:
            return response
        log.info("task: serving the claim cut in half")
        return raw_response(raw, truncated(response.body))

    def task_payload(self, video: dict[str, Any], origin: str) -> web.Response:
        try:
            task = build_task(video, origin)
        except ClaimError as exc:
            log.info("task: claimed video=%s but failed: %s", video["id"], exc)
            return js_json({"error": str(exc)}, status=500)
        log.info("task: video=%s claimed (shape=%s, handed out %d times)", video["id"],
                 video["sim"]["shape"], video["sim"]["claimed_count"])
        return js_json(task)

    # ---- POST /api/i2v-webhook/{id} -------------------------------------------------------
    async def handle_webhook_route(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return method_not_allowed(request.method, "POST")
        video_id = request.match_info["id"]
        raw = await request.read()
        status_word = webhook_status(raw)
        wait = self.faults.webhook_wait(status_word)
        if wait:
            await asyncio.sleep(wait)
        fault = self.faults.next_webhook(video_id, status_word)
        if fault is not None:
            status, body = self.webhook_fault(request, video_id, raw, fault)
        else:
            status, body = self.answer_webhook(video_id, raw)
        self.store.record_webhook({"t": now_s(), "video_id": video_id, "body": parse_recorded(raw),
                                   "status": status, "response": body})
        log.info("webhook: video=%s -> %d %s", video_id, status,
                 body.get("error", "") if isinstance(body, dict) else body)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return js_json(body, status=status)

    def webhook_fault(self, request: web.Request, video_id: str, raw: bytes,
                      fault: int | str) -> tuple[int, Any]:
        """A scripted answer, not applied; ``reset`` is recorded (status null) and drops the connection."""
        log.info("webhook: video=%s simulated fault %s", video_id, fault)
        if fault == "reset":
            self.store.record_webhook({"t": now_s(), "video_id": video_id, "body": parse_recorded(raw),
                                       "status": None, "response": "reset"})
            drop_connection(request)
        return int(fault), {"error": "simulated"}

    def answer_webhook(self, video_id: str, raw: bytes) -> tuple[int, Any]:
        """§2 plus the body limit; returns the status and body to send."""
        limit = self.config.body_limit
        if limit and len(raw) > limit:
            return self.over_body_limit(len(raw), limit)
        now = now_s()
        outcome = evaluate_webhook(raw.decode("utf-8", "replace"), self.store.videos.get(video_id), now)
        if outcome.upload:
            self.store.add_upload(*outcome.upload)
        if outcome.status != 201:
            return outcome.status, outcome.body
        return 201, {"success": True, "updated": self.apply_webhook(video_id, outcome.patch or {}, now)}

    def over_body_limit(self, size: int, limit: int) -> tuple[int, Any]:
        """adapter-node's BODY_SIZE_LIMIT: 413 (default) or, as the route's catch sees it, a 500."""
        message = f"Content-length of {size} exceeds limit of {limit} bytes."
        if self.config.body_limit_mode == "route-500":
            return 500, {"error": f"Error: {message}"}
        return 413, message

    def apply_webhook(self, video_id: str, patch: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Write the patch; a non-string video URL fails Prisma, which ``updateVideo`` swallows (null)."""
        url = patch.get("final_video_url")
        if url is not None and not isinstance(url, str):
            return None
        return entry_view(self.store.apply_patch(video_id, patch, now))

    # ---- control routes -------------------------------------------------------------------
    async def create_jobs(self, request: web.Request) -> web.Response:
        """``POST /sim/jobs``: one spec → ``{"video_id","job_id"}``; with ``count`` → a list of those."""
        spec = await read_json_object(request)
        try:
            count = spec.get("count")
            if count is None:
                return sim_json(self.enqueue(spec), status=201)
            if spec.get("video_id") is not None:
                raise SpecError("video_id cannot be combined with count")
            return sim_json([self.enqueue(spec) for _ in range(int(count))], status=201)
        except (SpecError, KeyError, ValueError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}), content_type="application/json")

    def enqueue(self, spec: dict[str, Any]) -> dict[str, str]:
        """Create one video from ``spec`` (distinct created_at, fresh seed) and store it."""
        now = now_s()
        seq, created_at = self.store.next_created(now)
        video_id = spec.get("video_id") or new_video_id(seq, now)
        if not isinstance(video_id, str):
            raise SpecError("video_id: must be a string")
        used = {v["sim"].get("seed") for v in self.store.videos.values()}
        seed = secrets.randbelow(1_000_000)  # the server's Math.floor(Math.random() * 1000000)
        while seed in used:
            seed = secrets.randbelow(1_000_000)
        video = self.store.add_video(build_video(spec, video_id, seq, created_at, seed))
        log.info("jobs: queued video=%s template=%s shape=%s", video_id, video["sim"]["template"],
                 video["sim"]["shape"])
        return {"video_id": video_id, "job_id": video["job_id"]}

    async def list_videos(self, request: web.Request) -> web.Response:
        return sim_json([row_view(v) for v in self.store.videos.values()])

    async def get_video(self, request: web.Request) -> web.Response:
        """One row with its workflow and node weights (``sim`` included)."""
        video = self.store.videos.get(request.match_info["id"])
        if video is None:
            return sim_json({"error": "not found"}, status=404)
        return sim_json({**row_view(video), "sim": video["sim"]})

    async def list_webhooks(self, request: web.Request) -> web.Response:
        video_id = request.query.get("video_id")
        return sim_json([w for w in self.store.webhooks if video_id is None or w["video_id"] == video_id])

    async def get_upload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = self.store.uploads.get(name)
        if data is None:
            return web.Response(status=404, text="Not found")
        kind = "video/webm" if name.endswith(".webm") else "video/mp4"
        return web.Response(body=data, content_type=kind)

    async def get_media(self, request: web.Request) -> web.Response:
        """Input images for ``url`` mode (404 for a job created with ``claim_error: image_fetch``)."""
        name = request.match_info["name"]
        self.media_calls += 1
        if self.faults.media_delay:
            await asyncio.sleep(self.faults.media_delay)
        for video in self.store.videos.values():
            if name in video["sim"]["images"] and video["sim"].get("claim_error") != "image_fetch":
                return web.Response(body=image_bytes(video, name), content_type="image/png")
        return web.Response(status=404, text="File not found")

    async def get_faults(self, request: web.Request) -> web.Response:
        return sim_json(self.faults.view())

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.update(await read_json_object(request))
        except (ValueError, TypeError) as exc:
            return sim_json({"error": str(exc)}, status=400)
        return sim_json(self.faults.view())

    async def summary(self, request: web.Request) -> web.Response:
        return sim_json(self.store.summary())

    async def stats(self, request: web.Request) -> web.Response:
        return sim_json({"task_calls": self.task_calls, "webhook_calls": len(self.store.webhooks),
                         "media_calls": self.media_calls})

    async def list_stray(self, request: web.Request) -> web.Response:
        return sim_json(self.stray.view())

    async def reset(self, request: web.Request) -> web.Response:
        """Drop every video, webhook, upload, fault, stray request and call count."""
        self.store.reset()
        self.faults = Faults()
        self.stray.clear()
        self.task_calls.clear()
        self.media_calls = 0
        return sim_json({"reset": True})

    async def login_page(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>GmAnimato (simulated) login</body></html>", content_type="text/html")

    async def sim_not_found(self, request: web.Request) -> web.Response:
        return sim_json({"error": f"no such control route: {request.method} {request.path}"}, status=404)

    async def redirect_to_login(self, request: web.Request) -> web.Response:
        """Non-public routes of the real app redirect anonymous callers to the login page."""
        return web.Response(status=303, headers={"Location": "/login"})


# ---- serving ----------------------------------------------------------------------------------
class GmAnimatoSim:
    """The simulator served from the current event loop (for in-process use and for :func:`main`)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.app = GmAnimatoApp(config)
        self.runner: web.AppRunner | None = None
        self.url = ""

    @property
    def store(self) -> Store:
        return self.app.store

    async def start(self) -> str:
        """Enqueue ``--jobs`` (fresh state only), bind every host on one port; returns the base URL."""
        if not self.store.loaded:
            for _ in range(self.config.jobs):
                self.app.enqueue({"template": self.config.job_template})
        self.runner = web.AppRunner(self.app.build_app(), access_log_format='%a "%r" %s %b %Tfs')
        await self.runner.setup()
        sockets = bind_sockets(self.config.hosts, self.config.port)
        for sock in sockets:
            await web.SockSite(self.runner, sock, shutdown_timeout=1.0).start()
        port = sockets[0].getsockname()[1]
        self.url = f"http://{url_host(self.config.hosts[0])}:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_sockets(hosts: tuple[str, ...], port: int) -> list[socket.socket]:
    """Bind every host on the same port (the first host picks it when ``port`` is 0)."""
    sockets: list[socket.socket] = []
    for host in hosts:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sockets.append(sock)
        port = sock.getsockname()[1]
    return sockets


def parse_args(argv: list[str] | None) -> SimConfig:
    parser = argparse.ArgumentParser(prog="python -m worker.sim.gmanimato", description=__doc__.split("\n")[0])
    parser.add_argument("--host", action="append", help="address to listen on; repeatable (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port for every host; 0 picks a free one")
    parser.add_argument("--secret", default="", help="WORKER_TASK_SECRET; empty = not configured (500)")
    parser.add_argument("--origin", help="adapter-node ORIGIN: origin of callback and image URLs")
    parser.add_argument("--body-limit", type=int, default=0,
                        help=f"webhook body limit in bytes, 0 = off (production: {PRODUCTION_BODY_LIMIT})")
    parser.add_argument("--body-limit-mode", choices=("413", "route-500"), default="413",
                        help="answer to an oversized body: 413, or the 500 the route's catch would give")
    parser.add_argument("--state-file", type=Path, help="JSON file holding all state across restarts")
    parser.add_argument("--jobs", type=int, default=0, help="sample jobs to enqueue on a fresh start")
    parser.add_argument("--job-template", choices=TEMPLATE_NAMES, default="i2v")
    args = parser.parse_args(argv)
    return SimConfig(hosts=tuple(args.host or ["127.0.0.1"]), port=args.port, secret=args.secret,
                     origin=args.origin, body_limit=args.body_limit, body_limit_mode=args.body_limit_mode,
                     state_file=args.state_file, jobs=args.jobs, job_template=args.job_template)


async def serve(config: SimConfig) -> None:
    """Run until SIGTERM/SIGINT; announce the address on stdout once bound."""
    sim = GmAnimatoSim(config)
    url = await sim.start()
    print(f"listening on {url}", flush=True)
    log.info("gmanimato sim: %s (hosts %s, secret %s)", url, ", ".join(config.hosts),
             "set" if config.secret else "not configured")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
