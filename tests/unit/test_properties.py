"""Property-based tests: what GmAnimato, ComfyUI or an operator can hand us never crashes the parsers.

Every input here is fuzzed (hypothesis, derandomized so a run is repeatable, with bounded example counts
so the file stays fast). The properties are the modules' promises: a task becomes a :class:`Job` with
safe ids or a :class:`TaskError`; output refs and progress folding never raise and keep progress within
0..100; a configuration loads or raises :class:`ConfigError`, never anything else.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler import watch as w
from handler.comfy_events import Event
from handler.outputs import OutputRef, collect_outputs, refs_from_ui
from worker.config import ENV_KEYS, STATE_DIRECTORY_ENV, Config, ConfigError, load_config
from worker.jobs.task import Job, TaskError, parse_task

API = "http://gm.example:5173"
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")       # fullmatch: "$" would let "id\n" pass


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- JSON-like values ----------------------------------------------------------------------------------

HUGE_INTS = st.sampled_from([400, -400, 309, 19, -19]).map(      # JSON allows integers beyond a float
    lambda e: 10 ** e if e > 0 else -(10 ** -e))
TEXT = st.text(max_size=12)


def json_values(huge: bool = True, leaves: int = 12) -> st.SearchStrategy:
    """Anything ``json.loads`` can return (NaN and Infinity included); ``huge``: integers beyond a float."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        TEXT, *([HUGE_INTS] if huge else []))
    return st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(TEXT, children, max_size=4), max_leaves=leaves)


JSON = json_values()


# --- task parsing --------------------------------------------------------------------------------------

IDS = st.one_of(
    st.from_regex(r"local-[A-Za-z0-9_-]{1,12}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
    st.sampled_from(["local-", "local-../x", "local-a/b", "local-a b", "local-\n", "local-é", "", " ",
                     "../x", "local-x?y=1", "local-%2e%2e"]),
    TEXT, JSON)
NODE_IDS = st.sampled_from(["1", "4", "16", "44", "x"])
NODE = st.fixed_dictionaries({"class_type": st.one_of(st.sampled_from(["KSampler", "LoadImage", ""]), JSON)},
                             optional={"inputs": st.one_of(st.just({}), JSON)})
WORKFLOW = st.one_of(st.dictionaries(st.one_of(NODE_IDS, TEXT), st.one_of(NODE, JSON), max_size=4), JSON)
IMAGE = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["a.png", "vid_first.png", "vid.png", "../a.png", "a/b.png", ".", "..",
                                       "a\\b.png", "a\x00.png", " a.png", "_first.png"]), TEXT, JSON),
    "image": st.one_of(st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "https://img.example/a.png",
                                        "iVBORw0KGgo=", " "]), TEXT, JSON)})
IMAGES = st.one_of(st.lists(st.one_of(IMAGE, JSON), max_size=3), JSON)
WEIGHTS = st.one_of(st.dictionaries(st.one_of(NODE_IDS, TEXT), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), HUGE_INTS, JSON), max_size=4), JSON)
CALLBACKS = st.one_of(st.sampled_from([
    None, "", API + "/api/i2v-webhook/v", "https://gm.example:5173/x", "http://gm.example/x",
    "http://other.example:5173/x", "ftp://gm.example/x", "http://", "http://[::1", "http://h:0/",
    "http://h:99999/", "javascript:alert(1)", API + "/x\n", "http://user:pw@gm.example:5173/x"]), TEXT, JSON)


def mostly(valid: st.SearchStrategy, fuzzed: st.SearchStrategy) -> st.SearchStrategy:
    """A field that is usually well-formed, so the parse gets past it and reaches the next one."""
    return st.one_of(valid, valid, valid, fuzzed)


GOOD_ID = st.from_regex(r"local-[A-Za-z0-9_-]{1,12}", fullmatch=True)
GOOD_VIDEO_ID = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
GOOD_WORKFLOW = st.dictionaries(NODE_IDS, st.fixed_dictionaries(
    {"class_type": st.sampled_from(["KSampler", "LoadImage", "VHS_VideoCombine"])},
    optional={"inputs": st.dictionaries(TEXT, st.one_of(st.integers(), TEXT, st.lists(TEXT, max_size=2)),
                                        max_size=3)}), min_size=1, max_size=4)
GOOD_IMAGE = st.fixed_dictionaries({
    "name": st.from_regex(r"[A-Za-z0-9_-]{1,10}(_first)?\.png", fullmatch=True),
    "image": st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "https://img.example/a.png"])})
GOOD_IMAGES = st.lists(GOOD_IMAGE, max_size=2)
EDGE_WEIGHTS = st.sampled_from([0, 0.0, 1e308, float("inf"), float("nan"), 10 ** 400, 2 ** 1024])  # numbers >= 0 too
GOOD_WEIGHTS = st.dictionaries(NODE_IDS, st.one_of(st.floats(0, 100), st.integers(0, 100), EDGE_WEIGHTS),
                               min_size=1, max_size=3)
GOOD_CALLBACK = st.sampled_from([None, API + "/api/i2v-webhook/v1"])
BODY = st.fixed_dictionaries({"workflow": mostly(GOOD_WORKFLOW, WORKFLOW)}, optional={
    "images": mostly(GOOD_IMAGES, IMAGES), "node_weights": mostly(GOOD_WEIGHTS, WEIGHTS),
    "callback_url": mostly(GOOD_CALLBACK, CALLBACKS)})
CURRENT = st.one_of(
    st.fixed_dictionaries({"id": mostly(GOOD_ID, IDS), "input": mostly(BODY, JSON)}),
    st.fixed_dictionaries({"id": GOOD_ID, "input": BODY}),
    st.fixed_dictionaries({"id": GOOD_VIDEO_ID, "input": st.builds(      # no prefix: an image names the video
        lambda body, images: {**body, "images": images}, BODY, st.lists(GOOD_IMAGE, min_size=1, max_size=2))}),
    st.fixed_dictionaries({"input": BODY}))
EARLY = st.fixed_dictionaries(
    {"id": mostly(GOOD_VIDEO_ID, IDS), "workflow": mostly(GOOD_WORKFLOW, WORKFLOW),
     "original_image_url": mostly(st.just("https://img.example/v.png"), st.one_of(TEXT, JSON))},
    optional={"job_id": mostly(GOOD_ID, IDS), "callback_url": mostly(GOOD_CALLBACK, CALLBACKS)})
TASKS = st.one_of(CURRENT, EARLY, st.dictionaries(st.sampled_from(["id", "input", "job_id",
                                                                    "original_image_url"]), JSON), JSON)


def check_job(job: Job) -> None:
    assert SAFE_ID.fullmatch(job.job_id), job.job_id
    assert SAFE_ID.fullmatch(job.video_id), job.video_id
    assert job.callback_url.startswith(("http://", "https://")), job.callback_url


@fuzz(300)
@given(TASKS)
def test_parse_task_returns_a_safe_job_or_raises_task_error(task):
    try:
        job = parse_task(task, API)
    except TaskError:
        return
    check_job(job)


@fuzz(150)
@given(st.one_of(CURRENT, EARLY))
def test_parse_task_callback_stays_on_the_api_origin(task):
    """The module's promise: a task's callback_url is used only on api.url's origin (no callback_hosts here)."""
    try:
        job = parse_task(task, API)
    except TaskError:
        return
    assert job.callback_url.startswith(API + "/"), job.callback_url


def check_parsed(task) -> None:
    """A task parses into a sound Job, or raises TaskError: nothing else."""
    try:
        check_job(parse_task(task, API))
    except TaskError:
        pass


@fuzz(250)
@given(CURRENT)
def test_parse_task_current_shape(task):
    check_parsed(task)


@fuzz(200)
@given(EARLY)
def test_parse_task_early_shape(task):
    check_parsed(task)


@fuzz(60)
@given(GOOD_ID, GOOD_WORKFLOW, st.dictionaries(NODE_IDS, st.one_of(
    EDGE_WEIGHTS, st.floats(allow_nan=True, allow_infinity=True), st.integers(), HUGE_INTS), min_size=1, max_size=3))
def test_parse_task_node_weights_any_json_number(job_id, workflow, weights):
    """Any number JSON can carry as a weight (NaN, Infinity, 1e400 as an integer) is refused or kept as a
    number >= 0, the rule the refusal message states."""
    try:
        job = parse_task({"id": job_id, "input": {"workflow": workflow, "node_weights": weights}}, API)
    except TaskError:
        return
    check_job(job)
    assert all(isinstance(v, float) and v >= 0 for v in job.node_weights.values()), job.node_weights


def test_parse_task_examples_that_must_be_refused():
    """Ids that would climb out of a folder or a URL path are never used (the rule ids follow)."""
    workflow = {"1": {"class_type": "LoadImage", "inputs": {}}}
    for job_id in ("local-../x", "local-a/b", "local-a b", "local-x?y=1"):
        task = {"id": job_id, "input": {"workflow": workflow, "images": []}}
        try:
            job = parse_task(task, API)
        except TaskError:
            continue
        check_job(job)


# --- output refs ---------------------------------------------------------------------------------------

FILE_ITEM = st.fixed_dictionaries({}, optional={
    "filename": st.one_of(st.sampled_from(["a.mp4", "b.PNG", "c.webm", "d.MP4", ".mp4", ""]), TEXT, JSON),
    "subfolder": st.one_of(TEXT, JSON), "type": st.one_of(st.sampled_from(["output", "temp", ""]), JSON),
    "format": st.one_of(st.just("video/h264-mp4"), JSON), "animated": st.one_of(st.just([True]), JSON)})
UI = st.one_of(st.dictionaries(st.sampled_from(["gifs", "images", "videos", "audio", "files", "text"]),
                               st.one_of(st.lists(st.one_of(FILE_ITEM, JSON), max_size=3), JSON), max_size=3),
               JSON)
EXECUTED = st.dictionaries(st.one_of(NODE_IDS, TEXT), UI, max_size=4)


def check_refs(refs) -> None:
    assert isinstance(refs, list)
    for ref in refs:
        assert isinstance(ref, OutputRef) and isinstance(ref.filename, str) and ref.type != "temp"
        assert isinstance(ref.delivery_name, str) and isinstance(ref.is_video, bool)


@fuzz(250)
@given(st.one_of(NODE_IDS, TEXT, JSON), UI)
def test_refs_from_ui_never_raises(node_id, ui):
    check_refs(refs_from_ui(node_id, ui))


@fuzz(150)
@given(EXECUTED, st.one_of(st.none(), EXECUTED))
def test_collect_outputs_never_raises_and_puts_videos_first(executed, history):
    refs = collect_outputs(executed, history)
    check_refs(refs)
    flags = [ref.is_video for ref in refs]
    assert flags == sorted(flags, reverse=True)
    keys = [(ref.filename, ref.subfolder, ref.type) for ref in refs]
    assert len(keys) == len(set(keys))


# --- progress folding ----------------------------------------------------------------------------------

PROMPT = "p-1"
EVENT_TYPES = ["executing", "progress", "executed", "execution_start", "execution_cached", "execution_success",
               "execution_error", "execution_interrupted", "status", "progress_state"]


def frames(huge: bool):
    """(any event, an event of our prompt): ComfyUI websocket frames with fuzzed ``data``."""
    json = json_values(huge, leaves=6)
    node = st.one_of(NODE_IDS, st.none(), TEXT, json)
    number = st.one_of(st.integers(-5, 20), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["3", "x", "1e999", "nan"]), json, *([HUGE_INTS] if huge else []))
    data = st.fixed_dictionaries({}, optional={
        "prompt_id": st.one_of(st.just(PROMPT), st.just("other"), st.none(), json),
        "node": node, "display_node": node, "value": number, "max": number,
        "nodes": st.one_of(st.lists(node, max_size=4), json), "output": st.one_of(UI, json),
        "node_id": node, "node_type": st.one_of(TEXT, json), "exception_type": st.one_of(TEXT, json),
        "exception_message": st.one_of(TEXT, json), "traceback": st.one_of(st.lists(TEXT, max_size=3), json),
        "status": json})
    anything = st.builds(Event, st.one_of(st.sampled_from(EVENT_TYPES), TEXT), data)
    ours = st.builds(lambda t, d: Event(t, {**d, "prompt_id": PROMPT}), st.sampled_from(EVENT_TYPES), data)
    return anything, ours, data


EVENTS, OURS, DATA = frames(huge=True)
SANE_EVENTS, SANE_OURS, _ = frames(huge=False)     # numbers a float can hold
STREAMS = st.lists(st.one_of(OURS, OURS, OURS, EVENTS), max_size=12)     # mostly ours: the fold gets somewhere
# Well-formed frames of our prompt, in any order: what a real ComfyUI sends, and where ordering bugs show.
WELL_FORMED = st.one_of(
    st.builds(lambda n: Event("executing", {"prompt_id": PROMPT, "node": n}), st.one_of(NODE_IDS, st.none())),
    st.builds(lambda n, v, m: Event("progress", {"prompt_id": PROMPT, "node": n, "value": v, "max": m}),
              st.one_of(NODE_IDS, st.none()), st.integers(0, 20), st.integers(1, 20)),
    st.builds(lambda ns: Event("execution_cached", {"prompt_id": PROMPT, "nodes": ns}), st.lists(NODE_IDS, max_size=3)),
    st.builds(lambda n: Event("executed", {"prompt_id": PROMPT, "node": n, "output": {}}), NODE_IDS),
    st.just(Event("execution_start", {"prompt_id": PROMPT})))
ORDERED_STREAMS = st.lists(st.one_of(WELL_FORMED, WELL_FORMED, WELL_FORMED, SANE_OURS, SANE_EVENTS), max_size=12)
WATCH_WORKFLOW = st.dictionaries(NODE_IDS, st.fixed_dictionaries(
    {"class_type": st.sampled_from(["KSampler", "LoadImage", "VHS_VideoCombine"])}), min_size=0, max_size=5)
WATCH_WEIGHTS = st.dictionaries(st.one_of(NODE_IDS, TEXT), st.one_of(
    st.floats(min_value=0, max_value=1e6), st.integers(0, 1000)), max_size=5)
HISTORY = st.fixed_dictionaries({}, optional={
    "status": st.one_of(st.fixed_dictionaries({}, optional={
        "status_str": st.one_of(st.sampled_from(["success", "error"]), JSON),
        "completed": st.one_of(st.booleans(), JSON),
        "messages": st.one_of(st.lists(st.one_of(
            st.tuples(st.sampled_from(EVENT_TYPES), DATA).map(list), JSON), max_size=4), JSON)}), JSON),
    "outputs": st.one_of(EXECUTED, JSON), "prompt": JSON, "meta": JSON})


def check_watch(watch: w.PromptWatch) -> float:
    pct = watch.progress.percentage
    assert isinstance(pct, float) and 0.0 <= pct <= 100.0, pct
    snap = watch.progress.snapshot()
    assert 0.0 <= snap["percentage"] <= 100.0 and 0.0 <= snap["current_node_progress"] <= 100.0, snap
    if watch.outcome in (w.FAILED, w.INTERRUPTED):
        message, details = w.describe_failure(watch)
        assert isinstance(message, str) and all(isinstance(line, str) for line in details)
    return pct


@fuzz(150)
@given(WATCH_WORKFLOW, WATCH_WEIGHTS, STREAMS)
def test_apply_event_never_raises_and_keeps_progress_in_range(workflow, weights, events):
    watch = w.start_watch(PROMPT, workflow, weights)
    check_watch(watch)
    for event in events:
        before = watch
        watch = w.apply_event(watch, event)
        check_watch(watch)
        if before.done:     # the outcome is final at execution_success / _error / _interrupted
            assert watch is before
        if event.type == "execution_success" and event.prompt_id == PROMPT and not before.done:
            assert watch.outcome == w.SUCCEEDED and watch.progress.percentage == 100.0


@fuzz(200)
@given(WATCH_WORKFLOW, WATCH_WEIGHTS, ORDERED_STREAMS)
def test_progress_never_goes_backwards_while_the_prompt_runs(workflow, weights, events):
    watch = w.start_watch(PROMPT, workflow, weights)
    for event in events:
        before = watch
        watch = w.apply_event(watch, event)
        if not watch.done:
            assert watch.progress.percentage >= before.progress.percentage, (event, before.progress, watch.progress)


@fuzz(150)
@given(WATCH_WORKFLOW, WATCH_WEIGHTS, st.lists(SANE_OURS, max_size=6), HISTORY)
def test_apply_history_never_raises(workflow, weights, events, entry):
    watch = w.start_watch(PROMPT, workflow, weights)
    for event in events:
        watch = w.apply_event(watch, event)
    was_done = watch.done
    after = w.apply_history(watch, entry)
    check_watch(after)
    if was_done:
        assert after.outcome == watch.outcome
    check_refs(collect_outputs(after.executed, None))


@fuzz(200)
@given(WATCH_WORKFLOW, WATCH_WEIGHTS, st.lists(st.sampled_from(["1", "4", "16", "44", "x"]), max_size=6))
def test_cached_nodes_count_as_done_and_success_is_100(workflow, weights, cached):
    """The docstring's promises: cached nodes count as done; everything is done at execution_success."""
    watch = w.start_watch(PROMPT, workflow, weights)
    watch = w.apply_event(watch, Event("execution_cached", {"prompt_id": PROMPT, "nodes": cached}))
    assert watch.progress.done == frozenset(n for n in cached if n in watch.progress.weights)
    watch = w.apply_event(watch, Event("execution_success", {"prompt_id": PROMPT}))
    assert watch.outcome == w.SUCCEEDED and watch.progress.percentage == 100.0


# --- config loading ------------------------------------------------------------------------------------

def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.append(prefix + f.name)
            keys += _dotted_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


CONFIG_KEYS = _dotted_keys(Config)
YAML_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(allow_nan=True, allow_infinity=True), YAML_TEXT,
    st.sampled_from(["1e300", "-1", "0", "2592001", "abc", "all", "none", "attach", "start", "http://gm:5173",
                     "127.0.0.1:8188", "host:99999", "whsec_AAAA", "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
                     "secret.txt", "/nonexistent", ".", "", " ", "\x00", "café", "2024-13-45"]))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(YAML_TEXT, children, max_size=3), max_leaves=8)
TREES = st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), YAML_TEXT), YAML_VALUES, max_size=6)
YAML_ISH = st.lists(st.sampled_from(list("{}[]:,-&*!|>'\"#%@`?\n\t .0129aexz\\/")
                                    + ["api", "comfy", "poll_interval", "!!int ", "!!binary ", "&a ", "*a",
                                       "\n  ", ": ", "- "]), max_size=40).map("".join)


def _nest(flat: dict) -> dict:
    """{"api.poll_interval": v, ...} -> {"api": {"poll_interval": v}}; a key set twice keeps its last value."""
    tree: dict = {}
    for dotted, value in flat.items():
        parts = str(dotted).split(".") if isinstance(dotted, str) else [dotted]
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return tree


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs")
    (path / "secret.txt").write_bytes(b"\xff\xfenot utf-8")
    return path


def check_load(path, env=None) -> None:
    try:
        config = load_config(path, env=env or {})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(config.state_path, Path)
    assert all(isinstance(s, str) for s in config.secrets())


@fuzz(200)
@given(TREES)
def test_load_config_fuzzed_trees_raise_only_config_error(folder, flat):
    path = folder / "tree.yaml"
    path.write_text(yaml.safe_dump(_nest(flat), allow_unicode=True), encoding="utf-8")
    check_load(path)


@fuzz(250)
@given(st.one_of(st.binary(max_size=200), YAML_ISH.map(lambda t: t.encode("utf-8"))))
def test_load_config_random_bytes_raise_only_config_error(folder, data):
    path = folder / "bytes.yaml"
    path.write_bytes(data)
    check_load(path)


ENV_NAMES = [name for name, _ in ENV_KEYS] + ["COMFY_HOST", STATE_DIRECTORY_ENV]


@fuzz(200)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.one_of(YAML_TEXT, st.sampled_from(
    ["1e300", "abc", "-1", "nan", "inf", "9" * 400, "host:99999", "bad region", "café"])), max_size=4))
def test_load_config_fuzzed_env_raises_only_config_error_naming_the_variable(env):
    try:
        load_config(None, env=env)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        named = [name for name in env if name in message]
        keys = [dotted for dotted in CONFIG_KEYS if message.startswith(dotted + ":")]
        assert named or keys, message


def test_properties_use_finite_examples():
    """Guard: the huge integers above really are beyond a float (what the fuzzing relies on)."""
    with pytest.raises(OverflowError):
        float(10 ** 400)
    assert math.isinf(float("1e999"))
