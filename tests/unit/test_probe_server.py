"""The hostile-suite probe server (tests/hostile/servers.py): every route, the hit log, a quick stop.

Requests have bounded timeouts and every wait has a deadline; nothing sleeps a fixed time.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.hostile.servers import MIB, TRICKLE_LENGTH, ProbeServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def probe() -> Iterator[ProbeServer]:
    with ProbeServer(host="127.0.0.1") as server:
        yield server


def test_png_html_and_unknown_routes(probe: ProbeServer) -> None:
    png = requests.get(probe.url + "/png", timeout=5)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and int(png.headers["Content-Length"]) == len(png.content)
    html = requests.get(probe.url + "/html", timeout=5)
    assert html.headers["Content-Type"].startswith("text/html") and b"<html>" in html.content
    assert requests.get(probe.url + "/nope", timeout=5).status_code == 404


def test_hits_are_recorded_with_headers_and_body_size(probe: ProbeServer) -> None:
    requests.get(probe.url + "/png?x=1", headers={"X-Probe": "yes"}, timeout=5)
    requests.put(probe.url + "/nope", data=b"z" * 777, timeout=5)
    requests.post(probe.url + "/callback", data=iter([b"ab", b"cd"]), timeout=5)  # chunked body
    hits = probe.wait_for_hits(3, timeout=5)
    assert [(h.method, h.path, h.body_size) for h in hits] == [("GET", "/png?x=1", 0), ("PUT", "/nope", 777),
                                                              ("POST", "/callback", 4)]
    _, _, headers, _ = hits[0]  # a Hit unpacks as (method, path, headers, body_size)
    assert headers["x-probe"] == "yes" and headers["host"] == probe.url.removeprefix("http://")
    assert probe.callbacks == [("/callback", b"abcd")]
    assert probe.hits_to("/png") == hits[:1]
    with pytest.raises(AssertionError):
        probe.wait_for_hits(1, timeout=0.2, path="/html")


def test_callback_records_the_body_and_answers_success(probe: ProbeServer) -> None:
    body = {"id": "local-x", "status": "completed"}
    resp = requests.post(probe.url + "/callback?sig=1", json=body, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"success": True}
    assert [(path, json.loads(data)) for path, data in probe.callbacks] == [("/callback?sig=1", body)]


def test_huge_and_big_answer_stream_their_sizes(probe: ProbeServer) -> None:
    huge = requests.get(probe.url + "/huge?mb=3", timeout=10)
    assert int(huge.headers["Content-Length"]) == len(huge.content) == 3 * MIB
    assert huge.content.count(b"\0") == 3 * MIB
    big = requests.post(probe.url + "/big-answer?mb=2", json={}, timeout=10)
    assert big.status_code == 200 and len(big.content) == 2 * MIB and big.json() == {"success": True}


def test_redirect_points_where_asked(probe: ProbeServer) -> None:
    target = probe.url + "/png"
    resp = requests.get(probe.url + "/redirect", params={"to": target}, allow_redirects=False, timeout=5)
    assert resp.status_code == 302 and resp.headers["Location"] == target
    followed = requests.get(probe.url + "/redirect", params={"to": target}, timeout=5)
    assert followed.headers["Content-Type"] == "image/png" and len(followed.history) == 1


def test_slow_answer_takes_its_time(probe: ProbeServer) -> None:
    started = time.monotonic()
    resp = requests.get(probe.url + "/slow-answer?s=0.4", headers={"Connection": "close"}, timeout=5)
    assert resp.json() == {"success": True} and time.monotonic() - started >= 0.4
    with pytest.raises(requests.Timeout):
        requests.get(probe.url + "/slow-answer?s=30", timeout=0.3)
    probe.wait_idle(timeout=5)  # the handler noticed the client left


def test_trickle_sends_bytes_slowly_and_ends_when_the_client_leaves(probe: ProbeServer) -> None:
    started = time.monotonic()
    resp = requests.get(probe.url + "/trickle?every=0.2", stream=True, timeout=5)
    assert int(resp.headers["Content-Length"]) == TRICKLE_LENGTH
    assert resp.raw.read(2) == b"\0\0"
    assert time.monotonic() - started >= 0.2  # the second byte came one interval after the first
    assert probe.open_connections == 1
    resp.close()
    probe.wait_idle(timeout=5)


def test_binds_other_loopback_addresses() -> None:
    with ProbeServer(host="127.0.0.2") as two, ProbeServer(host="127.0.0.3") as three:
        assert two.url.startswith("http://127.0.0.2:") and three.url.startswith("http://127.0.0.3:")
        for server in (two, three):
            assert requests.get(server.url + "/png", timeout=5).status_code == 200
            assert server.hits[0].headers["host"] == server.url.removeprefix("http://")


def test_stop_is_quick_and_frees_port_and_threads() -> None:
    server = ProbeServer().start()
    port = server.port
    trickle = requests.get(server.url + "/trickle", stream=True, timeout=5)
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # a connection that never asks
    session = requests.Session()
    session.get(server.url + "/png", timeout=5)  # a keep-alive connection left open
    server.wait_for_hits(2, timeout=5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0
    assert server.open_connections == 0
    assert not [t for t in threading.enumerate() if t.name.startswith(f"probe-127.0.0.1:{port}")]
    with ProbeServer(port=port) as again:  # the port is free at once
        assert requests.get(again.url + "/png", timeout=5).status_code == 200
    for closable in (trickle, idle, session):
        closable.close()
