"""Edges of the trust boundary found in review: bytes that two parsers read differently, headers no
parser expected, text no encoder takes, frames and answers cut or oversized."""
from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest
import requests
import websocket

from handler.bounded import BrokenOff, TooSlow, error_text, read_capped
from handler.comfy_events import cap_frames
from handler.errors import InputError
from handler.inputs import InputRules, download, is_public_address, redirect_allowed_plainly
from handler.untrusted import safe_text, url_origin
from worker.config import ConfigError, load_config
from worker.jobs.api import _salvaged
from worker.jobs.signing import encode_body
from worker.jobs.task import TaskError, TaskRules, callback_allowed, parse_task
from worker.jobs.webhooks import failed_payload


class FakeRaw:
    def __init__(self, chunks, fail_after=None):
        self.chunks, self.fail_after, self.reads = list(chunks), fail_after, 0

    def read1(self, amount, decode_content=True):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise OSError("connection reset")
        return self.chunks.pop(0) if self.chunks else b""


class FakeResponse:
    def __init__(self, chunks, headers=None, fail_after=None):
        self.headers = headers or {}
        self.raw = FakeRaw(chunks, fail_after)


def test_a_lone_surrogate_is_escaped_and_a_webhook_body_with_one_encodes():
    assert safe_text("a\udcffb") == "a\\udcffb"
    body = failed_payload("local-x", "ComfyUI rejected \udcff.png")
    assert b"\\\\udcff" in encode_body(body)
    assert encode_body({"id": "local-x", "current_node": "\udcff"}).decode("ascii")   # ASCII JSON: always encodes


@pytest.mark.parametrize("length", ["²", "³", "¹", "12x", "-5"])
def test_a_content_length_no_parser_expected_is_ignored(length):
    response = FakeResponse([b'{"ok": 1}'], {"Content-Length": length})
    assert bytes(read_capped(response, 1024)) == b'{"ok": 1}'
    assert error_text(FakeResponse([b"boom"], {"Content-Length": length})) == "boom"


def test_error_text_never_raises():
    assert error_text(FakeResponse([b"x"], fail_after=0)) == ""


def test_an_answer_broken_off_keeps_its_head_for_the_ids():
    head = b'{"id": "local-abc123", "input": {"workflow": '
    with pytest.raises(BrokenOff) as info:
        read_capped(FakeResponse([head], fail_after=1), 1 << 20)
    assert info.value.head == head
    assert _salvaged(info.value.head, "http://gm")["job_id"] == "local-abc123"
    assert isinstance(TooSlow(b"x").head, bytes)


@pytest.mark.parametrize("url", ["http://evil:1\\@gm.example:5173/api/i2v-webhook/v",
                                 "http://gm.example:5173\\@evil/x", "http://gm.example:5173/ x",
                                 "http://gm.example:99999/x"])
def test_urls_two_parsers_read_differently_are_refused(url):
    with pytest.raises(ValueError):
        url_origin(url)
    assert not callback_allowed(url, TaskRules("http://gm.example:5173"))
    task = {"id": "local-v", "input": {"workflow": {"1": {"class_type": "K"}}, "callback_url": url}}
    with pytest.raises(TaskError, match="not an http\\(s\\) URL"):
        parse_task(task, "http://gm.example:5173")


def test_a_redirect_hop_with_a_backslash_is_not_the_same_host():
    with pytest.raises(ValueError):
        redirect_allowed_plainly("http://127.0.0.1:8000/a.png", "http://127.0.0.2:9\\@127.0.0.1:8000/x",
                                 InputRules())


def test_http_to_https_on_the_same_host_is_followed_plainly():
    assert redirect_allowed_plainly("http://gm.internal/i.png", "https://gm.internal/i.png", InputRules())
    assert not redirect_allowed_plainly("http://gm.internal/i.png", "https://gm.internal:8443/i.png", InputRules())


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("::ffff:127.0.0.1", False), ("64:ff9b::10.0.0.1", False), ("64:ff9b::8.8.8.8", True),
    ("2002:0a00:0001::1", False), ("::127.0.0.1", False), ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),
    ("169.254.169.254", False), ("0.0.0.0", False), ("fd00::1", False), ("2001:4860:4860::8888", True)])
def test_public_means_public_through_ipv6_wrappers_too(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.fixture
def redirector():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", self.path[1:])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("location", ["http://h:99999/", "http://[::1/", "http://a\\@127.0.0.1/x"])
def test_a_bad_redirect_location_is_an_input_error(redirector, location):
    with pytest.raises(InputError):
        download("a.png", f"{redirector}/{location}", requests.Session())


def test_a_websocket_frame_over_the_cap_is_refused_before_it_is_read():
    class Buffer:
        def recv_strict(self, size):
            return b"x" * size

    class Socket:
        frame_buffer = Buffer()
    ws = Socket()
    cap_frames(ws, limit=1000)
    assert ws.frame_buffer.recv_strict(1000) == b"x" * 1000
    with pytest.raises(websocket.WebSocketPayloadException, match="over 1000"):
        ws.frame_buffer.recv_strict(1001)


def test_host_lists_and_public_addresses_are_checked_in_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inputs: {treat_as_public: [nope]}\n")
    with pytest.raises(ConfigError, match="inputs.treat_as_public"):
        load_config(path, env={})
    path.write_text("api: {callback_hosts: ['a b']}\n")
    with pytest.raises(ConfigError, match="api.callback_hosts"):
        load_config(path, env={})
