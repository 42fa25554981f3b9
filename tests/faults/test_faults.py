"""Fault injection: every scenario runs the real supervisor.py against the simulated GmAnimato and
ComfyUI and moto S3, injects one fault, and checks the promise at GmAnimato (``Rig.check_promise``):
every claimed job gets its final webhook accepted once (or its refusal recorded), none is left
processing, none gets progress after its final webhook, none that GmAnimato had as completed runs
again, and every delivered file is in S3 with the right bytes."""
from __future__ import annotations

import os
import re
import secrets
import signal
import sqlite3
import sys
import time

import psutil
import pytest

from tests.conftest import free_port, wait_until, write_config
from tests.stack import base_config, comfy_sim_command
from tests.supervised import alive, pids, sampler, start_supervisor


def long_job(gma, steps: int = 30, final_faults: list | None = None, **spec) -> str:
    """Queue a job whose sampler takes ``steps`` x 0.1 s; ``final_faults`` script its final webhook's
    answers before it can be claimed."""
    vid = f"fault{secrets.token_hex(8)}"
    if final_faults:
        gma.faults(webhook={f"{vid}:final": final_faults})
    return gma.add_job(template="i2v", patch=sampler(steps, 0.1), video_id=vid, **spec)


def running_job(r, steps: int):
    """Start the supervisor and one job; return once the job is inside its sampler."""
    sup = r.start()
    vid = long_job(r.gma, steps)
    wait_until(lambda: r.in_sampler(vid), 30, 0.05, "the sampler running")
    return sup, vid


def worker_pid(sup, slot: str = "gpu0") -> int:
    return pids(sup.output(), "worker")[slot][-1]


def kill_worker(sup, pid: int, slot: str = "gpu0") -> None:
    """kill -9 one worker; wait for the supervisor to start its successor."""
    starts = len(pids(sup.output(), "worker")[slot])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: len(pids(sup.output(), "worker")[slot]) > starts, 30, 0.05, "the worker restarted")


def kill_supervisor(sup) -> None:
    """kill -9 the supervisor; wait until none of its children is left."""
    family = [c.pid for c in psutil.Process(sup.pid).children(recursive=True)]
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait(10)
    wait_until(lambda: not [p for p in family if alive(p)], 15, 0.05, "the supervisor's children gone")


def stop(sup) -> None:
    sup.signal(signal.SIGTERM)
    assert sup.wait(60) == 0


# ---- kill -9 of the worker process -----------------------------------------------------------------
@pytest.mark.timeout(120)
def test_worker_killed_during_input_upload_runs_the_job_again(own_gma, rig):
    r = rig(own_gma)
    own_gma.faults(media_delay=3)                 # the input image trickles in
    vid = long_job(own_gma, 5, image_mode="url")
    sup = r.start()
    wait_until(lambda: own_gma.stats()["media_calls"] >= 1, 30, 0.05, "the input download under way")
    assert r.row(vid)["phase"] == "claimed"
    kill_worker(sup, worker_pid(sup))
    r.check_promise({vid: "completed"})
    assert r.row(vid)["attempts"] == 2
    assert f"Job local-{vid}: found open in the journal (phase claimed, 1 start(s)): running it again" \
        in sup.output()
    stop(sup)


@pytest.mark.timeout(120)
def test_worker_killed_during_execution_follows_the_running_prompt(own_gma, rig):
    r = rig(own_gma)
    sup, vid = running_job(r, 30)
    prompt = r.row(vid)["prompt_id"]
    kill_worker(sup, worker_pid(sup))
    r.check_promise({vid: "completed"})
    assert r.row(vid)["attempts"] == 1 and r.row(vid)["prompt_id"] == prompt
    assert [e["prompt_id"] for e in r.executions(vid)] == [prompt]      # the GPU work was not repeated
    assert f"following prompt {prompt} on ComfyUI" in sup.output()
    stop(sup)


@pytest.mark.timeout(120)
def test_worker_killed_with_a_prefetched_job_queued_behind_the_running_one_recovers_both(own_gma, rig):
    r = rig(own_gma)
    sup, running = running_job(r, 40)
    queued = long_job(own_gma, 3)
    wait_until(lambda: r.row(queued).get("phase") == "prompt_queued", 30, 0.05, "the next job queued behind")
    assert own_gma.videos()[running]["status"] == "processing"      # the first one still running
    prompts = {vid: r.row(vid)["prompt_id"] for vid in (running, queued)}
    kill_worker(sup, worker_pid(sup))
    r.check_promise({running: "completed", queued: "completed"})
    for vid, prompt in prompts.items():                             # both followed: no GPU work repeated
        assert [e["prompt_id"] for e in r.executions(vid)] == [prompt], vid
        assert f"following prompt {prompt} on ComfyUI" in sup.output()
    stop(sup)


@pytest.mark.timeout(120)
def test_worker_killed_after_outputs_are_stored_sends_the_stored_result(own_gma, rig):
    r = rig(own_gma)
    r.hold_at("journal:outputs_stored")
    sup = r.start()
    vid = long_job(own_gma, 5)
    held = r.wait_hold()
    assert held["job"] == f"local-{vid}" and r.row(vid)["phase"] == "outputs_stored"
    assert not [h for h in own_gma.webhooks(vid) if h["body"].get("status") in ("completed", "failed")]
    kill_worker(sup, held["pid"])
    r.release()
    r.check_promise({vid: "completed"})
    assert len(r.executions(vid)) == 1 and r.row(vid)["attempts"] == 1
    assert f"Job local-{vid}: found open in the journal (phase outputs_stored, 1 start(s)): sending its " \
           "stored result" in sup.output()
    stop(sup)


@pytest.mark.timeout(120)
def test_worker_killed_during_the_webhook_retries_delivers_after_the_restart(own_gma, rig):
    r = rig(own_gma, webhook={"retry_delay": 0.5})
    sup = r.start()
    vid = long_job(own_gma, 5, final_faults=[500] * 4)

    def final_attempts() -> int:
        return len([h for h in own_gma.webhooks(vid) if h["body"].get("status") in ("completed", "failed")])

    wait_until(lambda: final_attempts() >= 2, 60, 0.02, "two final attempts")
    kill_worker(sup, worker_pid(sup))
    r.check_promise({vid: "completed"})
    assert [h["status"] for h in own_gma.webhooks(vid) if h["body"]["status"] == "completed"] == [500] * 4 + [201]
    assert "final webhook(s) from before to deliver" in sup.output()
    stop(sup)


# ---- kill -9 of the supervisor ---------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_supervisor_killed_mid_job_reruns_the_job_after_its_restart(own_gma, rig):
    r = rig(own_gma)
    first, vid = running_job(r, 40)
    kill_supervisor(first)
    assert own_gma.videos()[vid]["status"] == "processing" and r.row(vid)["phase"] == "prompt_queued"
    assert "leaving job local-" + vid + " open in the journal" in first.output()
    second = r.start()
    r.check_promise({vid: "completed"})
    assert r.row(vid)["attempts"] == 2
    assert "job(s) left open by an earlier run" in second.output()
    stop(second)


@pytest.mark.timeout(150)
def test_supervisor_killed_while_the_final_webhook_waits_in_the_outbox_delivers_it_once(own_gma, rig):
    r = rig(own_gma)
    first = r.start()
    vid = long_job(own_gma, 5, final_faults=[503] * 6)     # 4 inline attempts, then the outbox
    wait_until(lambda: r.row(vid).get("next_send_at") is not None, 60, 0.02, "the final webhook in the outbox")
    kill_supervisor(first)
    assert own_gma.videos()[vid]["status"] == "processing"
    second = r.start()
    r.check_promise({vid: "completed"})
    statuses = [h["status"] for h in own_gma.webhooks(vid) if h["body"]["status"] == "completed"]
    assert statuses[-1] == 201 and statuses.count(201) == 1 and len(statuses) == 7
    assert len(r.executions(vid)) == 1
    stop(second)


# ---- kill -9 of ComfyUI ----------------------------------------------------------------------------
@pytest.mark.timeout(150)
@pytest.mark.parametrize("max_attempts,outcome", [(2, "completed"), (1, "failed")])
def test_comfyui_killed_mid_job(own_gma, rig, max_attempts, outcome):
    r = rig(own_gma, jobs={"max_attempts": max_attempts})
    sup, vid = running_job(r, 30)
    os.kill(pids(sup.output(), "ComfyUI")["gpu0"][-1], signal.SIGKILL)
    videos = r.check_promise({vid: outcome})
    final = [h["body"] for h in own_gma.webhooks(vid) if h["status"] == 201 and h["body"]["status"] == outcome]
    if outcome == "failed":
        assert "ComfyUI on GPU 0 exited with signal 9 (SIGKILL) while running node 44 (WanMoeKSampler)" \
            in final[0]["error"] and "(start 1 of 1, jobs.max_attempts)" in final[0]["error"]
        assert videos[vid]["status"] == "failed"
    else:
        assert r.row(vid)["attempts"] == 2
        assert "waiting for ComfyUI to try again (start 2 of 2)" in sup.output()
    stop(sup)


# ---- GmAnimato down, refusing, failing -------------------------------------------------------------
@pytest.mark.timeout(180)
def test_gmanimato_down_while_results_are_ready_every_webhook_arrives_after(own_gma, rig):
    r = rig(own_gma, gpus="2", webhook={"max_retries": 1})
    sup = r.start(slots=2)
    vids = [long_job(own_gma, 15) for _ in range(3)]
    wait_until(lambda: sum(r.in_sampler(v) for v in vids) >= 2, 60, 0.05, "two jobs running")
    own_gma.kill()
    wait_until(lambda: sum(r.row(v).get("next_send_at") is not None for v in vids) >= 2, 90, 0.1,
               "results waiting in the outbox")
    own_gma.start()
    r.check_promise({v: "completed" for v in vids}, timeout=120)
    assert "kept in the outbox" in sup.output()
    stop(sup)


@pytest.mark.timeout(120)
def test_webhook_answered_500_five_times_then_201_and_403_recorded(own_gma, rig):
    r = rig(own_gma)
    flaky, refused = long_job(own_gma, 3, final_faults=[500] * 5), long_job(own_gma, 3, final_faults=[403])
    sup = r.start()
    r.check_promise({flaky: "completed", refused: "refused"})
    assert [h["status"] for h in own_gma.webhooks(flaky) if h["body"]["status"] == "completed"] == [500] * 5 + [201]
    assert [h["status"] for h in own_gma.webhooks(refused) if h["body"]["status"] == "completed"] == [403]
    assert own_gma.videos()[refused]["status"] == "processing"     # GmAnimato's own fault to clear
    stop(sup)


# ---- S3 --------------------------------------------------------------------------------------------
def job_behind_s3_gate(r, mode: str):
    """Set the S3 gate (down | forbidden), start the supervisor and queue a short job."""
    r.gate.set_mode(mode)
    return r.start(), long_job(r.gma, 3)


@pytest.mark.timeout(120)
def test_s3_unreachable_for_a_while_within_retry_for_then_back(own_gma, rig):
    r = rig(own_gma)
    sup, vid = job_behind_s3_gate(r, "down")
    wait_until(lambda: re.search(rf"local-{vid}/\S+: S3 upload of .* failed", sup.output()), 60, 0.05,
               "a failed upload")
    wait_until(lambda: sup.output().count("trying again in") >= 2, 30, 0.05, "two retries")
    r.gate.set_mode("open")
    r.check_promise({vid: "completed"})
    stop(sup)


@pytest.mark.timeout(150)
def test_a_job_storing_its_outputs_when_the_next_one_crashes_comfyui_is_not_run_again(own_gma, rig):
    r = rig(own_gma)
    sup, done = job_behind_s3_gate(r, "down")             # its outputs wait for S3 after its prompt ended
    crasher = own_gma.add_job(template="i2v", patch={"44": {"_meta": {"sim": {"crash": True}}}})
    wait_until(lambda: re.search(rf"local-{done}/\S+: S3 upload of .* failed", sup.output()), 60, 0.05,
               "the first job's upload failing")
    wait_until(lambda: sup.output().count("ComfyUI ready at") >= 2, 60, 0.05,
               "ComfyUI crashed by the next job and back")
    r.gate.set_mode("open")
    r.check_promise({done: "completed", crasher: "failed"}, timeout=120)
    assert len(r.executions(done)) == 1, "its prompt ran once: its files were fetched again, not remade"
    stop(sup)


@pytest.mark.timeout(120)
def test_s3_refusing_the_bucket_fails_the_job_at_once(own_gma, rig):
    r = rig(own_gma)
    sup, vid = job_behind_s3_gate(r, "forbidden")
    started = time.monotonic()
    r.check_promise({vid: "failed"})
    assert time.monotonic() - started < 20
    error = [h["body"] for h in own_gma.webhooks(vid) if h["status"] == 201][-1]["error"]
    assert "S3 refused the upload" in error and "AccessDenied" in error
    assert "trying again in" not in sup.output()
    stop(sup)


# ---- one owner per folder --------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_second_supervisor_on_the_same_folders_exits_2_and_touches_nothing(own_gma, rig):
    r = rig(own_gma)
    first, vid = running_job(r, 20)
    children = sorted(c.pid for c in psutil.Process(first.pid).children(recursive=True))
    second = start_supervisor(r.processes, r.tmp_path, r.tree, r.gpus, name="second")
    assert second.wait(30) == 2
    lines = [line for line in second.output().splitlines() if line.strip()]
    assert lines == [f"error: comfy.work_dir {r.tmp_path / 'slots'} is in use by another process "
                     f"(pid {first.pid}); give each supervisor its own comfy.work_dir and state_dir"], lines
    assert sorted(c.pid for c in psutil.Process(first.pid).children(recursive=True)) == children
    r.check_promise({vid: "completed"})
    stop(first)


# ---- the journal across restarts -------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_jobs_of_a_gpu_taken_out_of_the_box_are_taken_over(own_gma, rig):
    r = rig(own_gma, gpus="2")
    first = r.start(slots=2)
    vids = [long_job(own_gma, 40) for _ in range(2)]
    wait_until(lambda: all(r.in_sampler(v) for v in vids), 60, 0.05, "both jobs running")
    assert {r.row(v)["slot"] for v in vids} == {"gpu0", "gpu1"}
    kill_supervisor(first)
    r.gpus = "1"                                       # the box comes back with one GPU
    second = r.start(slots=1)
    r.check_promise({v: "completed" for v in vids})
    assert {r.row(v)["slot"] for v in vids} == {"gpu0"}
    assert "Journal: 1 open job(s) of gpu1, a slot this box no longer has, move to gpu0" in second.output()
    stop(second)


@pytest.mark.timeout(90)
def test_a_journal_from_a_newer_version_stops_the_supervisor_with_exit_2(own_gma, rig):
    r = rig(own_gma)
    state = r.tmp_path / "slots" / "state"
    state.mkdir(parents=True)
    with sqlite3.connect(state / "journal.sqlite3") as db:
        db.execute("PRAGMA user_version=99")
    sup = start_supervisor(r.processes, r.tmp_path, r.tree, r.gpus, name="newer")
    assert sup.wait(30) == 2
    assert "has journal schema version 99, newer than this program's 1" in sup.output()
    assert "started ComfyUI" not in sup.output()      # nothing was started


@pytest.mark.timeout(120)
def test_local_worker_killed_mid_job_recovers_it_at_its_next_start(own_gma, processes, tmp_path):
    port = free_port()
    processes.start("comfyui", comfy_sim_command("--port", str(port), "--cpu"))
    tree = base_config(own_gma.url, tmp_path, comfy={"mode": "attach", "attach": [f"127.0.0.1:{port}"]})
    config = write_config(tmp_path / "local.yaml", tree)
    first = processes.start("local1", [sys.executable, "local_worker.py", "--config", str(config)])
    vid = long_job(own_gma, 30)
    wait_until(lambda: any(h["body"].get("progress", {}).get("current_node") == "44"
                           for h in own_gma.webhooks(vid)), 60, 0.05, "the sampler running")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = processes.start("local2", [sys.executable, "local_worker.py", "--config", str(config)])
    rows = own_gma.wait_final([vid], timeout=60)
    assert rows[vid]["status"] == "completed"
    assert f"Job local-{vid}: found open in the journal (phase prompt_queued, 1 start(s)): following prompt" \
        in second.output()
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0


@pytest.mark.timeout(150)
def test_comfyui_dying_during_a_drain_leaves_the_job_for_the_next_start(own_gma, rig):
    r = rig(own_gma)
    first, vid = running_job(r, 40)
    first.signal(signal.SIGTERM)
    wait_until(lambda: "Draining" in first.output(), 10, 0.05, "the drain")
    os.kill(pids(first.output(), "ComfyUI")["gpu0"][-1], signal.SIGKILL)
    assert first.wait(60) == 0
    assert f"Job local-{vid} stays open in the journal: ComfyUI went away during the drain" in first.output()
    assert own_gma.videos()[vid]["status"] == "processing" and r.row(vid)["phase"] == "prompt_queued"
    second = r.start()
    r.check_promise({vid: "completed"})
    assert r.row(vid)["attempts"] == 2
    stop(second)


@pytest.mark.timeout(150)
def test_a_job_recovered_on_a_slot_that_turns_fatal_is_reported_with_the_reason(own_gma, rig):
    from tests.supervised import fake_uuids

    r = rig(own_gma, supervisor={"backoff_start": 0.1, "max_restarts": 1})
    first, vid = running_job(r, 40)
    kill_supervisor(first)
    r.tree["comfy"]["command"] = r.tree["comfy"]["command"] + ["--fail-on-gpu", fake_uuids("1")[0]]
    r.starts += 1
    second = start_supervisor(r.processes, r.tmp_path, r.tree, r.gpus, name="second")
    assert second.wait(60) == 1                    # every slot FATAL (not a configuration fault)
    r.check_promise({vid: "failed"})
    error = [h["body"] for h in own_gma.webhooks(vid) if h["status"] == 201][-1]["error"]
    assert error.startswith("ComfyUI of GPU 0 is FATAL: 2 crashes within"), error


@pytest.mark.timeout(150)
def test_jobs_of_a_worker_gone_fatal_are_taken_over_by_another_slot(own_gma, rig):
    r = rig(own_gma, gpus="2", supervisor={"max_restarts": 1, "backoff_start": 0.2})
    sup = r.start(slots=2)
    vid = long_job(own_gma, 60)
    wait_until(lambda: r.in_sampler(vid), 30, 0.05, "the sampler running")
    slot = r.row(vid)["slot"]
    other = {"gpu0": "gpu1", "gpu1": "gpu0"}[slot]
    kill_worker(sup, worker_pid(sup, slot), slot)
    wait_until(lambda: f"following prompt {r.row(vid)['prompt_id']}" in sup.output(), 30, 0.05,
               "the restarted worker following the prompt")
    os.kill(worker_pid(sup, slot), signal.SIGKILL)          # a second crash: the worker is FATAL
    wait_until(lambda: f"{slot}: worker FATAL" in sup.output(), 30, 0.05, "the worker FATAL")
    r.check_promise({vid: "completed"})
    assert r.row(vid)["slot"] == other
    assert f"Journal: 1 open job(s) of {slot}, whose worker is FATAL, move to {other}" in sup.output()
    stop(sup)
