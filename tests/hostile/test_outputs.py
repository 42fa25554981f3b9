"""Hostile ComfyUI outputs and workflows, against the real local_worker.py.

The simulated ComfyUI reports extra or replaced video entries (``--tamper-outputs``): names that climb
out of the output folder, absolute names, ``type: input``, a ``../..`` subfolder, an HTML page, an empty
``.mp4``. Only plain ``output`` files are fetched and stored, under the job's own S3 prefix, each with the
content type of what it is. A workflow using a node type outside ``jobs.allowed_node_types`` never
reaches ComfyUI.
"""
from __future__ import annotations

import pytest

from tests.hostile.conftest import start_local_worker
from worker.sim.gma_tasks import load_template

FORBIDDEN_NODE = "WanFirstLastFrameToVideo"     # in the fl2v template only


def node_types(*templates: str) -> set[str]:
    return {node["class_type"] for name in templates for node in load_template(name)["workflow"].values()}


def escaping(vid: str) -> list[dict]:
    """Entries a ComfyUI (or a custom node) must never get fetched and published."""
    return [{"filename": "../../escape.mp4", "subfolder": "", "type": "output"},
            {"filename": "/abs/evil.mp4", "subfolder": "", "type": "output"},
            {"filename": f"{vid}.png", "subfolder": "", "type": "input", "content": "png"},
            {"filename": "climb.mp4", "subfolder": "../..", "type": "output"}]


@pytest.mark.timeout(90)
def test_unsafe_outputs_are_set_aside_and_disallowed_nodes_never_run(gma, comfy, bucket, processes, tmp_path):
    allowed = sorted(node_types("i2v", "fl2v") - {FORBIDDEN_NODE})
    assert FORBIDDEN_NODE in node_types("fl2v") and FORBIDDEN_NODE not in node_types("i2v")
    disallowed = gma.add_job(template="fl2v")            # refused at the claim: ComfyUI never sees it
    mixed = gma.add_job(template="i2v")
    comfy.tamper("append", [*escaping(mixed), {"filename": "page.html", "subfolder": "", "type": "output",
                                               "content": "html"}])
    worker = start_local_worker(processes, tmp_path, gma, comfy, bucket, jobs={"allowed_node_types": allowed})

    gma.wait_final([disallowed, mixed], timeout=60)
    gma.one_failed(disallowed, FORBIDDEN_NODE, "jobs.allowed_node_types")
    body = gma.one_completed(mixed)
    names = [entry["filename"] for entry in body["files"]]
    assert names[0].endswith(".mp4") and "page.html" in names, names
    for bad in ("escape", "evil", f"{mixed}.png", "climb"):
        assert not any(bad in name for name in names), names
    keys = bucket.assert_keys_under([f"local-{mixed}"])
    assert sorted(keys) == sorted(f"local-{mixed}/{name}" for name in names)
    page = bucket.client.head_object(Bucket=bucket.name, Key=f"local-{mixed}/page.html")
    assert page["ContentType"] == "application/octet-stream", page["ContentType"]
    video = bucket.client.head_object(Bucket=bucket.name, Key=f"local-{mixed}/{names[0]}")
    assert video["ContentType"] == "video/mp4" and video["ContentLength"] > 1000
    set_aside = worker.lines(f"local-{mixed}: output set aside")
    assert len(set_aside) == 4, set_aside
    for shown in ("../../escape.mp4", "/abs/evil.mp4", "(type input)", "../../climb.mp4"):
        assert any(shown in line for line in set_aside), (shown, set_aside)
    assert comfy.prompts_of(mixed) and not comfy.prompts_of(disallowed)

    only_bad = gma.add_job(template="i2v")               # nothing but the escaping entries
    comfy.tamper("replace", escaping(only_bad))
    gma.wait_final([only_bad], timeout=60)
    gma.one_failed(only_bad, "no deliverable video")
    assert len(worker.lines(f"local-{only_bad}: output set aside")) == 4

    empty = gma.add_job(template="i2v")                  # a 0-byte .mp4 as the only video
    comfy.tamper("replace", [{"filename": "empty.mp4", "subfolder": "", "type": "output", "content": "empty"}])
    gma.wait_final([empty], timeout=60)
    gma.one_failed(empty, "no deliverable video", "empty")

    comfy.untamper()
    good = gma.add_job(template="i2v")
    gma.wait_final([good], timeout=60)
    gma.one_completed(good)

    worker.assert_alive()
    assert gma.stray() == []
    bucket.assert_keys_under([f"local-{mixed}", f"local-{good}"])
    assert not [k for k in bucket.keys() if k.startswith((f"local-{only_bad}/", f"local-{empty}/"))]
    worker.assert_clean_log()
    worker.stop()
