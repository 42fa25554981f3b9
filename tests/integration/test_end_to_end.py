"""Five jobs end to end through the real programs: supervisor.py (S3 via moto) and local_worker.py
(base64), against the simulated GmAnimato and ComfyUI processes; GmAnimato's recorded webhooks decide."""
from __future__ import annotations

import base64
import hashlib
import signal
import sys

import pytest
import requests

from tests.conftest import free_port, write_config
from tests.stack import FINAL, SECRET, base_config, comfy_sim_command

BIG = 5 * 1024 * 1024


def queue_scenario(gma) -> dict[str, str]:
    return {
        "big": gma.add_job(template="i2v", patch={"16": {"_meta": {"sim": {"output_size": BIG}}}}),
        "invalid": gma.add_job(template="i2v", patch={"70": {"class_type": "NoSuchNode"}}),
        "exec_error": gma.add_job(template="i2v", patch={"44": {"_meta": {"sim": {
            "error": "CUDA out of memory. Tried to allocate 2.00 GiB", "error_type": "torch.OutOfMemoryError"}}}}),
        "fl2v": gma.add_job(template="fl2v"),
        "720p": gma.add_job(template="i2v-720p"),
    }


def final_of(hooks: list[dict]) -> dict:
    finals = [h for h in hooks if isinstance(h["body"], dict) and h["body"].get("status") in FINAL]
    assert len(finals) == 1, f"expected exactly one final webhook, got {finals}"
    assert finals[0]["status"] == 201
    assert hooks[-1] is finals[0], "a webhook was sent after the final one"
    return finals[0]["body"]


def check_scenario(gma, ids: dict[str, str], comfy_url: str | None) -> dict[str, dict]:
    rows = gma.wait_final(list(ids.values()))
    finals = {}
    for name, vid in ids.items():
        hooks = gma.webhooks(vid)
        body = final_of(hooks)
        assert body["id"] == f"local-{vid}"
        progress = [h["body"] for h in hooks if h["body"]["status"] == "processing"]
        assert all(0 <= p["progress"]["percentage"] <= 100 for p in progress)
        finals[name] = body

    for name in ("big", "fl2v", "720p"):
        assert finals[name]["status"] == "completed", finals[name]
        assert rows[ids[name]]["status"] == "completed"
        assert finals[name]["files"][0]["filename"].endswith(".mp4")
    assert any(h["body"]["status"] == "processing" for h in gma.webhooks(ids["big"]))

    invalid = finals["invalid"]
    assert invalid["status"] == "failed" and rows[ids["invalid"]]["status"] == "failed"
    assert "NoSuchNode" in invalid["error"] and "#70" in invalid["error"], invalid["error"]

    error = finals["exec_error"]
    assert error["status"] == "failed"
    for part in ("node 44 (WanMoeKSampler)", "torch.OutOfMemoryError", "CUDA out of memory"):
        assert part in error["error"], error["error"]
    return finals


def comfy_output_sha(comfy_url: str, filename: str) -> str:
    response = requests.get(f"{comfy_url}/view", params={"filename": filename, "type": "output"}, timeout=30)
    response.raise_for_status()
    return hashlib.sha256(response.content).hexdigest()


@pytest.mark.timeout(180)
def test_supervisor_runs_five_jobs_with_s3(gmanimato, s3_server, processes, tmp_path):
    endpoint, s3 = s3_server
    api_via_2 = gmanimato.url.replace("127.0.0.1", "127.0.0.2")     # tasks then carry callback_url
    tree = base_config(api_via_2, tmp_path, storage={"s3": {
        "endpoint_url": endpoint, "bucket": "videos", "access_key_id": "AKIATESTKEY0001",
        "secret_access_key": "s3-secret-value-xyz", "region": "us-east-1"}})
    config = write_config(tmp_path / "config.yaml", tree)
    ids = queue_scenario(gmanimato)
    sup = processes.start("supervisor", [sys.executable, "supervisor.py", "--config", str(config)])

    finals = check_scenario(gmanimato, ids, None)

    comfy_url = f"http://127.0.0.1:{tree['comfy']['base_port']}"
    big = finals["big"]["files"][0]
    key = f"local-{ids['big']}/{big['filename']}"
    assert big["type"] == "s3_url" and big["data"] == f"{endpoint}/videos/{key}"
    obj = s3.get_object(Bucket="videos", Key=key)["Body"].read()
    assert len(obj) == BIG
    assert hashlib.sha256(obj).hexdigest() == comfy_output_sha(comfy_url, big["filename"])
    for hook in gmanimato.webhooks(ids["fl2v"]):
        assert hook["status"] == 201          # sent to the task's own callback_url (via 127.0.0.2)

    sup.signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    log = sup.output()
    assert "Received task: local-" in log
    for secret in (SECRET, "s3-secret-value-xyz", "AKIATESTKEY0001"):
        assert secret not in log


@pytest.mark.timeout(180)
def test_local_worker_runs_five_jobs_with_base64_and_derived_callbacks(gmanimato, processes, tmp_path):
    comfy_port = free_port()
    comfy = processes.start("comfyui", comfy_sim_command("--port", str(comfy_port), "--cpu"))
    ids = queue_scenario(gmanimato)
    env = {"GMANIMATO_API_URL": gmanimato.url, "WORKER_TASK_SECRET": SECRET,
           "COMFY_HOST": f"127.0.0.1:{comfy_port}", "WORKER_SENTINEL_FILE": str(tmp_path / ".stop"),
           "STATE_DIRECTORY": str(tmp_path / "state")}
    worker = processes.start("local_worker", [sys.executable, "local_worker.py", "--poll-interval", "0.2",
                                              "--max-retries", "3"], env=env)

    finals = check_scenario(gmanimato, ids, None)

    big = finals["big"]["files"][0]
    assert big["type"] == "base64"
    data = base64.b64decode(big["data"])
    assert len(data) == BIG
    assert hashlib.sha256(data).hexdigest() == comfy_output_sha(f"http://127.0.0.1:{comfy_port}",
                                                                big["filename"])
    row = gmanimato.videos()[ids["big"]]
    assert row["final_video_url"].startswith("/uploads/")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "Received task: local-" in worker.output() and SECRET not in worker.output()
    assert comfy.proc.poll() is None


@pytest.mark.timeout(120)
def test_every_task_shape_and_image_mode(gmanimato, processes, tmp_path):
    comfy_port = free_port()
    processes.start("comfyui", comfy_sim_command("--port", str(comfy_port), "--cpu"))
    ids = {
        "early": gmanimato.add_job(template="i2v", shape="early", with_workflow=True, image_mode="url"),
        "early_bare": gmanimato.add_job(template="i2v", shape="early", with_workflow=False),
        "url": gmanimato.add_job(template="fl2v", image_mode="url"),
    }
    env = {"GMANIMATO_API_URL": gmanimato.url, "WORKER_TASK_SECRET": SECRET,
           "COMFY_HOST": f"127.0.0.1:{comfy_port}", "STATE_DIRECTORY": str(tmp_path / "state")}
    worker = processes.start("local_worker", [sys.executable, "local_worker.py", "--poll-interval", "0.2"], env=env)
    rows = gmanimato.wait_final(list(ids.values()))
    bodies = {name: final_of(gmanimato.webhooks(vid)) for name, vid in ids.items()}
    assert bodies["early"]["status"] == "completed" and rows[ids["early"]]["status"] == "completed"
    assert bodies["early"]["id"] == f"local-{ids['early']}"
    assert bodies["early_bare"] == {"id": f"local-{ids['early_bare']}", "status": "failed",
                                    "error": "task has no workflow"}
    assert bodies["url"]["status"] == "completed"
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
