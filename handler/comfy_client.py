"""ComfyUI over HTTP: upload an input, queue a prompt, read history, fetch an output, interrupt.

Every network failure becomes :class:`ComfyUnavailable` (retry may help); a ``400`` from ``/prompt``
becomes :class:`PromptRejected` whose message quotes ``error.message``, ``error.details`` and every
``node_errors`` entry, built by the pure :func:`describe_rejection`.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests

from handler.errors import ComfyUnavailable, InputError, PromptRejected, describe_network_error

log = logging.getLogger(__name__)


class ComfyClient:
    """HTTP calls to one ComfyUI instance at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, timeout: float = 30.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/ws"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} is unreachable ({describe_network_error(exc)})") from exc

    def probe(self, timeout: float = 3.0) -> bool:
        """True when ``GET /system_stats`` answers 200; never raises."""
        try:
            return self._request("GET", "/system_stats", timeout=timeout).status_code == 200
        except ComfyUnavailable:
            return False

    def system_stats(self) -> dict:
        return self._json(self._request("GET", "/system_stats"), "/system_stats")

    def upload_input(self, name: str, data: bytes) -> str:
        """Store ``data`` in ComfyUI's input folder as exactly ``name`` (overwriting); returns the name."""
        response = self._request("POST", "/upload/image", files={"image": (name, data)},
                                 data={"overwrite": "true", "type": "input"})
        if response.status_code == 400:
            raise InputError(f"ComfyUI refused the input file name {name!r}")
        if response.status_code == 413:
            raise InputError(f"input {name} ({len(data)} bytes) is larger than ComfyUI's upload limit")
        body = self._json(response, "/upload/image")
        stored = body.get("name")
        if stored != name:
            raise InputError(f"ComfyUI stored input {name!r} as {stored!r}; the workflow would not find it")
        return stored

    def queue_prompt(self, workflow: Mapping[str, Any], client_id: str, prompt_id: str) -> dict:
        """``POST /prompt`` with our own ``prompt_id``; returns ``node_errors`` of an accepted prompt."""
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise PromptRejected(*describe_rejection(_maybe_json(response)))
        data = self._json(response, "/prompt")
        if data.get("prompt_id") not in (None, prompt_id):
            raise ComfyUnavailable(f"ComfyUI queued the prompt as {data.get('prompt_id')!r}, "
                                   f"not the id {prompt_id!r} we chose")
        return data.get("node_errors") or {}

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a finished prompt, or None while it is queued, running or unknown."""
        data = self._json(self._request("GET", f"/history/{prompt_id}"), "/history")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def is_queued(self, prompt_id: str) -> bool:
        """True when ``prompt_id`` is running or pending in ComfyUI's queue."""
        data = self._json(self._request("GET", "/queue"), "/queue")
        items = list(data.get("queue_running") or []) + list(data.get("queue_pending") or [])
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)

    def find_prompt(self, prompt_id: str) -> tuple[dict | None, bool]:
        """(its history entry or None, whether ComfyUI knows ``prompt_id`` at all): history, else the
        queue, else history once more (it may have finished between the two calls)."""
        entry = self.history(prompt_id)
        if entry is not None:
            return entry, True
        if self.is_queued(prompt_id):
            return None, True
        entry = self.history(prompt_id)
        return entry, entry is not None

    def fetch_output(self, filename: str, subfolder: str, kind: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        response = self._request("GET", "/view", params=params)
        if response.status_code == 404:
            raise ComfyUnavailable(f"ComfyUI has no output file {subfolder + '/' if subfolder else ''}"
                                   f"{filename} (GET /view answered 404)")
        self._check(response, "/view")
        return response.content

    def cancel(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` whether it runs (interrupt) or still waits (queue delete); never raises."""
        try:
            self._request("POST", "/queue", json={"delete": [prompt_id]}, timeout=1)
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id}, timeout=1)
        except ComfyUnavailable:
            pass

    def _json(self, response: requests.Response, what: str) -> Any:
        self._check(response, what)
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUnavailable(f"ComfyUI {what} answered non-JSON ({response.text[:80]!r})") from exc

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code >= 400:
            raise ComfyUnavailable(f"ComfyUI {what} answered HTTP {response.status_code}: "
                                   f"{response.text[:200]!r}")


def describe_rejection(body: Any) -> tuple[str, list[str]]:
    """A 400 body of ``/prompt`` -> (one-line message, one detail line per node error)."""
    if not isinstance(body, dict):
        return "ComfyUI rejected the workflow (HTTP 400)", []
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    details = node_error_lines(body.get("node_errors"))
    parts = [str(error.get("message") or "invalid prompt").rstrip(".")]
    if error.get("details"):
        parts.append(str(error["details"]))
    message = "ComfyUI rejected the workflow: " + ": ".join(parts)
    if details:
        message += " — " + "; ".join(details)
    return message, details


def node_error_lines(node_errors: Any) -> list[str]:
    """``node_errors`` -> ``node 14 (LoadImage): Custom validation failed for node: image - ...``."""
    if not isinstance(node_errors, dict):
        return []
    lines = []
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, dict) else {}
        class_type = entry.get("class_type") or "?"
        for err in entry.get("errors") or [{}]:
            text = str(err.get("message") or "invalid")
            if err.get("details"):
                text += f": {err['details']}"
            lines.append(f"node {node_id} ({class_type}): {text}")
    return lines


def _maybe_json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
