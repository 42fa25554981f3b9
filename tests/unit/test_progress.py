"""Weighted progress: node weights, cached nodes, the spurious first 100 % event."""
from __future__ import annotations

from handler import progress as p

NODES = ["1", "4", "16", "44"]
WEIGHTS = {"4": 20, "16": 15, "44": 60}   # total 96 with node 1 at 1.0


def test_starts_at_zero():
    state = p.start_progress(NODES, WEIGHTS)
    assert state.snapshot() == {"percentage": 0.0, "completed_nodes": 0, "total_nodes": 4,
                                "current_node": None, "current_node_progress": 0.0}


def test_executing_marks_previous_node_done():
    state = p.start_progress(NODES, WEIGHTS)
    state = p.on_executing(state, "1")
    assert state.percentage == 0.0
    state = p.on_executing(state, "44")
    assert state.percentage == round(100 * 1 / 96, 1)
    assert state.snapshot()["completed_nodes"] == 1


def test_sampler_steps_are_weighted():
    state = p.on_executing(p.start_progress(NODES, WEIGHTS), "44")
    state = p.on_node_progress(state, "44", 2, 4)
    assert state.percentage == round(100 * 30 / 96, 1)
    assert state.snapshot()["current_node_progress"] == 50.0


def test_first_progress_at_100_percent_is_ignored():
    state = p.on_executing(p.start_progress(NODES, WEIGHTS), "44")
    state = p.on_node_progress(state, "44", 4, 4)
    assert state.percentage == 0.0
    state = p.on_node_progress(state, "44", 1, 4)
    assert state.percentage == round(100 * 15 / 96, 1)
    state = p.on_node_progress(state, "44", 4, 4)          # later 100 % events count
    assert state.percentage == round(100 * 60 / 96, 1)


def test_cached_nodes_count_as_done_and_success_reaches_100():
    state = p.on_cached(p.start_progress(NODES, WEIGHTS), ["1", "4", "unknown"])
    assert state.percentage == round(100 * 21 / 96, 1)
    assert p.on_success(state).snapshot()["percentage"] == 100.0
    assert p.on_success(state).snapshot()["completed_nodes"] == 4


def test_zero_max_progress_is_ignored_and_unlisted_nodes_weigh_one():
    state = p.start_progress(["a", "b"], {})
    assert state.total_weight == 2.0
    assert p.on_node_progress(state, "a", 1, 0) == state
