"""A task's callback_url, huge webhook answers and signed webhooks, against the real local_worker.py.

A callback on a host that is neither api.url's origin nor in ``api.callback_hosts`` is not used (the
derived URL is, with a warning naming the one set aside); a listed one is. A callback answering 300 MB
does not make the worker read it. With ``webhook.signing_secret`` every webhook carries Standard
Webhooks headers, and every attempt of one final body the same ``webhook-id``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time

import psutil
import pytest

from tests.conftest import wait_until
from tests.hostile.conftest import start_local_worker

RSS_LIMIT = 250 * 1024 * 1024


class RssSampler:
    """The largest resident set size of a process, sampled every 20 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
                self.samples += 1
            except psutil.Error:
                return
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def verify(key: bytes, headers: dict[str, str], body: bytes) -> None:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"> with the decoded key."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert msg_id and abs(int(stamp) - time.time()) < 300, headers
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    signatures = headers["webhook-signature"].split()
    assert "v1," + expected.decode() in signatures, (headers, body[:200])


@pytest.mark.timeout(120)
def test_callback_hosts_rule_huge_answers_and_signed_webhooks(gma, comfy, bucket, processes, tmp_path, probes):
    listed, unlisted = probes("127.0.0.2"), probes("127.0.0.3")
    key = secrets.token_bytes(32)
    foreign = gma.add_job(template="i2v", input_patch={"callback_url": unlisted.url + "/callback"})
    allowed = gma.add_job(template="i2v", input_patch={"callback_url": listed.url + "/callback"})
    listed.script_finals([500])                             # the first final attempt fails: it is sent again
    huge = gma.add_job(template="i2v", input_patch={"callback_url": listed.url + "/big-answer?mb=300"})
    good = gma.add_job(template="i2v")
    worker = start_local_worker(processes, tmp_path, gma, comfy, bucket,
                                api={"callback_hosts": [f"127.0.0.2:{listed.port}"]},
                                webhook={"signing_secret": "whsec_" + base64.b64encode(key).decode()})

    with RssSampler(worker.pid) as rss:
        wait_until(lambda: worker.lines(f"Webhook completed for local-{huge} delivered (HTTP 200)"), 60, 0.05,
                   "the webhook answered with 300 MB delivered")
    assert rss.samples > 5 and rss.peak < RSS_LIMIT, f"worker RSS peaked at {rss.peak / 2 ** 20:.0f} MiB"
    gma.wait_final([foreign, good], timeout=60)

    # not listed: the derived URL at GmAnimato, a warning naming the one set aside, not one hit at the probe
    gma.one_completed(foreign)
    assert unlisted.hits == []
    warned = worker.lines(f"callback_url {unlisted.url}/callback is neither on api.url's origin nor in "
                          "api.callback_hosts")
    assert len(warned) == 1 and f"/api/i2v-webhook/{foreign}" in warned[0], warned
    gma.one_completed(good)

    # listed: every webhook of that job went to the probe (none to GmAnimato), each one signed
    assert gma.webhooks(allowed) == [] and gma.webhooks(huge) == []
    hits, bodies = listed.hits_to("/callback"), listed.callbacks
    assert len(hits) == len(bodies) >= 3
    for hit, (_, body) in zip(hits, bodies):
        assert json.loads(body)["id"] == f"local-{allowed}"
        verify(key, hit.headers, body)
    finals = [(hit, body) for hit, (_, body) in zip(hits, bodies)
              if json.loads(body)["status"] in ("completed", "failed")]
    assert len(finals) == 2, [json.loads(b)["status"] for _, b in finals]     # 500, then 200
    assert json.loads(finals[0][1])["status"] == "completed" and finals[0][1] == finals[1][1]
    assert finals[0][0].headers["webhook-id"] == finals[1][0].headers["webhook-id"]
    progress_ids = [hit.headers["webhook-id"] for hit, (_, body) in zip(hits, bodies)
                    if json.loads(body)["status"] == "processing"]
    assert progress_ids and finals[0][0].headers["webhook-id"] not in progress_ids
    big = listed.hits_to("/big-answer")
    assert big and all("webhook-signature" in hit.headers for hit in big)

    worker.assert_alive()
    assert gma.stray() == []
    bucket.assert_keys_under([f"local-{v}" for v in (foreign, allowed, huge, good)])
    worker.assert_clean_log()
    worker.stop()
