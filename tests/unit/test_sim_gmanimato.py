"""The simulated GmAnimato against the contract in shared/gmanimato-api.md (§1 task route, §2 webhooks).

Each simulator runs as a real process (``python -m worker.sim.gmanimato``) started by ``start_sim`` and
is always stopped. Tests talk to it over loopback with ``requests``; nothing sleeps.
"""
from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from worker.sim.gma_tasks import omits_callback
from worker.sim.gma_webhook import evaluate_webhook, node_base64_decode
from worker.sim.launch import GMANIMATO_READY, SimProcess, start_sim

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret"
AUTH = {"x-worker-secret": SECRET}
PRODUCTION_LIMIT = 512 * 1024


def run_sim(*args: str) -> SimProcess:
    return start_sim("worker.sim.gmanimato", list(args), GMANIMATO_READY)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    proc = run_sim("--secret", SECRET, "--body-limit", str(PRODUCTION_LIMIT))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(sim: SimProcess) -> Iterator[str]:
    """The shared simulator's URL, emptied before each test."""
    requests.post(f"{sim.url}/sim/reset", timeout=5).raise_for_status()
    yield sim.url


@pytest.fixture
def two_host_sim() -> Iterator[SimProcess]:
    proc = run_sim("--secret", SECRET, "--host", "127.0.0.1", "--host", "127.0.0.2")
    try:
        yield proc
    finally:
        proc.stop()


def add_jobs(url: str, **spec: Any) -> Any:
    resp = requests.post(f"{url}/sim/jobs", json=spec, timeout=5)
    assert resp.status_code == 201, resp.text
    return resp.json()


def claim(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(f"{url}/api/worker/task", headers=AUTH if headers is None else headers,
                        allow_redirects=False, timeout=10)


def hook(url: str, video_id: str, body: Any = None, **kwargs: Any) -> requests.Response:
    if body is not None:
        kwargs["json"] = body
    return requests.post(f"{url}/api/i2v-webhook/{video_id}", timeout=10, **kwargs)


def video(url: str, video_id: str) -> dict[str, Any]:
    rows = {row["id"]: row for row in requests.get(f"{url}/sim/videos", timeout=5).json()}
    return rows[video_id]


def claimed_job(url: str, **spec: Any) -> tuple[str, str]:
    """Queue one job and claim it; returns (video id, job id)."""
    job = add_jobs(url, **spec)
    resp = claim(url)
    assert resp.status_code == 200 and resp.json()["id"] == job["job_id"]
    return job["video_id"], job["job_id"]


def mp4(name: str = "Wan22_00001.mp4", url: str = "https://s3.example/bucket/local-x/out.mp4") -> dict:
    return {"filename": name, "type": "s3_url", "data": url}


# ---- §1 task route -----------------------------------------------------------------------------
def test_task_auth_variants(api: str) -> None:
    unauthorized = {"error": "Unauthorized"}
    assert claim(api, {}).status_code == 401 and claim(api, {}).json() == unauthorized
    assert claim(api, {"x-worker-secret": "wrong"}).status_code == 401
    empty_header = {"x-worker-secret": "", "Authorization": f"Bearer {SECRET}"}
    assert claim(api, empty_header).json() == unauthorized
    for header in (f"Bearer {SECRET}", f"bearer   {SECRET}", SECRET):
        assert claim(api, {"Authorization": header}).status_code == 404  # authorized, queue empty


def test_empty_queue_is_404_json(api: str) -> None:
    resp = claim(api)
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.text == '{"message":"No tasks available"}'


def test_no_secret_configured_is_500_and_claims_nothing() -> None:
    proc = run_sim("--jobs", "1")
    try:
        resp = claim(proc.url)
        assert resp.status_code == 500 and resp.json() == {"error": "Worker secret not configured"}
        assert requests.get(f"{proc.url}/sim/summary", timeout=5).json()["in_queue"] == 1
    finally:
        proc.stop()


def test_mistyped_path_redirects_to_login_and_wrong_method_is_405(api: str) -> None:
    resp = requests.get(f"{api}/api/worker/tasks", headers=AUTH, allow_redirects=False, timeout=5)
    assert resp.status_code == 303 and resp.headers["Location"] == "/login"
    assert requests.post(f"{api}/api/worker/task", headers=AUTH, timeout=5).status_code == 405
    assert requests.get(f"{api}/api/i2v-webhook/x", timeout=5).status_code == 405


def test_claim_is_fifo_and_marks_processing(api: str) -> None:
    jobs = [add_jobs(api) for _ in range(3)]
    claimed = [claim(api).json()["id"] for _ in jobs]
    assert claimed == [job["job_id"] for job in jobs]
    row = video(api, jobs[0]["video_id"])
    assert row["status"] == "processing" and row["dequeued_at"] and row["claimed_count"] == 1
    assert claim(api).status_code == 404


def test_parallel_claims_get_distinct_jobs(api: str) -> None:
    add_jobs(api, count=5)
    barrier = threading.Barrier(6)

    def grab(_: int) -> requests.Response:
        barrier.wait(10)
        return claim(api)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(grab, range(6)))
    ids = [r.json()["id"] for r in answers if r.status_code == 200]
    assert len(ids) == len(set(ids)) == 5
    assert sorted(r.status_code for r in answers) == [200] * 5 + [404]
    rows = requests.get(f"{api}/sim/videos", timeout=5).json()
    assert [row["claimed_count"] for row in rows] == [1] * 5


def test_task_shape_and_distinct_seeds(api: str) -> None:
    first, second = add_jobs(api), add_jobs(api, patch={"44": {"inputs": {"steps": 8}}})
    tasks = [claim(api).json(), claim(api).json()]
    assert list(tasks[0]) == ["id", "input"]
    assert list(tasks[0]["input"]) == ["images", "workflow", "node_weights"]  # loopback: no callback_url
    assert tasks[0]["input"]["node_weights"] == {"4": 20, "16": 15, "44": 60}
    image = tasks[0]["input"]["images"][0]
    assert image["name"] == f"{first['video_id']}.png" == tasks[0]["input"]["workflow"]["14"]["inputs"]["image"]
    assert base64.b64decode(image["image"].split(",", 1)[1]).startswith(b"\x89PNG")
    seeds = [t["input"]["workflow"]["44"]["inputs"]["seed"] for t in tasks]
    assert seeds[0] != seeds[1]
    assert tasks[1]["input"]["workflow"]["44"]["inputs"]["steps"] == 8
    assert tasks[1]["id"] == second["job_id"]


def test_fl2v_in_url_mode_serves_both_images(api: str) -> None:
    job = add_jobs(api, template="fl2v", image_mode="url")
    task = claim(api).json()
    vid = job["video_id"]
    names = [img["name"] for img in task["input"]["images"]]
    assert names == [f"{vid}_first.png", f"{vid}_last.png"]
    workflow = task["input"]["workflow"]
    assert (workflow["14"]["inputs"]["image"], workflow["18"]["inputs"]["image"]) == tuple(names)
    bodies = [requests.get(img["image"], timeout=5).content for img in task["input"]["images"]]
    assert all(b.startswith(b"\x89PNG") for b in bodies) and bodies[0] != bodies[1]


def test_failure_after_claim_leaves_job_processing(api: str) -> None:
    job = add_jobs(api, claim_error="image_fetch")
    resp = claim(api)
    assert resp.status_code == 500
    assert resp.json() == {"error": "Error: Failed to fetch image: 404 File not found"}
    assert video(api, job["video_id"])["status"] == "processing"


def test_callback_url_omitted_on_loopback_only(two_host_sim: SimProcess) -> None:
    url = two_host_sim.url
    assert url.startswith("http://127.0.0.1:")
    other = url.replace("127.0.0.1", "127.0.0.2")
    jobs = add_jobs(url, count=2)
    via_loopback, via_other = claim(url).json(), claim(other).json()
    assert "callback_url" not in via_loopback["input"]
    assert via_other["input"]["callback_url"] == f"{other}/api/i2v-webhook/{jobs[1]['video_id']}"


def test_origin_flag_sets_callback_origin() -> None:
    proc = run_sim("--secret", SECRET, "--origin", "https://gm.example.com", "--jobs", "1")
    try:
        task = claim(proc.url).json()
        video_id = task["id"].removeprefix("local-")
        assert task["input"]["callback_url"] == f"https://gm.example.com/api/i2v-webhook/{video_id}"
    finally:
        proc.stop()


def test_loopback_rule_looks_at_the_origin_hostname() -> None:
    assert omits_callback("http://localhost:5173") and omits_callback("http://[::1]:5173")
    assert omits_callback("http://127.0.0.1")
    assert not omits_callback("http://127.0.0.2:5173") and not omits_callback("https://gm.example.com")


def test_early_shape(api: str) -> None:
    job = add_jobs(api, shape="early", with_workflow=True)
    task = claim(api).json()
    assert task["id"] == job["video_id"] and task["job_id"] == f"local-{job['video_id']}"
    assert set(task) == {"id", "job_id", "original_image_url", "prompt", "tags", "is_photo_realistic",
                         "is_nsfw", "processing_started_at", "callback_url", "workflow"}
    assert task["callback_url"] == f"{api}/api/i2v-webhook/{job['video_id']}"
    assert requests.get(task["original_image_url"], timeout=5).content.startswith(b"\x89PNG")
    assert hook(api, task["id"], {"id": task["job_id"], "status": "processing"}).status_code == 201


# ---- §2 webhook route --------------------------------------------------------------------------
def test_webhook_identity_checks(api: str) -> None:
    vid, job_id = claimed_job(api)
    assert hook(api, vid, {"id": vid, "status": "processing"}).json() == {"error": "job id mismatch"}
    assert hook(api, vid, {"id": vid, "status": "processing"}).status_code == 403
    resp = hook(api, "nope", {"id": "local-nope", "status": "processing"})
    assert resp.status_code == 404 and resp.json() == {"error": "not found"}
    assert hook(api, vid, {"id": job_id}).json() == {"error": "missing id or status"}


def test_webhook_status_rules(api: str) -> None:
    vid, job_id = claimed_job(api)
    resp = hook(api, vid, {"id": job_id, "status": "success_no_files"})
    assert resp.status_code == 400
    assert resp.json() == {"error": "Invalid status. Allowed: pending, processing, completed, failed, cancelled"}
    resp = hook(api, vid, {"id": job_id, "status": 7})
    assert resp.status_code == 500 and resp.json() == {"error": "TypeError: status.toLowerCase is not a function"}
    resp = hook(api, vid, data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 500 and resp.json()["error"].startswith("SyntaxError: ")
    assert video(api, vid)["status"] == "processing"


def test_completed_upper_case_with_video(api: str) -> None:
    vid, job_id = claimed_job(api)
    progress = {"percentage": 40.5, "completed_nodes": 6, "total_nodes": 14, "current_node": "44"}
    assert hook(api, vid, {"id": job_id, "status": "processing", "progress": progress}).status_code == 201
    assert video(api, vid)["progress_percentage"] == 40.5
    files = [{"filename": "Wan22_00001.png", "type": "s3_url", "data": "https://s3/x.png"}, mp4()]
    resp = hook(api, vid, {"id": job_id, "status": "COMPLETED", "files": files})
    assert resp.status_code == 201 and resp.json()["success"] is True
    row = video(api, vid)
    assert row["status"] == "completed" and row["final_video_url"] == mp4()["data"]
    assert row["progress_percentage"] is None and row["progress_details"] is None
    assert row["processing_time_ms"] >= 0
    assert resp.json()["updated"]["status"] == "completed"


def test_completed_without_usable_video_becomes_failed(api: str) -> None:
    for files in (None, [mp4(name="X.MP4")], [{"filename": "a.mov", "type": "s3_url", "data": "u"}]):
        vid, job_id = claimed_job(api)
        body = {"id": job_id, "status": "completed", **({"files": files} if files else {})}
        assert hook(api, vid, body).status_code == 201
        assert video(api, vid)["status"] == "failed"


def test_too_long_video_url_is_400(api: str) -> None:
    vid, job_id = claimed_job(api)
    resp = hook(api, vid, {"id": job_id, "status": "completed", "files": [mp4(url="https://s3/" + "a" * 500)]})
    assert resp.status_code == 400 and "final_video_url exceeds maximum length of 500" in resp.json()["error"]
    assert video(api, vid)["status"] == "processing"


def test_no_state_guard_progress_after_completed(api: str) -> None:
    vid, job_id = claimed_job(api)
    assert hook(api, vid, {"id": job_id, "status": "completed", "files": [mp4()]}).status_code == 201
    assert hook(api, vid, {"id": job_id, "status": "processing", "progress": {"percentage": 5}}).status_code == 201
    row = video(api, vid)
    assert row["status"] == "processing" and row["progress_percentage"] == 5


def test_base64_video_is_stored_under_uploads(api: str) -> None:
    vid, job_id = claimed_job(api)
    payload = b"\x00\x00\x00\x18ftypmp42fake-video-bytes" * 50
    files = [{"filename": "Wan22_00001.mp4", "type": "base64",
              "data": "data:video/mp4;base64," + base64.b64encode(payload).decode()}]
    assert hook(api, vid, {"id": job_id, "status": "completed", "files": files}).status_code == 201
    url = video(api, vid)["final_video_url"]
    assert url.startswith("/uploads/") and url.endswith(".mp4")
    assert requests.get(f"{api}/sim/uploads/{url.rsplit('/', 1)[1]}", timeout=5).content == payload
    other, other_job = claimed_job(api)
    bad = [{"filename": "v.mp4", "type": "base64", "data": "!!!!"}]
    assert hook(api, other, {"id": other_job, "status": "completed", "files": bad}).status_code == 201
    assert video(api, other)["status"] == "failed"


def test_body_over_limit_is_413_and_not_applied(api: str) -> None:
    vid, job_id = claimed_job(api)
    files = [{"filename": "v.mp4", "type": "base64", "data": "A" * PRODUCTION_LIMIT}]
    resp = hook(api, vid, {"id": job_id, "status": "completed", "files": files})
    assert resp.status_code == 413
    assert video(api, vid)["status"] == "processing"
    assert requests.get(f"{api}/sim/webhooks", params={"video_id": vid}, timeout=5).json()[-1]["status"] == 413


def test_faults_then_normal_and_everything_recorded(api: str) -> None:
    vid, job_id = claimed_job(api)
    add_jobs(api)
    faults = {"webhook": {vid: [500, 500, "reset"]}, "task": [503]}
    assert requests.post(f"{api}/sim/faults", json=faults, timeout=5).status_code == 200
    assert claim(api).status_code == 503
    assert claim(api).status_code == 200
    body = {"id": job_id, "status": "completed", "files": [mp4()]}
    for _ in range(2):
        resp = hook(api, vid, body)
        assert resp.status_code == 500 and resp.json() == {"error": "simulated"}
    with pytest.raises(requests.ConnectionError):
        hook(api, vid, body)
    assert video(api, vid)["status"] == "processing"
    assert hook(api, vid, body).status_code == 201
    records = requests.get(f"{api}/sim/webhooks", params={"video_id": vid}, timeout=5).json()
    assert [r["status"] for r in records] == [500, 500, None, 201]
    assert records[-1]["body"] == body and records[-1]["response"]["success"] is True


def test_state_file_survives_a_restart_on_the_same_port(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = run_sim("--secret", SECRET, "--state-file", str(state), "--jobs", "2")
    try:
        job_id = claim(first.url).json()["id"]
        vid = job_id.removeprefix("local-")
        assert hook(first.url, vid, {"id": job_id, "status": "processing",
                                     "progress": {"percentage": 10}}).status_code == 201
    finally:
        first.kill()
    port = first.url.rsplit(":", 1)[1]
    second = run_sim("--secret", SECRET, "--state-file", str(state), "--jobs", "2", "--port", port)
    try:
        assert second.url == first.url
        assert requests.get(f"{second.url}/sim/summary", timeout=5).json()["in_queue"] == 1
        assert video(second.url, vid)["progress_percentage"] == 10
        assert len(requests.get(f"{second.url}/sim/webhooks", timeout=5).json()) == 1
        assert claim(second.url).status_code == 200 and claim(second.url).status_code == 404
        assert hook(second.url, vid, {"id": job_id, "status": "completed", "files": [mp4()]}).status_code == 201
    finally:
        second.stop()


# ---- hostile controls: raw task answers, served-task patches, stray requests ----------------------
def set_faults(url: str, doc: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/sim/faults", json=doc, timeout=5)


def stray(url: str) -> list[dict[str, Any]]:
    return requests.get(f"{url}/sim/stray", timeout=5).json()


def test_raw_task_answers_are_served_once_each_to_authorized_calls(api: str) -> None:
    job = add_jobs(api)
    answers = [{"status": 200, "content_type": "text/html", "body": "<html>oops</html>"},
               {"body_b64": base64.b64encode(b"\xff\xfe{\x80").decode()},
               {"deep": 40, "id": "local-deep"}, {"deep": 3}, {"status": 502, "body": ""}]
    assert set_faults(api, {"task_raw": answers}).status_code == 200
    assert claim(api, {"x-worker-secret": "wrong"}).status_code == 401  # not served to a stranger
    html = claim(api)
    assert (html.status_code, html.headers["Content-Type"], html.text) == (200, "text/html", "<html>oops</html>")
    binary = claim(api)
    assert binary.content == b"\xff\xfe{\x80" and binary.headers["Content-Type"] == "application/json"
    assert claim(api).text == '{"id":"local-deep","input":' + "[" * 40 + "]" * 40 + "}"
    assert claim(api).text == "[[[]]]"
    assert claim(api).status_code == 502
    assert video(api, job["video_id"])["status"] == "in_queue"
    assert claim(api).json()["id"] == job["job_id"]  # the FIFO is spent: a normal claim
    stats = requests.get(f"{api}/sim/stats", timeout=5).json()
    assert stats["task_calls"] == {"401": 1, "200": 5, "502": 1}


def test_truncate_serves_half_of_a_real_claim(api: str) -> None:
    job = add_jobs(api)
    assert set_faults(api, {"task_raw": [{"truncate": True}, {"truncate": True}]}).status_code == 200
    cut = claim(api)
    assert cut.status_code == 200 and cut.text.startswith('{"id":"' + job["job_id"] + '","input":{')
    with pytest.raises(ValueError):
        cut.json()
    row = video(api, job["video_id"])
    assert row["status"] == "processing" and row["claimed_count"] == 1
    assert claim(api).status_code == 404  # the second truncate found no job: answered as usual
    assert requests.get(f"{api}/sim/faults", timeout=5).json()["task_raw"] == []


def test_bad_raw_answers_are_refused_whole_and_clear_empties_them(api: str) -> None:
    for bad in ({"body": "x", "deep": 3}, {"status": 99}, {"deep": 0}, {"id": "x"}, {"body_b64": "!!"},
                {"body": 5}, {"nope": 1}, "text"):
        resp = set_faults(api, {"task": [503], "task_raw": [{"body": "fine"}, bad]})
        assert resp.status_code == 400, bad
    assert requests.get(f"{api}/sim/faults", timeout=5).json()["task_raw"] == []
    assert set_faults(api, {"task_raw": [{"body": "x"}]}).json()["task_raw"] == [{"body": "x"}]
    assert set_faults(api, {"clear": True}).json()["task_raw"] == []
    assert claim(api).status_code == 404


def test_task_and_input_patches_change_only_the_served_json(api: str) -> None:
    images = [{"name": "../../etc/passwd", "image": "http://127.0.0.3:9/x.png"}]
    job = add_jobs(api, task_patch={"id": "local-../../../admin/x", "job_id": ".."},
                   input_patch={"callback_url": "http://127.0.0.3:9/cb", "images": images})
    task = claim(api).json()
    assert task["id"] == "local-../../../admin/x" and task["job_id"] == ".."
    assert task["input"]["callback_url"] == "http://127.0.0.3:9/cb" and task["input"]["images"] == images
    assert "workflow" in task["input"] and "node_weights" in task["input"]
    row = video(api, job["video_id"])
    assert row["status"] == "processing" and row["job_id"] == job["job_id"]
    early = add_jobs(api, shape="early", input_patch={"callback_url": None})
    flat = claim(api).json()
    assert flat["id"] == early["video_id"] and flat["callback_url"] is None and "input" not in flat
    for bad in ({"task_patch": [1]}, {"input_patch": "x"}):
        assert requests.post(f"{api}/sim/jobs", json=bad, timeout=5).status_code == 400


def test_stray_requests_are_recorded_without_secret_values(api: str) -> None:
    headers = {**AUTH, "Authorization": f"Bearer {SECRET}", "X-Probe": "1"}
    assert requests.get(f"{api}/api/worker/tasks?a=1&a=2", headers=headers, allow_redirects=False,
                        timeout=5).status_code == 303
    assert requests.post(f"{api}/api/i2v-webhook/a/b", data=b"x" * 1234, allow_redirects=False,
                         timeout=5).status_code == 303
    assert requests.get(f"{api}/sim/nope", timeout=5).status_code == 404
    assert requests.get(f"{api}/api/worker/task/", allow_redirects=False, timeout=5).status_code == 308
    claim(api)
    requests.get(f"{api}/sim/summary", timeout=5)  # known routes are not strays
    hook(api, "no-such-video", {"id": "local-x", "status": "processing"})
    seen = stray(api)
    assert [(s["method"], s["path"]) for s in seen] == [
        ("GET", "/api/worker/tasks"), ("POST", "/api/i2v-webhook/a/b"), ("GET", "/sim/nope"),
        ("GET", "/api/worker/task/")]
    first = seen[0]
    assert first["query"] == "a=1&a=2" and first["body_size"] == 0 and first["headers"]["x-probe"] == "1"
    assert first["headers"]["x-worker-secret"] == "***" and first["headers"]["authorization"] == "***"
    assert SECRET not in repr(seen)
    assert seen[1]["body_size"] == 1234
    requests.post(f"{api}/sim/reset", timeout=5).raise_for_status()
    assert stray(api) == []


# ---- pure rules ----------------------------------------------------------------------------------
def test_webhook_rule_order_without_a_server() -> None:
    row = {"job_id": "local-v", "status": "processing", "processing_started_at": "2026-01-01T00:00:00.000Z"}
    assert evaluate_webhook('{"id":"x","status":7}', row, 0).status == 403  # id checked before type
    assert evaluate_webhook("null", row, 0).status == 400
    assert evaluate_webhook('{"id":"local-v","status":"ok","files":[null]}', row, 0).status == 500
    bad_b64 = '{"id":"local-v","status":"weird","files":[{"type":"base64","filename":"a.mp4","data":"!"}]}'
    assert evaluate_webhook(bad_b64, row, 0).patch["status"] == "failed"  # upload failure wins over 400
    assert node_base64_decode("aGVs bG8=junk") == b"hello"
