"""The simulated ComfyUI, run as a real process and spoken to over HTTP and websockets.

Every wait has a deadline (socket timeouts or :func:`wait_until`); nothing sleeps a fixed time.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from worker.sim.comfy_files import png_bytes
from worker.sim.comfy_gpu import visible_devices
from tests.conftest import wait_until as shared_wait_until
from worker.sim.launch import COMFYUI_READY, project_root, start_sim
from worker.sim.nvml import sim_gpus, sim_write_state

SHARED = Path(__file__).resolve().parents[3] / "shared"
I2V_TASK = SHARED / "gmanimato-tasks" / "task-i2v-with-callback.json"
I2V_ORDER = ["7", "14", "15", "1", "6", "13", "10", "62", "72", "34", "70", "44", "4", "16"]
OUTPUT_SIZE = 200_000
HISTORY_DELAY = 0.1
_COLORS = itertools.count(100)
BIND_ERROR = re.compile(r"OSError: \[Errno 98\] error while attempting to bind on address "
                        r"\('127\.0\.0\.1', (\d+)\): address already in use")


# ---------------------------------------------------------------- helpers

class Socket:
    """A websocket-client connection that yields decoded frames."""

    def __init__(self, url: str, client_id: str | None, timeout: float = 10.0, path: str = "/ws") -> None:
        query = f"?clientId={client_id}" if client_id else ""
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + path + query, timeout=timeout)
        self.hello = self.recv()

    def recv(self) -> dict | bytes:
        """Next frame: a dict for text, bytes for binary (raises on timeout or a lost connection)."""
        opcode, data = self.ws.recv_data()
        return data if opcode == websocket.ABNF.OPCODE_BINARY else json.loads(data)

    def until_end(self, prompt_id: str) -> list[dict | bytes]:
        """Frames up to and including ``executing {node: null, prompt_id}``."""
        frames: list[dict | bytes] = []
        while True:
            frame = self.recv()
            frames.append(frame)
            if isinstance(frame, dict) and frame["type"] == "executing" \
                    and frame["data"].get("node") is None and frame["data"].get("prompt_id") == prompt_id:
                return frames

    def until_type(self, frame_type: str) -> dict:
        while True:
            frame = self.recv()
            if isinstance(frame, dict) and frame["type"] == frame_type:
                return frame

    def close(self) -> None:
        self.ws.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    return shared_wait_until(predicate, timeout, interval)


def texts(frames: list) -> list[dict]:
    return [f for f in frames if isinstance(f, dict)]


def of_type(frames: list, frame_type: str) -> list[dict]:
    return [f for f in texts(frames) if f["type"] == frame_type]


def executing_nodes(frames: list) -> list[str]:
    return [f["data"]["node"] for f in of_type(frames, "executing") if f["data"].get("node") is not None]


def post_prompt(url: str, prompt: dict, client_id: str | None = None, **extra) -> requests.Response:
    body = {"prompt": prompt, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    return requests.post(url + "/prompt", json=body, timeout=10)


def upload(url: str, name: str, data: bytes, **form: str) -> requests.Response:
    return requests.post(url + "/upload/image", files={"image": (name, data, "image/png")}, data=form, timeout=10)


def quick_prompt(prefix: str = "quick", sim: dict | None = None, node: str = "2") -> dict:
    """EmptyImage -> ImageInvert -> SaveImage, with an optional ``_meta.sim`` script on ``node``.

    Each call uses a new colour, so no node is served from the cache of an earlier prompt.
    """
    color = next(_COLORS)
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                          "color": color}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}
    if sim is not None:
        prompt[node]["_meta"] = {"title": "scripted", "sim": sim}
    return prompt


def i2v_task() -> dict:
    if not I2V_TASK.exists():
        pytest.skip(f"{I2V_TASK} not available")
    return json.loads(I2V_TASK.read_text())["body"]["input"]


def i2v_workflow(url: str, image_name: str | None = None, seed: int | None = None) -> dict:
    """The captured GmAnimato i2v workflow, its image uploaded (optionally under another name)."""
    task = i2v_task()
    image = task["images"][0]
    name = image_name or image["name"]
    assert upload(url, name, base64.b64decode(image["image"].split(",", 1)[1]), overwrite="true").status_code == 200
    workflow = json.loads(json.dumps(task["workflow"]))
    workflow["14"]["inputs"]["image"] = name
    if seed is not None:
        workflow["44"]["inputs"]["seed"] = seed
    return workflow


def sim_env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_sim_to_exit(args: list[str], env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run the simulator when it is expected to exit by itself (start failures)."""
    env = dict(env, PYTHONPATH=str(project_root()))
    return subprocess.run([sys.executable, "-m", "worker.sim.comfyui", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(project_root()))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def comfy_dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("comfy")
    return {name: base / name for name in ("input", "output", "tmp", "user")}


@pytest.fixture(scope="module")
def comfy(comfy_dirs):
    """One simulated ComfyUI for the module, always stopped."""
    args = ["--port", "0", "--cpu", "--listen", "127.0.0.1", "--disable-auto-launch",
            "--input-directory", str(comfy_dirs["input"]), "--output-directory", str(comfy_dirs["output"]),
            "--temp-directory", str(comfy_dirs["tmp"]), "--user-directory", str(comfy_dirs["user"]),
            "--database-url", "sqlite:///:memory:", "--output-size", str(OUTPUT_SIZE),
            "--history-delay", str(HISTORY_DELAY), "--some-future-flag"]
    sim = start_sim("worker.sim.comfyui", args, COMFYUI_READY, env=sim_env(CUDA_VISIBLE_DEVICES=None))
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def client(comfy):
    """A websocket under a fresh client id."""
    sock = Socket(comfy.url, str(uuid.uuid4()))
    try:
        yield sock
    finally:
        sock.close()


# ---------------------------------------------------------------- startup and plain HTTP

@pytest.mark.timeout(60)
def test_startup_log_and_system_stats(comfy, comfy_dirs):
    port = int(comfy.url.rsplit(":", 1)[1])
    assert port != 0
    ready = comfy.lines.index(f"To see the GUI go to: http://127.0.0.1:{port}")
    assert comfy.lines[ready - 2:ready] == ["Starting server", ""]
    assert "Device: cpu" in comfy.lines
    assert f"Setting temp directory to: {comfy_dirs['tmp'] / 'temp'}" in comfy.lines

    stats = requests.get(comfy.url + "/system_stats", timeout=10)
    assert stats.headers["Content-Type"] == "application/json; charset=utf-8"
    body = stats.json()
    assert body["system"]["comfyui_version"] == "0.3.64"
    argv = body["system"]["argv"]
    assert argv[0].endswith("comfyui.py") and argv[argv.index("--port") + 1] == "0"
    assert "--some-future-flag" in argv
    assert body["devices"][0]["name"] == "cpu" and body["devices"][0]["index"] is None
    alias = requests.get(comfy.url + "/api/system_stats", timeout=10).json()
    assert alias["system"]["argv"] == argv and alias["devices"][0]["name"] == "cpu"


@pytest.mark.timeout(60)
def test_http_edges(comfy):
    missing = requests.get(comfy.url + "/api/nosuchroute", timeout=10)
    assert (missing.status_code, missing.content) == (404, b"")
    assert missing.headers["Content-Type"] == "application/octet-stream"
    bad = requests.post(comfy.url + "/prompt", data=b"not json", timeout=10)
    assert bad.status_code == 500 and bad.text == "500 Internal Server Error\n\nServer got itself in trouble"
    no_prompt = requests.post(comfy.url + "/prompt", json={"client_id": "x"}, timeout=10)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["type"] == "no_prompt"
    empty = requests.post(comfy.url + "/prompt", json={"prompt": {}}, timeout=10)
    assert empty.json() == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                      "details": "", "extra_info": {}}, "node_errors": {}}
    for path in ("/interrupt", "/free", "/queue", "/history"):
        reply = requests.post(comfy.url + "/api" + path, json={}, timeout=10)
        assert (reply.status_code, reply.content, "Content-Type" in reply.headers) == (200, b"", False)
    assert requests.get(comfy.url + "/history/unknown-id", timeout=10).json() == {}
    assert requests.get(comfy.url + "/features", timeout=10).json() == {"supports_preview_metadata": True,
                                                                        "max_upload_size": 104857600}
    assert requests.get(comfy.url + "/view", params={"filename": "../etc/passwd"}, timeout=10).status_code == 400
    assert requests.get(comfy.url + "/object_info/NoSuchNode", timeout=10).json() == {}
    alias = Socket(comfy.url, "api-alias", path="/api/ws")
    alias.close()
    assert alias.hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                      "sid": "api-alias"}}


@pytest.mark.timeout(60)
def test_upload_rename_rule(comfy):
    a, b, c = png_bytes(4, 4, (1, 2, 3)), png_bytes(5, 4, (4, 5, 6)), png_bytes(6, 4, (7, 8, 9))
    assert upload(comfy.url, "ren.png", a, overwrite="true").json() == {"name": "ren.png", "subfolder": "",
                                                                        "type": "input"}
    assert upload(comfy.url, "ren.png", a).json()["name"] == "ren.png"            # same bytes: reused
    assert upload(comfy.url, "ren.png", b).json()["name"] == "ren (1).png"        # other bytes: renamed
    assert upload(comfy.url, "ren.png", c, overwrite="True").json()["name"] == "ren (2).png"
    assert upload(comfy.url, "ren.png", b).json()["name"] == "ren (1).png"        # search restarts at base
    assert upload(comfy.url, "ren.png", c, overwrite="1").json()["name"] == "ren.png"
    assert upload(comfy.url, "sub.png", a, subfolder="job42/frames").json()["subfolder"] == "job42/frames"
    evil = upload(comfy.url, "../evil.png", a)
    assert (evil.status_code, evil.content) == (400, b"")
    no_file = requests.post(comfy.url + "/upload/image", files={"overwrite": (None, "true")}, timeout=10)
    assert (no_file.status_code, no_file.content) == (400, b"")
    view = requests.get(comfy.url + "/view", params={"filename": "ren (1).png", "type": "input"}, timeout=10)
    assert view.content == b and view.headers["Content-Type"] == "image/png"
    assert view.headers["Content-Disposition"] == 'filename="ren (1).png"'


# ---------------------------------------------------------------- the GmAnimato i2v workflow

@pytest.mark.timeout(60)
def test_i2v_workflow_frames_output_and_history(comfy, client, comfy_dirs):
    requests.post(comfy.url + "/free", json={"free_memory": True}, timeout=10)  # idle: cache emptied now
    workflow = i2v_workflow(comfy.url)
    prompt_id = f"gm-{uuid.uuid4()}"
    reply = post_prompt(comfy.url, workflow, client.hello["data"]["sid"], prompt_id=prompt_id)
    assert reply.status_code == 200
    assert reply.json()["prompt_id"] == prompt_id and reply.json()["node_errors"] == {}

    frames = []
    while not (frames and isinstance(frames[-1], dict) and frames[-1]["type"] == "execution_success"):
        frames.append(client.recv())
    at_success = requests.get(f"{comfy.url}/history/{prompt_id}", timeout=10).json()
    since_success_ms = time.time() * 1000 - frames[-1]["data"]["timestamp"]  # same host clock
    if since_success_ms < HISTORY_DELAY * 1000 / 2:
        assert at_success == {}, "history must be filed a moment after execution_success"
    frames += client.until_end(prompt_id)

    kinds = [f["type"] for f in texts(frames)]
    assert kinds[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert kinds[-4:] == ["progress_state", "execution_success", "status", "executing"]
    assert texts(frames)[-2]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}
    assert executing_nodes(frames) == I2V_ORDER
    assert of_type(frames, "execution_cached")[0]["data"]["nodes"] == []

    progress = [f["data"] for f in of_type(frames, "progress")]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(i, 4, "44") for i in range(1, 5)]
    previews = [f for f in frames if isinstance(f, bytes)]
    assert len(previews) == 4 and all(p[:8] == bytes.fromhex("0000000100000002") for p in previews)
    assert all(p[8:16] == b"\x89PNG\r\n\x1a\n" for p in previews)
    after_progress = [frames[frames.index(p) + 1] for p in of_type(frames, "progress")]
    assert all(isinstance(f, bytes) for f in after_progress)

    executed = of_type(frames, "executed")
    assert [e["data"]["node"] for e in executed] == ["16"]
    gif = executed[0]["data"]["output"]["gifs"][0]
    assert re.fullmatch(r"Wan22_\d{5}\.mp4", gif["filename"])
    assert (gif["subfolder"], gif["type"], gif["format"], gif["frame_rate"]) == ("", "output", "video/h264-mp4", 18.0)
    assert gif["workflow"] == gif["filename"].replace(".mp4", ".png")
    assert gif["fullpath"] == str(comfy_dirs["output"] / gif["filename"])

    video = requests.get(comfy.url + "/view", params={"filename": gif["filename"], "subfolder": "", "type": "output"},
                         timeout=10)
    assert video.headers["Content-Type"] == "video/mp4"
    assert len(video.content) == OUTPUT_SIZE and video.content[4:8] == b"ftyp"
    assert video.content == (comfy_dirs["output"] / gif["filename"]).read_bytes()

    entry = requests.get(f"{comfy.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    assert entry["outputs"] == {"16": {"gifs": [gif]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["16"]
    assert entry["meta"]["16"]["node_id"] == "16"


@pytest.mark.timeout(60)
def test_next_job_reuses_cached_loaders_until_free(comfy, client):
    sid = client.hello["data"]["sid"]

    def run(workflow: dict) -> list:
        prompt_id = post_prompt(comfy.url, workflow, sid).json()["prompt_id"]
        return client.until_end(prompt_id)

    run(i2v_workflow(comfy.url, "job-a.png", seed=1))
    second = run(i2v_workflow(comfy.url, "job-b.png", seed=2))
    cached = of_type(second, "execution_cached")[0]["data"]["nodes"]
    assert sorted(cached, key=int) == ["1", "6", "7", "13", "34", "62", "70", "72"]
    assert executing_nodes(second) == ["14", "15", "10", "44", "4", "16"]

    assert requests.post(comfy.url + "/free", json={"unload_models": True, "free_memory": True},
                         timeout=10).status_code == 200
    third = run(i2v_workflow(comfy.url, "job-b.png", seed=2))
    assert of_type(third, "execution_cached")[0]["data"]["nodes"] == []


def task_files() -> list[Path]:
    found = sorted((SHARED / "gmanimato-tasks").glob("task-*.json"))
    return [f for f in found if "workflow" in json.loads(f.read_text()).get("body", {}).get("input", {})]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("task_file", task_files(), ids=lambda f: f.stem)
def test_every_captured_task_workflow_runs(comfy, client, task_file):
    task = json.loads(task_file.read_text())["body"]["input"]
    for image in task["images"]:
        data = base64.b64decode(image["image"].split(",", 1)[1])
        assert upload(comfy.url, image["name"], data, overwrite="true").status_code == 200
    reply = post_prompt(comfy.url, task["workflow"], client.hello["data"]["sid"])
    assert reply.status_code == 200, reply.text
    frames = client.until_end(reply.json()["prompt_id"])
    assert of_type(frames, "execution_success")
    gif = of_type(frames, "executed")[-1]["data"]["output"]["gifs"][0]
    prefix = task["workflow"]["16"]["inputs"]["filename_prefix"]
    assert gif["filename"].startswith(prefix + "_") and gif["filename"].endswith(".mp4")
    state = requests.get(comfy.url + "/sim/state", timeout=10).json()
    written = {f["path"]: f for f in state["files"]}
    assert written[gif["filename"]]["size"] == OUTPUT_SIZE and gif["workflow"] in written


@pytest.mark.timeout(60)
def test_identical_prompt_is_served_from_cache(comfy, client):
    sid = client.hello["data"]["sid"]
    prompt = quick_prompt("cached_twice")
    first = client.until_end(post_prompt(comfy.url, prompt, sid).json()["prompt_id"])
    second = client.until_end(post_prompt(comfy.url, prompt, sid).json()["prompt_id"])
    assert of_type(second, "execution_cached")[0]["data"]["nodes"] == ["1", "2", "3"]
    assert executing_nodes(second) == []
    assert of_type(second, "executed")[0]["data"]["output"] == of_type(first, "executed")[0]["data"]["output"]


def video_prompt(size_script: dict, no_output_script: dict) -> dict:
    """EmptyImage feeding VHS_VideoCombine (scripted size) and CreateVideo -> SaveVideo (scripted)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": next(_COLORS)}},
        "2": {"class_type": "VHS_VideoCombine", "_meta": {"title": "vhs", "sim": size_script},
              "inputs": {"images": ["1", 0], "frame_rate": 24, "loop_count": 0, "filename_prefix": "clips/vhs",
                         "format": "video/h264-mp4", "pingpong": False, "save_output": True, "crf": 19}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "4": {"class_type": "SaveVideo", "_meta": {"title": "save", "sim": no_output_script},
              "inputs": {"video": ["3", 0], "filename_prefix": "video/cap", "format": "auto", "codec": "auto"}},
    }


@pytest.mark.timeout(60)
def test_output_size_and_no_output_scripts(comfy, client):
    prompt_id = post_prompt(comfy.url, video_prompt({"output_size": 1234}, {"no_output": True}),
                            client.hello["data"]["sid"]).json()["prompt_id"]
    frames = client.until_end(prompt_id)
    assert of_type(frames, "execution_success")
    executed = {e["data"]["node"]: e["data"]["output"] for e in of_type(frames, "executed")}
    assert list(executed) == ["2"]  # the no_output SaveVideo sends no executed frame
    gif = executed["2"]["gifs"][0]
    assert gif["subfolder"] == "clips" and gif["frame_rate"] == 24.0
    video = requests.get(comfy.url + "/view", params={"filename": gif["filename"], "subfolder": "clips"}, timeout=10)
    assert len(video.content) == 1234
    entry = requests.get(f"{comfy.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    assert list(entry["outputs"]) == ["2"]

    saved = client.until_end(post_prompt(comfy.url, video_prompt({}, {}), client.hello["data"]["sid"]
                                         ).json()["prompt_id"])
    outputs = {e["data"]["node"]: e["data"]["output"] for e in of_type(saved, "executed")}
    assert outputs["4"]["animated"] == [True] and outputs["4"]["images"][0]["subfolder"] == "video"
    assert re.fullmatch(r"cap_\d{5}_\.mp4", outputs["4"]["images"][0]["filename"])
    assert len(requests.get(comfy.url + "/view", params=outputs["4"]["images"][0], timeout=10).content) == OUTPUT_SIZE


@pytest.mark.timeout(60)
def test_queue_listing_delete_clear_and_front(comfy, client):
    sid = client.hello["data"]["sid"]
    blocker = post_prompt(comfy.url, quick_prompt("qblock", {"sleep": 30}), sid).json()["prompt_id"]
    while client.until_type("executing")["data"].get("node") != "2":
        pass
    later = post_prompt(comfy.url, quick_prompt("qlater"), sid).json()
    first = post_prompt(comfy.url, quick_prompt("qfront"), sid, front=True).json()
    assert first["number"] == -(later["number"] + 1)
    queue = requests.get(comfy.url + "/queue", timeout=10).json()
    assert [item[1] for item in queue["queue_running"]] == [blocker]
    assert {item[1] for item in queue["queue_pending"]} == {later["prompt_id"], first["prompt_id"]}
    assert all(len(item) == 5 and item[3] == {"client_id": sid} for item in queue["queue_pending"])
    assert requests.get(comfy.url + "/prompt", timeout=10).json() == {"exec_info": {"queue_remaining": 3}}

    requests.post(comfy.url + "/queue", json={"delete": [later["prompt_id"], "nope", blocker]}, timeout=10)
    queue = requests.get(comfy.url + "/queue", timeout=10).json()
    assert [i[1] for i in queue["queue_running"]] == [blocker]
    assert [i[1] for i in queue["queue_pending"]] == [first["prompt_id"]]
    requests.post(comfy.url + "/queue", json={"clear": True}, timeout=10)
    assert requests.get(comfy.url + "/queue", timeout=10).json()["queue_pending"] == []
    requests.post(comfy.url + "/interrupt", timeout=10)
    assert of_type(client.until_end(blocker), "execution_interrupted")
    assert requests.get(f"{comfy.url}/history/{later['prompt_id']}", timeout=10).json() == {}


# ---------------------------------------------------------------- validation

@pytest.mark.timeout(60)
def test_missing_image_file_is_a_node_error(comfy):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "does_not_exist.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bad"}}}
    reply = post_prompt(comfy.url, prompt, "someone")
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"1": {"errors": [{"type": "custom_validation_failed",
                                          "message": "Custom validation failed for node",
                                          "details": "image - Invalid image file: does_not_exist.png",
                                          "extra_info": {"input_name": "image"}}],
                              "dependent_outputs": ["2"], "class_type": "LoadImage"}}}


@pytest.mark.timeout(60)
def test_value_range_and_missing_link_errors(comfy):
    workflow = json.loads(json.dumps(i2v_task()["workflow"]))
    workflow["10"]["inputs"]["width"] = 99999
    workflow["4"]["inputs"]["vae"] = ["99", 0]
    reply = post_prompt(comfy.url, workflow)
    assert reply.status_code == 400
    body = reply.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation" and body["error"]["details"] == ""
    width = body["node_errors"]["10"]
    assert width["errors"][0]["type"] == "value_bigger_than_max" and width["dependent_outputs"] == ["16"]
    assert width["errors"][0]["message"] == "Value 99999 bigger than max of 16384"
    assert width["errors"][0]["extra_info"]["input_config"][1]["max"] == 16384
    link = body["node_errors"]["4"]["errors"][0]
    assert (link["type"], link["details"], link["extra_info"]["exception_type"]) == \
        ("exception_during_inner_validation", "'99'", "KeyError")


@pytest.mark.timeout(60)
def test_two_outputs_one_broken_runs_only_the_good_one(comfy, client):
    prompt = quick_prompt("two_good")
    prompt["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "two_bad"}}
    reply = post_prompt(comfy.url, prompt, client.hello["data"]["sid"])
    assert reply.status_code == 200
    assert reply.json()["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    frames = client.until_end(reply.json()["prompt_id"])
    assert [e["data"]["node"] for e in of_type(frames, "executed")] == ["3"]


@pytest.mark.timeout(60)
def test_unknown_class_when_pack_missing(tmp_path):
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--disable-node", "TeaCache",
                                           "--input-directory", str(tmp_path / "in"),
                                           "--output-directory", str(tmp_path / "out"),
                                           "--temp-directory", str(tmp_path / "tmp")],
                    COMFYUI_READY, env=sim_env(CUDA_VISIBLE_DEVICES=None))
    try:
        assert any(line.startswith("Device: cuda:0 ") for line in sim.lines)
        device = requests.get(sim.url + "/system_stats", timeout=10).json()["devices"][0]
        assert (device["type"], device["index"]) == ("cuda", 0) and device["name"].startswith("cuda:0 ")
        reply = post_prompt(sim.url, i2v_workflow(sim.url), "c1")
        assert reply.status_code == 400
        assert reply.json() == {"error": {"type": "invalid_prompt",
                                          "message": "Cannot execute because node TeaCache does not exist.",
                                          "details": "Node ID '#70'", "extra_info": {}}, "node_errors": {}}
    finally:
        sim.stop()


# ---------------------------------------------------------------- run-time failures

@pytest.mark.timeout(60)
def test_scripted_execution_error(comfy, client):
    script = {"error": "CUDA out of memory. Tried to allocate 2.00 GiB", "error_type": "torch.OutOfMemoryError"}
    prompt_id = post_prompt(comfy.url, quick_prompt("err", script), client.hello["data"]["sid"]).json()["prompt_id"]
    frames = client.until_end(prompt_id)
    kinds = [f["type"] for f in texts(frames)]
    assert kinds[-3:] == ["execution_error", "status", "executing"] and "execution_success" not in kinds
    error = of_type(frames, "execution_error")[0]["data"]
    assert (error["node_id"], error["node_type"], error["executed"]) == ("2", "ImageInvert", ["1"])
    assert error["exception_type"] == "torch.OutOfMemoryError"
    message, tips = error["exception_message"].split("\n", 1)  # ComfyUI: "{ex}\n{tips}", tips only for OOM
    assert message == script["error"] and tips.startswith("This error means you ran out of memory on your GPU.")
    assert isinstance(error["traceback"], list) and error["traceback"]
    assert list(error["current_inputs"]) == ["image"] and isinstance(error["current_inputs"]["image"][0], str)
    assert sorted(error["current_outputs"]) == ["1", "2", "3"] and isinstance(error["timestamp"], int)

    entry = wait_until(lambda: requests.get(f"{comfy.url}/history/{prompt_id}", timeout=10).json())[prompt_id]
    assert entry["outputs"] == {} and entry["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False and entry["status"]["messages"][-1][0] == "execution_error"


@pytest.mark.timeout(60)
def test_interrupt_then_vanished_image_fails(comfy, client, comfy_dirs):
    sid = client.hello["data"]["sid"]
    assert upload(comfy.url, "vanish.png", png_bytes(3, 3), overwrite="true").status_code == 200
    blocker = post_prompt(comfy.url, quick_prompt("blocker", {"sleep": 30}), sid).json()["prompt_id"]
    while client.until_type("executing")["data"].get("node") != "2":
        pass
    vanish = {"1": {"class_type": "LoadImage", "inputs": {"image": "vanish.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "vanish"}}}
    second = post_prompt(comfy.url, vanish, sid).json()["prompt_id"]
    (comfy_dirs["input"] / "vanish.png").unlink()
    requests.post(comfy.url + "/interrupt", json={"prompt_id": blocker}, timeout=10)

    frames = client.until_end(blocker)
    interrupted = of_type(frames, "execution_interrupted")[0]["data"]
    assert (interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == ("2", "ImageInvert", ["1"])
    assert [f["type"] for f in texts(frames)][-3:] == ["execution_interrupted", "status", "executing"]
    entry = requests.get(f"{comfy.url}/history/{blocker}", timeout=10).json()[blocker]
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"

    error = of_type(client.until_end(second), "execution_error")[0]["data"]
    assert (error["node_id"], error["exception_type"]) == ("1", "FileNotFoundError")
    assert error["exception_message"].startswith("[Errno 2] No such file or directory: ")
    assert error["current_inputs"] == {"image": ["vanish.png"]}


@pytest.mark.timeout(60)
def test_drop_ws_cuts_sockets_but_prompt_runs_on(comfy):
    client_id = str(uuid.uuid4())
    first = Socket(comfy.url, client_id)
    observer = Socket(comfy.url, str(uuid.uuid4()))
    prompt_id = post_prompt(comfy.url, quick_prompt("dropped", {"drop_ws": True, "sleep": 30}), client_id
                            ).json()["prompt_id"]
    for sock in (first, observer):
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                sock.recv()
    again = Socket(comfy.url, client_id)
    try:
        assert again.hello["data"]["sid"] == client_id
        assert again.recv() == {"type": "executing", "data": {"node": "2"}}
        requests.post(comfy.url + "/interrupt", timeout=10)
        assert of_type(again.until_end(prompt_id), "execution_interrupted")
    finally:
        again.close()


@pytest.mark.timeout(60)
def test_second_socket_replaces_first_and_no_client_id_broadcasts(comfy):
    client_id = str(uuid.uuid4())
    old, new = Socket(comfy.url, client_id), Socket(comfy.url, client_id)
    anon = Socket(comfy.url, None)
    try:
        assert re.fullmatch(r"[0-9a-f]{32}", anon.hello["data"]["sid"])
        prompt_id = post_prompt(comfy.url, quick_prompt("dup"), client_id).json()["prompt_id"]
        assert executing_nodes(new.until_end(prompt_id)) == ["1", "2", "3"]
        old.ws.settimeout(0.3)
        kinds = []
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                kinds.append(old.recv()["type"])
        assert kinds == []

        silent = post_prompt(comfy.url, quick_prompt("silent", {"steps": 2}, node="2")).json()["prompt_id"]
        seen = []
        while not (seen and seen[-1].get("type") == "status" and seen[-1]["data"]["status"]["exec_info"]
                   ["queue_remaining"] == 0 and any(f.get("type") == "progress_state" for f in seen)):
            frame = anon.recv()
            seen.append(frame if isinstance(frame, dict) else {"type": "binary"})
        assert {f["type"] for f in seen} <= {"status", "progress_state"}
        assert wait_until(lambda: requests.get(f"{comfy.url}/history/{silent}", timeout=10).json())
    finally:
        for sock in (anon, new, old):
            sock.close()


@pytest.mark.timeout(60)
def test_preview_metadata_after_feature_flags(comfy):
    sock = Socket(comfy.url, str(uuid.uuid4()))
    try:
        sock.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert sock.recv()["type"] == "feature_flags"
        prompt = i2v_workflow(comfy.url, "meta.png", seed=5)
        prompt["44"]["_meta"] = {"title": "sampler", "sim": {"steps": 2, "step_time": 0.01}}
        frames = sock.until_end(post_prompt(comfy.url, prompt, sock.hello["data"]["sid"]).json()["prompt_id"])
        previews = [f for f in frames if isinstance(f, bytes)]
        assert len(previews) == 2 and all(p[:4] == b"\x00\x00\x00\x04" for p in previews)
        length = int.from_bytes(previews[0][4:8], "big")
        assert json.loads(previews[0][8:8 + length])["node_id"] == "44"
        assert isinstance(frames[frames.index(previews[0]) + 1], dict)
        assert frames[frames.index(previews[0]) + 1]["type"] == "progress"
    finally:
        sock.close()


# ---------------------------------------------------------------- hostile outputs and big files

def start_own_comfy(base: Path, *extra: str):
    """A simulated ComfyUI of its own (folders under ``base``), for flags the shared one lacks."""
    return start_sim("worker.sim.comfyui", ["--port", "0", "--cpu", "--base-directory", str(base),
                                            "--history-delay", str(HISTORY_DELAY), *extra], COMFYUI_READY)


def write_json_atomically(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def run_video_prompt(url: str, sock: Socket, no_output_script: dict | None = None) -> tuple[dict, dict]:
    """Run :func:`video_prompt`; returns (executed outputs by node, history outputs by node)."""
    prompt_id = post_prompt(url, video_prompt({}, no_output_script or {}), sock.hello["data"]["sid"]
                            ).json()["prompt_id"]
    frames = sock.until_end(prompt_id)
    assert of_type(frames, "execution_success")
    executed = {e["data"]["node"]: e["data"]["output"] for e in of_type(frames, "executed")}
    return executed, requests.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]["outputs"]


def view(url: str, entry: dict) -> requests.Response:
    params = {k: entry[k] for k in ("filename", "subfolder", "type") if k in entry}
    return requests.get(url + "/view", params=params, timeout=10)


@pytest.mark.timeout(60)
def test_tamper_outputs_report_entries_and_write_only_safe_files(tmp_path):
    tamper = tmp_path / "tamper.json"
    outside = tmp_path / "outside.mp4"
    entries = [{"filename": "evil.mp4", "subfolder": "hostile", "type": "output", "content": "mp4", "size": 5000},
               {"filename": "page.html", "subfolder": "", "type": "output", "content": "html", "format": "text/html"},
               {"filename": "zero.webm", "subfolder": "", "type": "temp", "content": "empty"},
               {"filename": "pic.png", "subfolder": "", "type": "input", "content": "png"},
               {"filename": "clip.webm", "subfolder": "", "type": "output", "content": "webm", "size": 3000},
               {"filename": "../../outside.mp4", "subfolder": "", "type": "output", "content": "mp4"},
               {"filename": "outside.mp4", "subfolder": "../..", "type": "output", "content": "mp4"},
               {"filename": str(outside), "subfolder": "", "type": "output", "content": "mp4"},
               {"filename": "odd.mp4", "subfolder": "", "type": "s3", "content": "mp4"}]
    sim = start_own_comfy(tmp_path / "comfy", "--tamper-outputs", str(tamper))
    try:
        sock = Socket(sim.url, "tamper")
        plain, _ = run_video_prompt(sim.url, sock)  # no file yet: nothing tampered
        assert len(plain["2"]["gifs"]) == 1 and len(plain["4"]["images"]) == 1
        reported = [{k: v for k, v in e.items() if k not in ("content", "size")} for e in entries]
        write_json_atomically(tamper, {"mode": "append", "entries": entries})
        executed, history = run_video_prompt(sim.url, sock)
        assert executed["2"]["gifs"][1:] == reported and executed["4"]["images"][1:] == reported
        assert executed["4"]["animated"] == [True] and history == executed
        evil = view(sim.url, entries[0])
        assert evil.status_code == 200 and len(evil.content) == 5000 and evil.content[4:8] == b"ftyp"
        page = view(sim.url, entries[1])
        assert page.content == b"<html><script>alert(1)</script></html>"
        assert page.headers["Content-Type"] == "application/octet-stream"
        assert view(sim.url, entries[2]).content == b""
        assert view(sim.url, entries[3]).content.startswith(b"\x89PNG")
        clip = view(sim.url, entries[4]).content
        assert len(clip) == 3000 and clip.startswith(bytes.fromhex("1a45dfa3"))
        assert [view(sim.url, e).status_code for e in entries[5:]] == [400, 403, 400, 400]
        assert not outside.exists() and not (tmp_path.parent / "outside.mp4").exists()

        write_json_atomically(tamper, {"mode": "replace", "entries": entries[:1]})
        executed, _ = run_video_prompt(sim.url, sock, {"no_output": True})
        assert executed["2"]["gifs"] == reported[:1]
        tamper.unlink()
        executed, _ = run_video_prompt(sim.url, sock)
        assert executed["2"]["gifs"][0]["filename"].startswith("vhs_") and len(executed["2"]["gifs"]) == 1
        sock.close()
    finally:
        sim.stop()


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM line")


@pytest.mark.timeout(60)
def test_big_output_is_written_and_served_in_chunks(tmp_path):
    size = 128 * 1024 * 1024
    sim = start_own_comfy(tmp_path / "comfy", "--output-size", str(size))
    try:
        sock = Socket(sim.url, "big")
        before = peak_rss_kib(sim.pid)
        executed, _ = run_video_prompt(sim.url, sock, {"no_output": True})
        gif = executed["2"]["gifs"][0]
        digest, got = hashlib.sha256(), 0
        with requests.get(sim.url + "/view", params={"filename": gif["filename"], "subfolder": "clips"},
                          stream=True, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "video/mp4"
            assert resp.headers["Content-Disposition"] == f'filename="{gif["filename"]}"'
            assert int(resp.headers["Content-Length"]) == size
            for chunk in resp.iter_content(1 << 20):
                digest.update(chunk)
                got += len(chunk)
        files = requests.get(sim.url + "/sim/state", timeout=10).json()["files"]
        written = next(f for f in files if f["path"] == f"clips/{gif['filename']}")
        assert got == written["size"] == size and written["sha256"] == digest.hexdigest()
        assert peak_rss_kib(sim.pid) - before < 48 * 1024  # far below the 128 MiB file
        sock.close()
    finally:
        sim.stop()


# ---------------------------------------------------------------- the process itself

@pytest.mark.timeout(60)
def test_scripted_crash_kills_the_process(tmp_path):
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--cpu", "--output-directory", str(tmp_path)],
                    COMFYUI_READY)
    try:
        sock = Socket(sim.url, "crash-client")
        post_prompt(sim.url, quick_prompt("crash", {"crash": True}), "crash-client")
        assert sim.proc.wait(timeout=20) == -signal.SIGKILL
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while True:
                sock.recv()
        with pytest.raises(requests.ConnectionError):
            requests.get(sim.url + "/queue", timeout=5)
    finally:
        sim.kill()


@pytest.mark.timeout(60)
def test_crash_on_second_prompt(tmp_path):
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--cpu", "--crash-on-prompt", "2",
                                           "--output-directory", str(tmp_path)], COMFYUI_READY)
    try:
        sock = Socket(sim.url, "c2")
        first = post_prompt(sim.url, quick_prompt("one"), "c2").json()["prompt_id"]
        assert of_type(sock.until_end(first), "execution_success")
        post_prompt(sim.url, quick_prompt("two"), "c2")
        assert sim.proc.wait(timeout=20) == -signal.SIGKILL
    finally:
        sim.kill()


@pytest.mark.timeout(60)
def test_port_in_use_exits_1(comfy):
    port = comfy.url.rsplit(":", 1)[1]
    done = run_sim_to_exit(["--port", port, "--cpu", "--startup-delay", "0.1"], sim_env())
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Starting server" in lines and "To see the GUI" not in done.stderr
    match = BIND_ERROR.fullmatch(lines[-1])
    assert match and match.group(1) == port


@pytest.mark.timeout(60)
def test_no_visible_gpu_exits_1():
    done = run_sim_to_exit(["--port", "0"], sim_env(CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "RuntimeError: No CUDA GPUs are available"


@pytest.mark.timeout(60)
def test_sigint_logs_stopped_server(tmp_path):
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process tree, so the simulator ignores it too")
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--cpu", "--output-directory", str(tmp_path)],
                    COMFYUI_READY)
    try:
        sim.proc.send_signal(signal.SIGINT)
        assert sim.proc.wait(timeout=20) == 0
        wait_until(lambda: "Stopped server" in sim.lines, timeout=5)
    finally:
        sim.kill()


# ---------------------------------------------------------------- GPUs: SIM_NVML_GPUS seen through CUDA_VISIBLE_DEVICES

MIXED_GPUS = "H200,H100 80GB HBM3,L40S,A100-SXM4-80GB"
CUDA_FAILURE = "RuntimeError: CUDA error: unspecified launch failure"


def gpu_env(gpus: str | None = MIXED_GPUS, **changes: str | None) -> dict[str, str]:
    return sim_env(**{"SIM_NVML_GPUS": gpus, "SIM_NVML_STATE": None, "CUDA_DEVICE_ORDER": None, **changes})


def mixed_gpus():
    return sim_gpus({"SIM_NVML_GPUS": MIXED_GPUS})


def test_cuda_visible_devices_rules():
    gpus = mixed_gpus()
    h200, h100, l40s, a100 = gpus

    def names(cvd, order=None):
        return [g.name for g in visible_devices(gpus, cvd, order)]
    assert visible_devices(gpus, None, "PCI_BUS_ID") == gpus
    assert visible_devices(gpus, None) == [h200, h100, l40s, a100]       # fastest first: Hopper, Ada, Ampere
    assert visible_devices(gpus, l40s.uuid) == [l40s]
    assert visible_devices(gpus, l40s.uuid[:12].upper()) == [l40s]       # a unique prefix is enough
    assert visible_devices(gpus, "3,0", "PCI_BUS_ID") == [a100, h200]
    assert visible_devices(gpus, "0,7,1") == [h200]                      # an invalid entry ends the list
    assert names("") == names("4") == names("-1") == names("GPU-nope") == names("GPU-") == []
    mixed_order = sim_gpus({"SIM_NVML_GPUS": "A100-SXM4-80GB,H200"})
    assert [g.index for g in visible_devices(mixed_order, "0")] == [1]   # the classic index mismatch
    assert [g.index for g in visible_devices(mixed_order, "0", "PCI_BUS_ID")] == [0]
    assert visible_devices(sim_gpus({"SIM_NVML_GPUS": "nodriver"}), None) == []


@pytest.mark.timeout(60)
def test_default_gpu_is_the_captured_h200(tmp_path):
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--output-directory", str(tmp_path)], COMFYUI_READY,
                    env=gpu_env(None, CUDA_VISIBLE_DEVICES=None))
    try:
        assert "Device: cuda:0 NVIDIA H200 : cudaMallocAsync" in sim.lines
        assert any(line.startswith("Total VRAM 143156 MB,") for line in sim.lines)
        [device] = requests.get(sim.url + "/system_stats", timeout=10).json()["devices"]
        assert device == {"name": "cuda:0 NVIDIA H200 : cudaMallocAsync", "type": "cuda", "index": 0,
                          "vram_total": 150109880320, "vram_free": 149557477376, "torch_vram_total": 0,
                          "torch_vram_free": 0}
        state = requests.get(sim.url + "/sim/state", timeout=10).json()
        assert state["cuda_visible_devices"] is None
        assert state["gpu_uuid"] == "GPU-23a021a5-88bc-6321-b49b-b825ccd0c1c7"
    finally:
        sim.stop()


@pytest.mark.timeout(60)
def test_pinned_by_uuid_runs_on_that_gpu(tmp_path):
    gpu = mixed_gpus()[2]
    sim = start_sim("worker.sim.comfyui", ["--port", "0", "--output-directory", str(tmp_path)], COMFYUI_READY,
                    env=gpu_env(CUDA_VISIBLE_DEVICES=gpu.uuid))
    try:
        assert "Device: cuda:0 NVIDIA L40S : cudaMallocAsync" in sim.lines
        [device] = requests.get(sim.url + "/system_stats", timeout=10).json()["devices"]
        assert device["name"] == "cuda:0 NVIDIA L40S : cudaMallocAsync"
        assert (device["type"], device["index"], device["vram_total"]) == ("cuda", 0, gpu.cuda_total)
        assert 0 < device["vram_free"] < device["vram_total"]
        state = requests.get(sim.url + "/sim/state", timeout=10).json()
        assert state["cuda_visible_devices"] == gpu.uuid and state["gpu_uuid"] == gpu.uuid
    finally:
        sim.stop()


@pytest.mark.timeout(60)
def test_unknown_uuid_sees_no_gpu_and_exits_1():
    began = time.monotonic()
    done = run_sim_to_exit(["--port", "0", "--gpu-fail-delay", "0.05"],
                           gpu_env(CUDA_VISIBLE_DEVICES="GPU-00000000-1111-2222-3333-444444444444"))
    assert done.returncode == 1 and time.monotonic() - began < 20
    assert done.stderr.strip().splitlines()[-1] == "RuntimeError: No CUDA GPUs are available"
    assert "Device:" not in done.stderr and "To see the GUI" not in done.stderr


@pytest.mark.timeout(60)
def test_no_driver_sees_no_gpu():
    done = run_sim_to_exit(["--port", "0", "--gpu-fail-delay", "0"], gpu_env("nodriver", CUDA_VISIBLE_DEVICES=None))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "RuntimeError: No CUDA GPUs are available"


@pytest.mark.timeout(60)
def test_fail_on_gpu_breaks_only_that_gpu(tmp_path):
    broken, healthy = mixed_gpus()[1], mixed_gpus()[3]
    flags = ["--port", "0", "--fail-on-gpu", broken.uuid, "--output-directory", str(tmp_path)]
    done = run_sim_to_exit(flags, gpu_env(CUDA_VISIBLE_DEVICES=broken.uuid))
    assert done.returncode == 1
    assert CUDA_FAILURE in done.stderr.splitlines() and "To see the GUI" not in done.stderr
    sim = start_sim("worker.sim.comfyui", flags, COMFYUI_READY, env=gpu_env(CUDA_VISIBLE_DEVICES=healthy.uuid))
    try:
        assert requests.get(sim.url + "/sim/state", timeout=10).json()["gpu_uuid"] == healthy.uuid
    finally:
        sim.stop()


@pytest.mark.timeout(60)
def test_lost_gpu_fails_cuda_init(tmp_path):
    state = tmp_path / "nvml-state.json"
    sim_write_state(state, {"lost": [2]})
    done = run_sim_to_exit(["--port", "0", "--cuda-device", "2"],
                           dict(gpu_env(CUDA_DEVICE_ORDER="PCI_BUS_ID"), SIM_NVML_STATE=str(state)))
    assert done.returncode == 1 and CUDA_FAILURE in done.stderr.splitlines()
