"""The simulated GmAnimato's ``progress_delay`` fault: a slow progress endpoint, fast final webhooks.

``POST /sim/faults {"progress_delay": s}`` holds up only webhooks whose body status is ``processing``;
``completed``/``failed`` ones are answered at once. The simulator runs as a real process; nothing here
sleeps: the test waits on conditions with deadlines, and the only timing it asserts is a lower bound
(the delayed call took at least the delay) and a generous upper one (the final call did not wait it).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.stack import SECRET, GmAnimato, running_gmanimato
from worker.sim.gma_http import Faults

pytestmark = pytest.mark.timeout(60)

DELAY = 3.0                         # long enough that a final webhook answered meanwhile did not wait


@pytest.fixture(scope="module")
def gma() -> Iterator[GmAnimato]:
    with running_gmanimato() as handle:
        yield handle


def claimed(url: str) -> tuple[str, str]:
    """Queue one job and claim it; (video id, job id)."""
    job = requests.post(f"{url}/sim/jobs", json={}, timeout=5).json()
    task = requests.get(f"{url}/api/worker/task", headers={"x-worker-secret": SECRET}, timeout=10).json()
    assert task["id"] == job["job_id"]
    return job["video_id"], job["job_id"]


def recorded(url: str, video_id: str) -> list[dict[str, Any]]:
    return requests.get(f"{url}/sim/webhooks", params={"video_id": video_id}, timeout=5).json()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def timed_post(url: str, body: dict[str, Any], out: dict[str, Any]) -> None:
    start = time.monotonic()
    out["status"] = requests.post(url, json=body, timeout=30).status_code
    out["took"] = time.monotonic() - start


def test_progress_webhook_waits_and_final_does_not(gma: GmAnimato) -> None:
    api = gma.url
    requests.post(f"{api}/sim/reset", timeout=5).raise_for_status()
    progress_vid, progress_job = claimed(api)
    final_vid, final_job = claimed(api)
    answer = requests.post(f"{api}/sim/faults", json={"progress_delay": DELAY}, timeout=5)
    assert answer.json()["progress_delay"] == DELAY and answer.json()["webhook_delay"] == 0
    progress: dict[str, Any] = {}
    body = {"id": progress_job, "status": "processing", "progress": {"percentage": 40}}
    sender = threading.Thread(target=timed_post, args=(f"{api}/api/i2v-webhook/{progress_vid}", body, progress))
    sender.start()
    try:
        final: dict[str, Any] = {}
        files = [{"filename": "Wan22_00001.mp4", "type": "s3_url", "data": "https://s3.example/b/out.mp4"}]
        timed_post(f"{api}/api/i2v-webhook/{final_vid}", {"id": final_job, "status": "completed", "files": files},
                   final)
        assert final["status"] == 201 and final["took"] < DELAY
        assert [h["body"]["status"] for h in recorded(api, final_vid)] == ["completed"]
        assert recorded(api, progress_vid) == []           # still held up
    finally:
        sender.join(30)
    assert progress["status"] == 201 and progress["took"] >= DELAY - 0.05
    hooks = wait_for(lambda: recorded(api, progress_vid), 10, "the progress webhook recorded")
    assert hooks[0]["body"]["progress"] == {"percentage": 40}
    assert hooks[0]["t"] > recorded(api, final_vid)[0]["t"]


def test_failed_and_statusless_webhooks_are_not_delayed() -> None:
    faults = Faults()
    faults.update({"progress_delay": 0.3, "webhook_delay": 0.1})
    assert faults.webhook_wait("processing") == pytest.approx(0.4)
    for status in ("completed", "failed", ""):
        assert faults.webhook_wait(status) == pytest.approx(0.1)


def test_clear_and_reset_forget_the_delay(gma: GmAnimato) -> None:
    api = gma.url
    requests.post(f"{api}/sim/faults", json={"progress_delay": 0.3}, timeout=5).raise_for_status()
    cleared = requests.post(f"{api}/sim/faults", json={"clear": True}, timeout=5).json()
    assert cleared["progress_delay"] == 0
    requests.post(f"{api}/sim/faults", json={"progress_delay": 0.3}, timeout=5).raise_for_status()
    requests.post(f"{api}/sim/reset", timeout=5).raise_for_status()
    assert requests.get(f"{api}/sim/faults", timeout=5).json()["progress_delay"] == 0
    assert requests.post(f"{api}/sim/faults", json={"progress_delay": "slow"}, timeout=5).status_code == 400
