"""A slot's jobs overlap, through the real supervisor.py (one slot) and the simulators: the next job is
claimed near the end of the running one and queued behind it (prefetch), never long before; a job's
final webhook goes out while the next one executes; no progress is sent once only silent nodes are left.
ComfyUI's /history (its own clock, ms) and GmAnimato's records (same machine, same clock) decide."""
from __future__ import annotations

import re
import sys
from datetime import datetime

import pytest
import requests

from tests.conftest import wait_until, write_config
from tests.stack import base_config
from tests.supervised import sampler


def start(processes, tmp_path, gma, name="supervisor", **sections):
    """The supervisor with one slot, and the address its ComfyUI answers on (a taken port is skipped)."""
    tree = base_config(gma.url, tmp_path, **sections)
    config = write_config(tmp_path / f"{name}.yaml", tree)
    sup = processes.start(name, [sys.executable, "supervisor.py", "--config", str(config)])
    match = wait_until(lambda: re.search(r"ComfyUI ready at (http://\S+) after", sup.output()), 60, 0.1,
                       "the slot ready")
    return sup, match.group(1)


def execution_times(comfy_url: str) -> dict[str, tuple[float, float]]:
    """video id -> (execution_start, execution_success) in epoch seconds, from ComfyUI's history."""
    history = requests.get(f"{comfy_url}/history", timeout=10).json()
    times = {}
    for prompt_id, entry in history.items():
        stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
        vid = prompt_id.removeprefix("local-").rsplit("-", 1)[0]
        times[vid] = (stamps["execution_start"] / 1000.0, stamps["execution_success"] / 1000.0)
    return times


def filed_times(comfy_url: str, *vids: str) -> dict[str, tuple[float, float]]:
    """execution_times once ComfyUI has filed every one of ``vids`` in its history: a job's final webhook
    can come before that (the worker need not wait for /history)."""
    def filed():
        times = execution_times(comfy_url)
        return times if set(vids) <= set(times) else None
    return wait_until(filed, 10, 0.05, "the prompts in ComfyUI's history")


def claimed_at(gma, vid: str) -> float:
    return datetime.fromisoformat(gma.videos()[vid]["dequeued_at"].replace("Z", "+00:00")).timestamp()


def progress_hooks(gma, vid: str) -> list[dict]:
    return [h for h in gma.webhooks(vid) if h["body"]["status"] == "processing"]


def final_hook(gma, vid: str) -> dict:
    return next(h for h in gma.webhooks(vid) if h["body"]["status"] == "completed" and h["status"] == 201)


@pytest.mark.timeout(120)
def test_the_next_job_is_claimed_near_the_end_of_the_running_one_and_queued_behind_it(
        gmanimato, processes, tmp_path):
    # the template's weights give the nodes after the sampler a third of the job: at the sampler's rate
    # (6 s for its 57 %) they count 3.5 s, so the estimate falls under 6 s some 2.5 s into the sampler
    sup, comfy_url = start(processes, tmp_path, gmanimato, jobs={"prefetch_window": 6.0})
    first = gmanimato.add_job(template="i2v", patch=sampler(60, 0.1))      # about 6 s in its sampler
    wait_until(lambda: gmanimato.videos()[first]["status"] == "processing", 30, 0.05, "the first job claimed")
    second = gmanimato.add_job(template="i2v", patch=sampler(2, 0.05))
    rows = gmanimato.wait_final([first, second], timeout=60)
    assert all(rows[v]["status"] == "completed" and rows[v]["claimed_count"] == 1 for v in (first, second))

    times = filed_times(comfy_url, first, second)
    start_1, success_1 = times[first]
    claim_2 = claimed_at(gmanimato, second)
    assert claim_2 < success_1, "the second job was claimed before the first one ended (prefetch)"
    assert claim_2 > start_1 + 1.5, "but not at once: only once the first had less than 6 s left"
    assert times[second][0] >= success_1                    # one prompt at a time on the GPU
    early = [h for h in progress_hooks(gmanimato, second) if h["t"] < success_1 - 0.002]
    assert not early, f"progress of the queued job before it started: {early}"
    assert "Received task: local-" + second in sup.output()


@pytest.mark.timeout(120)
def test_without_prefetch_the_next_job_waits_for_the_gpu_but_not_for_the_delivery(gmanimato, processes, tmp_path):
    sup, comfy_url = start(processes, tmp_path, gmanimato, jobs={"prefetch": False}, webhook={"retry_delay": 3.0})
    first = gmanimato.add_job(template="i2v", patch=sampler(10, 0.05))
    gmanimato.faults(webhook={f"{first}:final": [500]})      # its final webhook takes a 3 s retry
    wait_until(lambda: gmanimato.videos()[first]["status"] == "processing", 30, 0.05, "the first job claimed")
    second = gmanimato.add_job(template="i2v", patch=sampler(2, 0.05))
    gmanimato.wait_final([first, second], timeout=60)

    times = filed_times(comfy_url, first, second)
    assert claimed_at(gmanimato, second) >= times[first][1] - 0.002, "claimed once the GPU was free"
    assert times[second][0] < final_hook(gmanimato, first)["t"], \
        "the second job ran while the first one's final webhook was still being retried"


@pytest.mark.timeout(120)
def test_no_progress_is_sent_once_only_decoding_and_saving_are_left(gmanimato, processes, tmp_path):
    sup, comfy_url = start(processes, tmp_path, gmanimato, webhook={"progress_interval": 0.05})
    gmanimato.faults(progress_delay=0.3)                     # a slow progress endpoint
    try:
        # the sampler outlasts one slow progress round; decoding and encoding take 0.9 s, as captured on a
        # GPU: long enough for progress webhooks naming them to go out, were they sent
        patch = {**sampler(12, 0.05), "4": {"_meta": {"sim": {"sleep": 0.127}}},
                 "16": {"_meta": {"sim": {"sleep": 0.794}}}}
        ids = [gmanimato.add_job(template="i2v", patch=patch) for _ in range(3)]
        gmanimato.wait_final(ids, timeout=60)
    finally:
        gmanimato.faults(clear=True)
    for vid in ids:
        nodes = [h["body"]["progress"]["current_node"] for h in progress_hooks(gmanimato, vid)]
        assert "44" in nodes, nodes                            # the sampler's progress went out
        assert not {"4", "16"} & set(nodes), f"progress sent in the tail (VAEDecode, VHS_VideoCombine): {nodes}"
        hooks = gmanimato.webhooks(vid)
        assert hooks[-1]["body"]["status"] == "completed"      # nothing landed after the final one
