"""handler.run_job against a simulated ComfyUI process: partial outputs, drops, crashes, bad inputs."""
from __future__ import annotations

import base64
import copy
import json
import logging
from pathlib import Path

import pytest
import requests

from handler.comfy_client import ComfyClient
from handler.errors import ComfyUnavailable, InputError, NoVideoProduced
from handler.run import ExecutionDeps, ExecutionRequest, run_job
from handler.storage import InlineStore
from worker.jobs.task import InputFile
from worker.sim.launch import COMFYUI_READY, start_sim

TASK = json.loads((Path(__file__).parents[1] / "fixtures" / "tasks.json").read_text())["task-i2v-no-callback"]
IMAGE = TASK["input"]["images"][0]


def start_comfy(*extra: str):
    return start_sim("worker.sim.comfyui", ["--port", "0", "--cpu", "--step-time", "0.02", *extra],
                     COMFYUI_READY)


@pytest.fixture(scope="module")
def comfy():
    sim = start_comfy()
    try:
        yield sim
    finally:
        sim.stop()


def workflow(**patches) -> dict:
    wf = copy.deepcopy(TASK["input"]["workflow"])
    for node_id, node in patches.items():
        if node is None:
            wf.pop(node_id, None)
        else:
            wf[node_id] = {**wf.get(node_id, {}), **node}
    return wf


def run(url: str, wf: dict, inputs=None, abort=lambda: None, progress=None):
    deps = ExecutionDeps(comfy=ComfyClient(url, timeout=10), store=InlineStore(), session=requests.Session(),
                         abort=abort, job_timeout=60,
                         on_progress=progress or (lambda snapshot, changed: None))
    request = ExecutionRequest(workflow=wf, inputs=tuple(inputs or [InputFile(IMAGE["name"], IMAGE["image"])]),
                               node_weights=TASK["input"]["node_weights"], key_prefix="local-test", label="test")
    return run_job(request, deps)


def test_success_reports_rising_progress_and_the_video(comfy):
    seen = []
    result = run(comfy.url, workflow(), progress=lambda snapshot, changed: seen.append(snapshot["percentage"]))
    assert [f["filename"] for f in result.files][0].endswith(".mp4")
    assert result.files[0]["type"] == "base64"
    assert seen == sorted(seen) and seen[-1] > 50


def test_accepted_prompt_with_a_broken_extra_output_still_delivers(comfy, caplog):
    broken = {"class_type": "SaveImage", "inputs": {"filename_prefix": "extra"}, "_meta": {"title": "x"}}
    with caplog.at_level(logging.WARNING):
        result = run(comfy.url, workflow(**{"99": broken}))
    assert result.files[0]["filename"].endswith(".mp4")
    assert "node 99 (SaveImage): Required input is missing: images" in caplog.text


def test_broken_video_output_fails_naming_the_node(comfy):
    still = {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "still"}}
    broken_video = copy.deepcopy(TASK["input"]["workflow"]["16"])
    del broken_video["inputs"]["images"]
    with pytest.raises(NoVideoProduced) as info:
        run(comfy.url, workflow(**{"98": still, "16": broken_video}))
    assert "no video" in info.value.message and "node 16 (VHS_VideoCombine)" in info.value.message


def test_websocket_drop_mid_run_is_recovered(comfy):
    wf = workflow()
    wf["44"]["_meta"] = {"title": "sampler", "sim": {"drop_ws": True, "steps": 6, "step_time": 0.1}}
    result = run(comfy.url, wf)
    assert result.files[0]["filename"].endswith(".mp4")


def test_comfyui_crash_mid_run_names_the_node():
    sim = start_comfy()
    try:
        wf = workflow()
        wf["44"]["_meta"] = {"title": "sampler", "sim": {"crash": True}}
        with pytest.raises(ComfyUnavailable) as info:
            run(sim.url, wf)
        assert "went away while running node 44 (WanMoeKSampler)" in info.value.message
    finally:
        sim.kill()


def test_abort_interrupts_and_says_why(comfy):
    wf = workflow()
    wf["44"]["_meta"] = {"title": "sampler", "sim": {"steps": 200, "step_time": 0.05}}
    state = {"calls": 0}

    def abort():
        state["calls"] += 1
        return "ComfyUI on GPU 0 exited with signal 9 (SIGKILL)" if state["calls"] > 20 else None

    with pytest.raises(ComfyUnavailable, match=r"exited with signal 9 \(SIGKILL\) while running node"):
        run(comfy.url, wf, abort=abort)


def test_bad_base64_input_is_a_clear_input_error(comfy):
    with pytest.raises(InputError, match="input x.png is neither an http"):
        run(comfy.url, workflow(), inputs=[InputFile("x.png", "data:image/png;base64,@@@not-base64@@@")])


def test_url_inputs_are_downloaded_and_a_404_is_permanent(comfy):
    client = ComfyClient(comfy.url)
    client.upload_input("source-image.png", base64.b64decode(IMAGE["image"].split(",", 1)[1]))
    url = f"{comfy.url}/view?filename=source-image.png&type=input"
    result = run(comfy.url, workflow(), inputs=[InputFile(IMAGE["name"], url)])
    assert result.files[0]["filename"].endswith(".mp4")
    with pytest.raises(InputError, match="answered HTTP 404"):
        run(comfy.url, workflow(), inputs=[InputFile(IMAGE["name"], url.replace("source", "missing"))])


def test_job_timeout_counts_from_the_moment_comfyui_takes_the_prompt_up(comfy):
    run(comfy.url, workflow())                            # its input is in ComfyUI's folder
    blocker = workflow()
    blocker["44"]["_meta"] = {"title": "sampler", "sim": {"steps": 60, "step_time": 0.1}}     # ~6 s ahead
    requests.post(f"{comfy.url}/prompt", json={"prompt": blocker, "client_id": "another"},
                  timeout=10).raise_for_status()
    deps = ExecutionDeps(comfy=ComfyClient(comfy.url, timeout=10), store=InlineStore(), session=requests.Session(),
                         job_timeout=4.0)
    wf = workflow()
    wf["44"]["_meta"] = {"title": "sampler", "sim": {"steps": 25, "step_time": 0.1}}          # ~2.5 s itself
    request = ExecutionRequest(workflow=wf, inputs=(InputFile(IMAGE["name"], IMAGE["image"]),),
                               node_weights=TASK["input"]["node_weights"], key_prefix="local-test", label="test")
    result = run_job(request, deps)       # done ~8.5 s after it was queued: over 2 x 4 s, but 2.5 s of running
    assert result.files[0]["filename"].endswith(".mp4")
