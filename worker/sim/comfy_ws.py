"""The websocket side of the simulated ComfyUI: the socket table and every way a frame goes out.

Mirrors ``server.PromptServer`` of ComfyUI 0.3.64:

* ``/ws?clientId=X`` registers the socket under ``X`` (a fresh 32-hex id without one) and sends
  ``status`` with ``sid`` first; a reconnect under the running prompt's client id also gets a bare
  ``executing {node}``.
* A second socket with the same id replaces the first in the table; the first stays open and gets
  nothing more. When *any* socket closes, its id is removed from the table, even if a newer socket
  had taken that id (ComfyUI's ``finally: self.sockets.pop(sid)``): a client should close an old socket
  before opening its replacement.
* Only a first valid-JSON ``feature_flags`` message counts; the server answers with its own flags.
"""
from __future__ import annotations

import json
import logging
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_PNG_FORMAT = 2
_SEND_ERRORS = (aiohttp.ClientError, ConnectionResetError, BrokenPipeError, ConnectionError, RuntimeError)


@dataclass(eq=False)
class Client:
    """One open websocket connection."""

    sid: str
    ws: web.WebSocketResponse
    request: web.Request
    flags: dict = field(default_factory=dict)


class SocketHub:
    """Owns the sockets; the executor sets ``client_id``/``last_node_id`` and sends through it."""

    def __init__(self, server_features: dict, queue_info: Callable[[], dict]) -> None:
        self.server_features = server_features
        self.queue_info = queue_info
        self.table: dict[str, Client] = {}
        self.live: set[Client] = set()
        self.client_id: str | None = None
        self.last_node_id: str | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The ``/ws`` route: register, greet, read client messages until the socket closes."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.table.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        client = Client(sid, ws, request)
        self.table[sid] = client
        self.live.add(client)
        try:
            await self._greet(client)
            await self._read(client)
        finally:
            self.live.discard(client)
            self.table.pop(sid, None)
        return ws

    async def _greet(self, client: Client) -> None:
        await self._send_text(client, "status", {"status": self.queue_info(), "sid": client.sid})
        if self.client_id == client.sid and self.last_node_id is not None:
            await self._send_text(client, "executing", {"node": self.last_node_id})

    async def _read(self, client: Client) -> None:
        first = True
        async for msg in client.ws:
            if msg.type == aiohttp.WSMsgType.ERROR:
                logger.warning("ws connection closed with exception %s", client.ws.exception())
            elif msg.type == aiohttp.WSMsgType.TEXT:
                first = await self._on_text(client, msg.data, first)

    async def _on_text(self, client: Client, text: str, first: bool) -> bool:
        """Handle one client text message; returns whether the next valid JSON is still 'first'."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            logger.warning("Invalid JSON received from client %s: %s", client.sid, text)
            return first
        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
            client.flags = data.get("data", {}) or {}
            await self._send_text(client, "feature_flags", self.server_features)
        return False

    # ------------------------------------------------------------ sending

    async def send_json(self, event: str, data: dict, sid: str | None = None) -> None:
        """Send ``{"type": event, "data": data}`` to ``sid``'s current socket, or to all when sid is None."""
        for client in self._targets(sid):
            await self._send_text(client, event, data)

    async def broadcast_status(self) -> None:
        """The queue-changed ``status`` frame, to every registered socket."""
        await self.send_json("status", {"status": self.queue_info()})

    async def send_preview(self, sid: str | None, png: bytes, meta: dict) -> None:
        """A binary PNG preview: type 4 (with ``meta``) to a metadata client, type 1 otherwise."""
        for client in self._targets(sid):
            await self._send_binary(client, self.preview_frame(client, png, meta))

    def wants_metadata(self, sid: str | None) -> bool:
        """Does ``sid``'s socket use preview frames with metadata (type 4)?"""
        client = self.table.get(sid) if sid is not None else None
        return bool(client and client.flags.get("supports_preview_metadata"))

    def preview_frame(self, client: Client, png: bytes, meta: dict) -> bytes:
        """The binary frame for one preview as this client expects it."""
        if self.client_id is not None and self.wants_metadata(client.sid):
            blob = json.dumps(meta).encode("utf-8")
            return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob)) + blob + png
        return struct.pack(">II", PREVIEW_IMAGE, _PNG_FORMAT) + png

    async def drop_all(self) -> None:
        """Cut every open websocket connection at once, without a close frame."""
        for client in list(self.live):
            transport = client.request.transport
            if transport is not None:
                transport.abort()
            else:
                await client.ws.close()

    def _targets(self, sid: str | None) -> list[Client]:
        if sid is None:
            return list(self.table.values())
        client = self.table.get(sid)
        return [client] if client is not None else []

    async def _send_text(self, client: Client, event: str, data: dict) -> None:
        try:
            await client.ws.send_str(json.dumps({"type": event, "data": data}))
        except _SEND_ERRORS as err:
            logger.warning("send error: %s", err)

    async def _send_binary(self, client: Client, payload: bytes) -> None:
        try:
            await client.ws.send_bytes(payload)
        except _SEND_ERRORS as err:
            logger.warning("send error: %s", err)
