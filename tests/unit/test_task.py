"""Task parsing: every shape GmAnimato served, and every bad field named in the error."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from worker.jobs.task import TaskError, TaskRules, callback_for, parse_task

API = "http://gm.example:5173"
TASKS = json.loads((Path(__file__).parents[1] / "fixtures" / "tasks.json").read_text())


def task(name: str = "task-i2v-with-callback") -> dict:
    return copy.deepcopy(TASKS[name])


def test_current_shape_with_callback():
    job = parse_task(task(), TaskRules(API, callback_hosts=("127.0.0.2:5173",)))
    assert job.notes == ()
    assert job.job_id == "local-capi2vwithcallback"
    assert job.video_id == "capi2vwithcallback"
    assert job.callback_url == "http://127.0.0.2:5173/api/i2v-webhook/capi2vwithcallback"
    assert [i.name for i in job.images] == ["capi2vwithcallback.png"]
    assert job.node_weights == {"4": 20.0, "16": 15.0, "44": 60.0}
    assert job.workflow["44"]["class_type"] == "WanMoeKSampler"


def test_missing_callback_is_derived_from_api_url():
    job = parse_task(task("task-i2v-no-callback"), API + "/")
    assert job.callback_url == f"{API}/api/i2v-webhook/capi2vnocallback"


def test_derive_mode_ignores_task_callback():
    job = parse_task(task(), API, callback_mode="derive")
    assert job.callback_url == callback_for(API, "capi2vwithcallback")


def test_fl2v_has_two_images_and_non_numeric_ids():
    job = parse_task(task("task-fl2v-with-callback"), API)
    assert [i.name for i in job.images] == ["capfl2vwithcallback_first.png", "capfl2vwithcallback_last.png"]
    job720 = parse_task(task("task-i2v-720p-options"), API)
    assert "998:upscale_model" in job720.workflow


def test_video_id_from_image_name_when_prefix_missing():
    t = task()
    t["id"] = "weird"
    assert parse_task(t, API).video_id == "capi2vwithcallback"


def test_early_shape_with_workflow_runs():
    wf = task()["input"]["workflow"]
    early = {"id": "vid1", "job_id": "local-vid1", "original_image_url": "http://img/x.png", "prompt": "p",
             "tags": [], "callback_url": "http://gm/api/i2v-webhook/vid1", "workflow": wf}
    job = parse_task(early, TaskRules(API, callback_hosts=("gm",)))
    assert (job.job_id, job.video_id, job.shape) == ("local-vid1", "vid1", "early")
    assert job.images[0].name == "vid1.png" and job.images[0].source == "http://img/x.png"
    assert job.callback_url == "http://gm/api/i2v-webhook/vid1"


def test_early_shape_without_workflow_fails_reportably():
    early = {"id": "vid1", "job_id": "local-vid1", "original_image_url": "http://img/x.png"}
    with pytest.raises(TaskError, match="task has no workflow") as info:
        parse_task(early, API)
    assert info.value.reportable
    assert info.value.job_id == "local-vid1"
    assert info.value.callback_url == f"{API}/api/i2v-webhook/vid1"


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t["input"].pop("workflow"), "workflow must be a non-empty"),
    (lambda t: t["input"].__setitem__("workflow", []), "workflow must be a non-empty"),
    (lambda t: t["input"]["workflow"]["44"].pop("class_type"), "node '44' has no class_type"),
    (lambda t: t["input"]["workflow"].__setitem__("9", "x"), "node '9' is not an object"),
    (lambda t: t["input"]["workflow"]["44"].__setitem__("inputs", []), "node '44' has inputs"),
    (lambda t: t["input"].__setitem__("images", {}), "images must be a list"),
    (lambda t: t["input"]["images"][0].__setitem__("name", "../x.png"), "plain file name"),
    (lambda t: t["input"]["images"][0].__setitem__("image", ""), "is empty"),
    (lambda t: t["input"].__setitem__("node_weights", [1]), "node_weights must be an object"),
    (lambda t: t["input"]["node_weights"].__setitem__("44", "heavy"), "node_weights\\['44'\\]"),
    (lambda t: t["input"].__setitem__("callback_url", "ftp://x"), "callback_url is not an http"),
    (lambda t: t["input"].__setitem__("callback_url", "http://[::1/x"), "callback_url is not an http"),
    (lambda t: t["input"].__setitem__("callback_url", 5), "callback_url is not an http"),
], ids=["no-workflow", "list-workflow", "no-class-type", "node-not-object", "inputs-not-object",
        "images-not-list", "image-path", "image-empty", "weights-not-object", "weight-not-number",
        "bad-callback", "unparsable-callback", "callback-not-string"])
def test_bad_fields_are_named_and_reportable(mutate, message):
    t = task()
    mutate(t)
    with pytest.raises(TaskError, match=message) as info:
        parse_task(t, API)
    assert info.value.job_id == "local-capi2vwithcallback"
    assert info.value.reportable


@pytest.mark.parametrize("bad, message", [
    ([], "not a JSON object"),
    ({"id": 5, "input": {}}, "no job id"),
    ({"id": "", "input": {}}, "no job id"),
    ({"something": 1}, "neither an 'input' object"),
])
def test_unidentifiable_tasks_are_not_reportable(bad, message):
    with pytest.raises(TaskError, match=message) as info:
        parse_task(bad, API)
    assert not info.value.reportable


# ---- hostile tasks --------------------------------------------------------------------------------

def test_callback_on_another_origin_is_set_aside_with_a_note():
    t = task()
    t["input"]["callback_url"] = "http://user:pw@evil.example/collect?token=1"
    job = parse_task(t, API)
    assert job.callback_url == callback_for(API, "capi2vwithcallback")
    assert len(job.notes) == 1 and "evil.example/collect" in job.notes[0]
    assert "pw" not in job.notes[0] and "token" not in job.notes[0]


@pytest.mark.parametrize("url, allowed", [
    ("http://gm.example:5173/api/i2v-webhook/v", True),
    ("https://gm.example:5173/api/i2v-webhook/v", False),      # another scheme is another origin
    ("http://gm.example:5174/api/i2v-webhook/v", False),
    ("http://gm.example.evil:5173/api/i2v-webhook/v", False),
    ("http://public.example/api/i2v-webhook/v", True),           # listed by host
    ("https://proxy.example:8443/x", True),                       # listed by host:port
    ("https://proxy.example/x", False),
])
def test_callback_origin_rule(url, allowed):
    rules = TaskRules(API, callback_hosts=("public.example", "proxy.example:8443"))
    t = task()
    t["input"]["callback_url"] = url
    assert (parse_task(t, rules).callback_url == url) is allowed


@pytest.mark.parametrize("job_id", ["local-../../../admin/x", "local-q?x=1", "local-a/b", "local-a b",
                                    "local-\nINFO fake", "x" * 300])
def test_ids_that_would_steer_a_url_are_refused_unreportably(job_id):
    t = task("task-i2v-no-callback")
    t["id"] = job_id
    with pytest.raises(TaskError, match="not an id GmAnimato issues") as info:
        parse_task(t, API)
    assert not info.value.reportable


def test_early_job_id_dot_dot_is_refused_but_reported_under_the_video_id():
    early = {"id": "vid1", "job_id": "..", "original_image_url": "http://img/x.png", "workflow": {}}
    with pytest.raises(TaskError, match="job_id '..' is not an id") as info:
        parse_task(early, API)
    assert info.value.reportable and info.value.job_id == "local-vid1"
    assert info.value.callback_url == f"{API}/api/i2v-webhook/vid1"


def test_early_video_id_with_a_slash_is_refused():
    with pytest.raises(TaskError, match="no usable video id"):
        parse_task({"id": "../admin", "job_id": "local-x", "original_image_url": "http://i/x.png"}, API)


def test_video_id_from_an_image_name_must_be_an_issued_id():
    t = task()
    t["id"] = "weird"
    t["input"]["images"][0]["name"] = "..%2f.png"
    with pytest.raises(TaskError, match="does not start with"):
        parse_task(t, API)


def test_deep_nesting_is_refused_and_reported():
    t = task("task-i2v-no-callback")
    deep: list = []
    for _ in range(200):
        deep = [deep]
    t["input"]["workflow"]["44"]["inputs"]["extra"] = deep
    with pytest.raises(TaskError, match="deeper than 64") as info:
        parse_task(t, API)
    assert info.value.reportable and info.value.job_id == "local-capi2vnocallback"


def test_control_characters_in_image_names_are_refused():
    t = task()
    t["input"]["images"][0]["name"] = "a.png\n2026-01-01 00:00:00 - local-worker - INFO - forged"
    with pytest.raises(TaskError, match="plain file name") as info:
        parse_task(t, API)
    assert "\n" not in str(info.value)


def test_allowed_node_types_limit_the_workflow():
    t = task("task-i2v-no-callback")
    types = {node["class_type"] for node in t["input"]["workflow"].values()}
    assert parse_task(t, TaskRules(API, allowed_node_types=frozenset(types))).job_id
    narrower = frozenset(types - {"WanMoeKSampler"})
    with pytest.raises(TaskError, match="'WanMoeKSampler', which jobs.allowed_node_types does not allow") as info:
        parse_task(t, TaskRules(API, allowed_node_types=narrower))
    assert info.value.reportable


def test_a_task_without_input_but_with_an_issued_id_is_reported():
    with pytest.raises(TaskError, match="neither an 'input'") as info:
        parse_task({"id": "local-abc"}, API)
    assert info.value.reportable and info.value.callback_url == f"{API}/api/i2v-webhook/abc"
