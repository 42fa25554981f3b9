"""Webhook payloads and one job's ordered delivery (against a recording stand-in for the client)."""
from __future__ import annotations

import threading
import time

from worker.jobs.errors import ApiUnavailable
from worker.jobs.webhooks import (JobWebhooks, completed_payload, failed_payload, progress_due,
                                  progress_payload, send_final)


class RecordingApi:
    """Answers webhooks from a script of statuses (an exception instance is raised instead)."""

    def __init__(self, script=(), delay: float = 0.0):
        self.script = list(script)
        self.calls: list[dict] = []
        self.delay = delay
        self.lock = threading.Lock()

    def post_webhook(self, url, body, timeout=None, message_id=""):
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(body)
            answer = self.script.pop(0) if self.script else 201
        if isinstance(answer, Exception):
            raise answer
        return answer


def hooks(api, **kw) -> JobWebhooks:
    h = JobWebhooks(api, "http://gm/api/i2v-webhook/v", "local-v", kw.get("progress_interval", 2.0))
    h.sleeps = []
    h.tries = kw.get("max_retries", 3) + 1
    return h


def final(h: JobWebhooks, body: dict):
    """What the outbox does: stop progress for good, then send the final body with retries."""
    h.stop_progress()
    return send_final(h.api, h.target, body, h.tries, 1.0, 30.0, h.sleeps.append)


def test_payloads():
    assert progress_payload("local-v", {"percentage": 5.0}) == \
        {"id": "local-v", "status": "processing", "progress": {"percentage": 5.0}}
    assert completed_payload("local-v", [{"filename": "a.mp4"}])["status"] == "completed"
    body = failed_payload("local-v", "x" * 5000, ["d1"])
    assert body["status"] == "failed" and len(body["error"]) == 2000 and body["details"] == ["d1"]
    assert "details" not in failed_payload("local-v", "boom")


def test_progress_due():
    assert progress_due(None, 10.0, 2.0, False)
    assert not progress_due(9.0, 10.0, 2.0, False)
    assert progress_due(9.0, 10.0, 2.0, True)
    assert progress_due(8.0, 10.0, 2.0, False)


def test_final_is_retried_on_500_and_delivered_once():
    api = RecordingApi([500, 500, 201])
    h = hooks(api)
    delivery = final(h, completed_payload("local-v", []))
    assert (delivery.outcome, delivery.attempts, delivery.status) == ("delivered", 3, 201)
    assert [c["status"] for c in api.calls] == ["completed"] * 3
    assert h.sleeps[0] < h.sleeps[1]


def test_permanent_refusal_is_not_retried():
    for status in (400, 403, 404, 413):
        api = RecordingApi([status])
        delivery = final(hooks(api), failed_payload("local-v", "boom"))
        assert (delivery.outcome, delivery.attempts, len(api.calls)) == ("permanent", 1, 1)


def test_network_errors_are_retried_then_given_up():
    api = RecordingApi([ApiUnavailable("down")] * 10)
    delivery = final(hooks(api, max_retries=2), failed_payload("local-v", "boom"))
    assert (delivery.outcome, len(api.calls)) == ("gave_up", 3)


def test_no_progress_after_final_even_with_slow_progress_in_flight():
    api = RecordingApi(delay=0.05)
    h = hooks(api, progress_interval=0.0)
    for i in range(20):
        h.progress({"percentage": float(i)}, node_changed=True)
    final(h, completed_payload("local-v", []))
    h.progress({"percentage": 99.0}, node_changed=True)
    statuses = [c["status"] for c in api.calls]
    assert statuses[-1] == "completed" and statuses.count("completed") == 1
    assert all(s == "processing" for s in statuses[:-1])
    percentages = [c["progress"]["percentage"] for c in api.calls[:-1]]
    assert percentages == sorted(percentages)          # in order, older ones coalesced away


def test_progress_is_throttled_but_node_changes_pass():
    api = RecordingApi()
    h = hooks(api, progress_interval=3600.0)
    h.progress({"percentage": 1.0}, node_changed=False)
    h.progress({"percentage": 2.0}, node_changed=False)   # throttled
    h.progress({"percentage": 3.0}, node_changed=True)    # node change passes
    deadline = time.monotonic() + 5
    while not any(c["progress"]["percentage"] == 3.0 for c in list(api.calls)) and time.monotonic() < deadline:
        time.sleep(0.01)
    final(h, completed_payload("local-v", []))
    sent = [c.get("progress", {}).get("percentage") for c in api.calls if c["status"] == "processing"]
    assert 2.0 not in sent and sent[-1] == 3.0


def test_after_end_progress_nothing_more_is_offered_but_the_one_in_flight_is_waited_for():
    api = RecordingApi(delay=0.3)
    h = hooks(api, progress_interval=0.0)
    assert h.progress({"percentage": 10.0}, node_changed=True)
    deadline = time.monotonic() + 5
    while not h._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    h.end_progress()                                      # the tail: no wait here
    assert not h.progress({"percentage": 60.0}, node_changed=True)
    final(h, completed_payload("local-v", []))            # waits for the 10 % one, if still in flight
    statuses = [c["status"] for c in api.calls]
    assert statuses.count("completed") == 1 and statuses[-1] == "completed"
    assert [c["progress"]["percentage"] for c in api.calls if c["status"] == "processing"] in ([], [10.0])


def test_webhooks_from_different_threads_share_one_warm_connection():
    import http.server
    import threading

    from worker.jobs.api import GmAnimatoClient

    peers = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            peers.append(self.client_address[1])
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = GmAnimatoClient(f"http://127.0.0.1:{server.server_port}", "secret", 5.0)
        url = f"http://127.0.0.1:{server.server_port}/api/i2v-webhook/v"
        for status in ("processing", "completed", "failed"):          # as a job's threads would, in turn
            thread = threading.Thread(target=client.post_webhook, args=(url, {"id": "local-v", "status": status}))
            thread.start()
            thread.join(10)
        assert len(peers) == 3 and len(set(peers)) == 1, f"one connection, reused: {peers}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_new_start_reports_progress_again_after_the_tail_of_the_last_one():
    api = RecordingApi()
    h = hooks(api, progress_interval=0.0)
    h.end_progress()                                      # the tail of start 1; then ComfyUI died
    assert not h.progress({"percentage": 80.0}, node_changed=True)
    h.resume_progress()                                   # start 2
    assert h.progress({"percentage": 10.0}, node_changed=True)
    deadline = time.monotonic() + 5
    while not api.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    final(h, completed_payload("local-v", []))
    assert [c["status"] for c in api.calls] == ["processing", "completed"]
