"""Hostile claim answers and task ids, against the real local_worker.py.

A claim answer that is an HTML page is a misconfiguration (one line, slow retries); one that cannot be
decoded (cut short, too deep, not UTF-8, not JSON) is a job lost in transit: reported ``failed`` when its
head names an issued ``local-`` id, otherwise one error line, and claims back off while such answers
keep coming. Ids that are not GmAnimato's ([A-Za-z0-9_-]) never reach a URL.
"""
from __future__ import annotations

from itertools import pairwise

import pytest

from tests.hostile.conftest import PNG_URI, deep, raw_bytes, raw_text, start_local_worker

FORGED_AT = "2026-01-01 00:00:00"
FORGED = f"{FORGED_AT} - local-worker - INFO - Job local-forged completed"


def gaps(calls: list[tuple[float, int]]) -> list[float]:
    return [round(b[0] - a[0], 3) for a, b in pairwise(calls)]


@pytest.mark.timeout(90)
def test_unreadable_claims_with_an_issued_id_are_reported_and_the_next_claim_follows_at_once(
        gma, comfy, bucket, processes, tmp_path):
    truncated = gma.add_job(template="i2v")                     # the oldest queued: the cut claim takes it
    too_deep, deeper_than_64, not_utf8 = (gma.add_job(status="processing") for _ in range(3))
    early = gma.add_job(template="i2v", shape="early", with_workflow=True, task_patch={"job_id": ".."})
    newline = gma.add_job(template="i2v", input_patch={"images": [{"name": "in.png\n" + FORGED, "image": PNG_URI}]})
    comfy_error = gma.add_job(template="i2v", patch={"44": {"_meta": {"sim": {   # a multi-line ComfyUI error
        "error": "CUDA out of memory\n" + FORGED, "error_type": "torch.OutOfMemoryError"}}}})
    good = gma.add_job(template="i2v")
    gma.raw(raw_text("<!doctype html><html><body>Sign in</body></html>", "text/html; charset=utf-8"),
            raw_text("  <html><body>proxy error</body></html>"),          # '<' first, JSON content type
            {"truncate": True},
            deep(200_000, too_deep),
            deep(100, deeper_than_64),
            raw_bytes(b'{"id": "local-' + not_utf8.encode() + b'", "input": {"workflow": "\xff\xfe\xfd"}}'))
    worker = start_local_worker(processes, tmp_path, gma, comfy, bucket,
                                api={"poll_interval": 3, "auth_retry_interval": 1, "backoff_cap": 2})

    gma.wait_final([good], timeout=60)
    gma.one_completed(good)
    gma.one_failed(truncated, "not valid JSON", "cut short")
    gma.one_failed(too_deep, "nested too deep")
    gma.one_failed(deeper_than_64, "nests deeper than 64 levels")
    gma.one_failed(not_utf8, "not valid JSON")
    gma.one_failed(early, "job_id", "'..'")
    gma.one_failed(newline, "plain file name")
    gma.one_failed(comfy_error, "CUDA out of memory")
    assert {gma.videos()[v]["status"] for v in (truncated, too_deep, not_utf8, early, newline)} == {"failed"}

    calls = gma.task_calls()
    assert [status for _, status in calls[:10]] == [200] * 10, calls
    between = gaps(calls)
    # two HTML pages: one line, and each waited api.auth_retry_interval (1 s) before the next claim
    assert len(worker.lines("HTML page")) == 1, worker.lines("HTML page")
    assert between[0] >= 0.9 and between[1] >= 0.9, between
    # each reported bad task (claims 3-9) is followed by the next claim at once, not after poll_interval (3 s)
    assert all(gap < 1.5 for gap in between[2:9]), between
    assert not worker.lines("has no usable id")

    worker.assert_alive()
    assert gma.stray() == []
    bucket.assert_keys_under([f"local-{good}"])
    assert worker.output().count(FORGED[:60]) >= 2       # the planted text reached the log, inside lines
    worker.assert_clean_log(forged=(FORGED_AT,))
    worker.stop()


@pytest.mark.timeout(90)
def test_unreadable_claims_without_a_usable_id_are_lost_in_one_line_and_claims_back_off(
        gma, comfy, bucket, processes, tmp_path):
    traversal = gma.add_job(template="i2v", task_patch={"id": "local-../../../admin/x"})
    query = gma.add_job(template="i2v", task_patch={"id": "local-q?x=1"})
    good = gma.add_job(template="i2v")
    gma.raw(deep(200_000),                                              # no id at all
            raw_text('{"id": "local-q?x=1", "input": {"images": [{"na'),  # cut short, id not GmAnimato's
            raw_bytes(b'{"input": "\xff\xfe"}'))                           # not UTF-8, no id
    worker = start_local_worker(processes, tmp_path, gma, comfy, bucket,
                                api={"poll_interval": 0.5, "backoff_cap": 2})

    gma.wait_final([good], timeout=60)
    gma.one_completed(good)
    lost = worker.lines("cannot run and has no usable id")
    assert len(lost) == 5, lost                                          # one line per lost answer
    assert any("admin" in line for line in lost) and any("q?x=1" in line for line in lost)
    assert gma.webhooks(traversal) == [] and gma.webhooks(query) == []
    assert {h["video_id"] for h in gma.all_webhooks()} == {good}
    assert gma.videos()[traversal]["status"] == gma.videos()[query]["status"] == "processing"

    calls = gma.task_calls()
    assert [status for _, status in calls[:6]] == [200] * 6, calls
    between = gaps(calls)
    assert between[0] <= 0.5 + 0.35, between            # the first lost answer: next claim within poll_interval
    first = calls[0][0]
    in_window = [t for t, _ in calls if t - first < 6.0]
    # five unreportable answers in a row back off: at a steady 0.5 s there would be 12 claims in 6 s
    assert 3 <= len(in_window) <= 6, between
    assert between[3] > 1.2 and between[4] > 1.2, between

    worker.assert_alive()
    strays = gma.stray()
    assert strays == [], strays                          # no /admin/x, no ?x=1 anywhere
    bucket.assert_keys_under([f"local-{good}"])
    worker.assert_clean_log()
    worker.stop()
