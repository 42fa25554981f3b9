"""Restart decisions and the state table, with fabricated exits and clocks."""
from __future__ import annotations

import signal

import pytest

from worker import exits
from worker.exits import describe_status
from worker.supervision.policy import RestartPolicy, decide_restart
from worker.supervision.states import ChildState as S
from worker.supervision.states import IllegalTransition, StateHolder

POLICY = RestartPolicy(backoff_start=1, backoff_cap=60, healthy_reset=300, max_restarts=5, restart_window=300)


def test_backoff_doubles_with_each_recent_crash():
    crashes = []
    delays = []
    for now in (10, 11, 13, 17, 25):
        crashes.append(now)
        delays.append(decide_restart(1, crashes, now, POLICY).delay)
    assert delays == [1, 2, 4, 8, 16]


def test_too_many_crashes_in_window_is_fatal():
    crashes = [1, 2, 3, 4, 5, 6]
    verdict = decide_restart(1, crashes, 6, POLICY)
    assert verdict.action == "fatal" and "6 crashes within 300 s" in verdict.reason


def test_old_crashes_fall_out_of_the_window():
    verdict = decide_restart(1, [0, 1, 2, 3, 4, 1000], 1000, POLICY)
    assert (verdict.action, verdict.delay) == ("restart", 1)


def test_healthy_run_resets_backoff():
    verdict = decide_restart(-signal.SIGKILL, [10, 20, 400], 400, POLICY, healthy_for=301)
    assert verdict.delay == 1


def test_config_exit_and_no_gpu_are_fatal_at_once():
    assert decide_restart(exits.EXIT_CONFIG, [1], 1, POLICY).action == "fatal"
    tail = "...\nRuntimeError: No CUDA GPUs are available\n"
    verdict = decide_restart(1, [1], 1, POLICY, log_tail=tail)
    assert verdict.action == "fatal" and "No CUDA GPUs" in verdict.reason


@pytest.mark.parametrize("code, text", [(0, "exit code 0"), (1, "exit code 1"),
                                        (-9, "signal 9 (SIGKILL)"), (-15, "signal 15 (SIGTERM)"),
                                        (None, "an unknown status")])
def test_describe_status(code, text):
    assert describe_status(code) == text


def test_state_table_refuses_illegal_moves():
    holder = StateHolder("gpu0 comfyui")
    holder.set_state(S.STARTING)
    holder.set_state(S.RUNNING)
    holder.set_state(S.BACKOFF)
    holder.set_state(S.FATAL)
    with pytest.raises(IllegalTransition, match="gpu0 comfyui: cannot go from fatal to starting"):
        holder.set_state(S.STARTING)


def test_an_attached_comfyui_that_does_not_answer_is_named_once_then_at_a_slow_interval():
    from worker.supervision.policy import silence_report
    assert silence_report(None, 0.0, 100.0, 60.0) == "gone"
    assert silence_report(100.0, 100.0, 130.0, 60.0) is None
    assert silence_report(100.0, 100.0, 160.0, 60.0) == "still"
    assert silence_report(100.0, 160.0, 200.0, 60.0) is None
