"""Folding a real ComfyUI frame stream (captured) into outcome, progress and outputs."""
from __future__ import annotations

import json
from pathlib import Path

from handler import watch as w
from handler.comfy_events import Event, parse_frame
from handler.outputs import collect_outputs

CAPTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "ws-gmanimato-i2v-vhs.json").read_text())
WEIGHTS = {"4": 20, "16": 15, "44": 60}


def replay(frames, prompt_id=CAPTURE["prompt_id"]):
    watch = w.start_watch(prompt_id, CAPTURE["workflow"], WEIGHTS)
    seen = []
    for frame in frames:
        new = w.apply_event(watch, Event(frame["type"], frame["data"]))
        if new.progress != watch.progress:
            seen.append(new.progress.percentage)
        watch = new
    return watch, seen


def test_captured_success_is_final_at_execution_success():
    frames = CAPTURE["frames"]
    cut = next(i for i, f in enumerate(frames) if f["type"] == "execution_success")
    watch, seen = replay(frames[:cut + 1])
    assert watch.outcome == w.SUCCEEDED
    assert seen == sorted(seen) and seen[-1] == 100.0
    refs = collect_outputs(watch.executed, None)
    assert [r.filename for r in refs] == ["Wan22_00013.mp4"]


def test_progress_passes_through_sampler_steps():
    watch, seen = replay(CAPTURE["frames"])
    assert any(30 < p < 80 for p in seen)


def test_frames_of_other_prompts_are_ignored():
    watch, seen = replay(CAPTURE["frames"], prompt_id="someone-else")
    assert watch.outcome == w.RUNNING and seen == [] and not watch.executed


def test_execution_error_names_node_type_and_message():
    watch = w.start_watch("p1", {"14": {"class_type": "LoadImage"}}, {})
    watch = w.apply_event(watch, Event("executing", {"node": "14", "prompt_id": "p1"}))
    watch = w.apply_event(watch, Event("execution_error", {
        "prompt_id": "p1", "node_id": "14", "node_type": "LoadImage", "exception_type": "FileNotFoundError",
        "exception_message": "[Errno 2] No such file or directory: 'x.png'\n", "traceback": ["a", "b"]}))
    message, details = w.describe_failure(watch)
    assert watch.outcome == w.FAILED
    assert message == ("ComfyUI failed at node 14 (LoadImage): FileNotFoundError: "
                       "[Errno 2] No such file or directory: 'x.png'")
    assert details == ["a", "b"]


def test_interrupted():
    watch = w.start_watch("p1", {"44": {"class_type": "WanMoeKSampler"}}, {})
    watch = w.apply_event(watch, Event("execution_interrupted", {"prompt_id": "p1", "node_id": "44",
                                                                 "node_type": "WanMoeKSampler"}))
    assert w.describe_failure(watch)[0] == "ComfyUI interrupted the prompt at node 44 (WanMoeKSampler)"


def test_history_recovers_a_missed_success():
    prompt_id = CAPTURE["prompt_id"]
    watch = w.start_watch(prompt_id, CAPTURE["workflow"], WEIGHTS)
    watch = w.apply_history(watch, CAPTURE["history_final"][prompt_id])
    assert watch.outcome == w.SUCCEEDED
    assert [r.filename for r in collect_outputs(watch.executed, None)] == ["Wan22_00013.mp4"]


def test_binary_and_junk_frames_are_skipped_and_unknown_types_tolerated():
    assert parse_frame(b"\x00\x00\x00\x01\x00\x00\x00\x02PNG") is None
    assert parse_frame("not json") is None
    assert parse_frame("[" * 100_000) is None                 # nested past any decoder's depth
    event = parse_frame('{"type": "new_kind_of_frame", "data": {"prompt_id": "p1"}}')
    watch = w.start_watch("p1", {"1": {"class_type": "X"}}, {})
    assert w.apply_event(watch, event) == watch


def test_the_tail_begins_once_the_sampler_is_done():
    frames = CAPTURE["frames"]
    watch = w.start_watch(CAPTURE["prompt_id"], CAPTURE["workflow"], WEIGHTS)
    tail_at = None
    for frame in frames:
        watch = w.apply_event(watch, Event(frame["type"], frame["data"]))
        if tail_at is None and w.in_tail(watch):
            tail_at = frame
    assert tail_at == next(f for f in frames if f["type"] == "executing" and f["data"]["node"] == "4")
    assert w.reporting_types(watch) == {"WanMoeKSampler"}


def test_a_node_type_seen_reporting_progress_counts_though_not_named_like_a_sampler():
    workflow = {"1": {"class_type": "LoadImage"}, "2": {"class_type": "FancyDiffusion"},
                "3": {"class_type": "SaveVideo"}}
    watch = w.start_watch("p", workflow, {})

    def feed(watch, kind, data):
        return w.apply_event(watch, Event(kind, {**data, "prompt_id": "p"}))

    watch = feed(watch, "execution_start", {})
    watch = feed(watch, "executing", {"node": "2"})
    assert not w.in_tail(watch)                           # nothing reports progress that it knows of
    watch = feed(watch, "progress", {"node": "2", "value": 1, "max": 4})
    watch = feed(watch, "progress", {"node": "99", "value": 1, "max": 4})   # not in the workflow: ignored
    assert watch.reporting == {"2"}
    watch = feed(watch, "executing", {"node": "3"})
    assert w.in_tail(watch)
    fresh = feed(feed(w.start_watch("p", workflow, {}), "execution_start", {}), "executing", {"node": "3"})
    assert not w.in_tail(fresh)                           # a new prompt knows nothing of node 2's type ...
    assert not w.in_tail(feed(fresh, "executing", {"node": "2"}), {"FancyDiffusion"})   # ... unless told
    assert w.in_tail(feed(feed(fresh, "executing", {"node": "2"}), "executing", {"node": "3"}),
                     {"FancyDiffusion"})
