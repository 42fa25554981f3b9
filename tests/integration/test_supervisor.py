"""The real supervisor.py process with simulated GPUs (the fake pynvml first on PYTHONPATH), simulated
ComfyUI programs and the simulated GmAnimato: slots, restarts, FATAL, draining, orphans, systemd."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, free_port, wait_until
from tests.stack import comfy_sim_command
from tests.supervised import (all_up, alive, fake_uuids, gpu_config, gpu_env, in_sampler, pids, ready_supervisor,
                              sampler, slot_of_job, start_long_job, start_supervisor, stop_clean)

@pytest.mark.timeout(150)
def test_four_gpus_get_four_pinned_slots_and_share_twenty_jobs(gmanimato, processes, tmp_path):
    sup = ready_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path), "4", 4)
    uuids = fake_uuids("4")
    ports = set()
    for slot, slot_pids in pids(sup.output(), "ComfyUI").items():
        proc = psutil.Process(slot_pids[-1])       # the one that answers (a port clash restarts a first one)
        assert proc.environ()["CUDA_VISIBLE_DEVICES"] == uuids[int(slot.removeprefix("gpu"))], slot
        ports.add(proc.cmdline()[proc.cmdline().index("--port") + 1])
    assert len(ports) == 4 and len(pids(sup.output(), "ComfyUI")) == 4
    assert len(pids(sup.output(), "worker")) == 4

    ids = [gmanimato.add_job(template="i2v", patch=sampler(6, 0.05)) for _ in range(20)]
    rows = gmanimato.wait_final(ids, timeout=100)
    assert all(rows[v]["status"] == "completed" and rows[v]["claimed_count"] == 1 for v in ids)
    assert all(len([h for h in gmanimato.webhooks(v) if h["body"]["status"] == "completed"]) == 1 for v in ids)
    assert {slot_of_job(sup.output(), v) for v in ids} == {"gpu0", "gpu1", "gpu2", "gpu3"}
    stop_clean(sup)


@pytest.mark.timeout(150)
def test_two_supervisors_share_one_gmanimato_each_job_once(gmanimato, processes, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sups = [start_supervisor(processes, tmp_path / d, gpu_config(gmanimato, tmp_path / d), "3", name=d)
            for d in ("a", "b")]
    for sup in sups:
        wait_until(lambda: all_up(sup, 3), 60, 0.1, "3 slots ready")
    ids = [gmanimato.add_job(template="i2v", patch=sampler(4, 0.05)) for _ in range(30)]
    rows = gmanimato.wait_final(ids, timeout=120)
    assert all(rows[v]["status"] == "completed" and rows[v]["claimed_count"] == 1 for v in ids)
    served = [sum(slot_of_job(s.output(), v) is not None for v in ids) for s in sups]
    assert sum(served) == 30 and min(served) > 0
    stop_clean(*sups)


@pytest.mark.timeout(150)
def test_comfyui_killed_mid_job_with_one_start_allowed_fails_that_job_and_comes_back(gmanimato, processes,
                                                                                     tmp_path):
    tree = gpu_config(gmanimato, tmp_path, supervisor={"backoff_start": 3}, jobs={"max_attempts": 1})
    sup = ready_supervisor(processes, tmp_path, tree, "3", 3)
    ids = [gmanimato.add_job(template="i2v", patch=sampler(12, 0.1)) for _ in range(9)]

    victim = wait_until(lambda: next((v for v in ids if in_sampler(gmanimato, v)), None), 60, 0.05,
                        "a job inside its sampler")
    slot = slot_of_job(sup.output(), victim)
    comfy_pid = pids(sup.output(), "ComfyUI")[slot][-1]
    os.kill(comfy_pid, signal.SIGKILL)
    killed_at = time.time()

    rows = gmanimato.wait_final(ids, timeout=100)
    final = [h for h in gmanimato.webhooks(victim) if h["body"]["status"] in ("completed", "failed")][-1]
    index = slot.removeprefix("gpu")
    assert final["body"]["status"] == "failed"
    assert f"ComfyUI on GPU {index} exited with signal 9 (SIGKILL) while running node 44 (WanMoeKSampler) " \
        "(start 1 of 1, jobs.max_attempts)" in final["body"]["error"]
    assert final["t"] - killed_at < 5
    wait_until(lambda: len(re.findall(rf"{slot}: ComfyUI ready at", sup.output())) == 2, 30, 0.1,
               "the killed ComfyUI ready again")
    later = [gmanimato.add_job(template="i2v") for _ in range(6)]
    gmanimato.wait_final(later, timeout=60)
    assert slot in {slot_of_job(sup.output(), v) for v in later}, "the restarted slot serves jobs again"
    assert all(rows[v]["status"] == "completed" for v in ids if v != victim)
    for other in {"gpu0", "gpu1", "gpu2"} - {slot}:      # the others never paused: no gap in their work
        done = sorted(h["t"] for v in ids if slot_of_job(sup.output(), v) == other
                      for h in gmanimato.webhooks(v) if h["body"]["status"] == "completed")
        assert done and max(b - a for a, b in zip([killed_at] + done, done)) < 4.0, (other, done, killed_at)
    stop_clean(sup)


@pytest.mark.timeout(120)
def test_crash_looping_comfyui_goes_fatal_others_work_and_killed_worker_restarts(gmanimato, processes, tmp_path):
    uuids = fake_uuids("2")
    sup_keys = {"backoff_start": 0.2, "max_restarts": 3,
                "restart_window": 120}
    tree = gpu_config(gmanimato, tmp_path, comfy_args=("--fail-on-gpu", uuids[1]), supervisor=sup_keys)
    sup = start_supervisor(processes, tmp_path, tree, "2")
    wait_until(lambda: "gpu1: FATAL" in sup.output(), 60, 0.1, "gpu1 FATAL")
    delays = [float(d) for d in re.findall(r"gpu1: restarting ComfyUI in ([\d.]+) s", sup.output())]
    assert delays == [0.2, 0.4, 0.8]
    wait_until(lambda: "Start-up settled, READY" in sup.output(), 30, 0.1, "slots settled")

    worker_pid = pids(sup.output(), "worker")["gpu0"][0]
    os.kill(worker_pid, signal.SIGKILL)
    wait_until(lambda: len(pids(sup.output(), "worker").get("gpu0", [])) == 2, 30, 0.1, "worker restart")
    ids = [gmanimato.add_job(template="i2v") for _ in range(3)]
    rows = gmanimato.wait_final(ids, timeout=60)
    assert all(rows[v]["status"] == "completed" for v in ids)
    assert {slot_of_job(sup.output(), v) for v in ids} == {"gpu0"}
    stop_clean(sup)


@pytest.mark.timeout(60)
def test_wrong_comfy_command_says_so_in_one_line_and_exits_2(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    tree["comfy"]["command"] = ["/nonexistent/python", "main.py"]
    sup = start_supervisor(processes, tmp_path, tree, "2")
    assert sup.wait(30) == 2
    lines = [l for l in sup.output().splitlines() if "/nonexistent/python" in l]
    assert len(lines) == 1 and "No such file or directory" in lines[0], lines
    assert "gpu1: FATAL: the same as above" in sup.output()


@pytest.mark.timeout(60)
def test_gpu_pin_matching_no_device_is_fatal_at_once(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    tree["comfy"]["env"]["SIM_NVML_GPUS"] = "1"        # ComfyUI's CUDA sees one GPU, NVML two
    sup = start_supervisor(processes, tmp_path, tree, "2")
    wait_until(lambda: "gpu1: FATAL" in sup.output(), 30, 0.1, "gpu1 FATAL")
    assert "No CUDA GPUs are available" in sup.output()
    assert "gpu1: restarting ComfyUI" not in sup.output()
    wait_until(lambda: "gpu0: ComfyUI ready" in sup.output(), 30, 0.1, "gpu0 ready")
    stop_clean(sup)


@pytest.mark.timeout(90)
def test_sigterm_mid_job_finishes_the_job_then_exits_clean(gmanimato, processes, tmp_path):
    sup = ready_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path), "1", 1)
    vid = start_long_job(gmanimato, 20)
    children = psutil.Process(sup.pid).children(recursive=True)
    sup.signal(signal.SIGTERM)
    assert sup.wait(60) == 0
    assert gmanimato.videos()[vid]["status"] == "completed"
    assert [h["status"] for h in gmanimato.webhooks(vid) if h["body"]["status"] == "completed"] == [201]
    assert children and not [c.pid for c in children if alive(c.pid)]


@pytest.mark.timeout(90)
def test_sigkill_of_the_supervisor_leaves_no_child(gmanimato, processes, tmp_path):
    sup = ready_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path), "2", 2)
    children = [c.pid for c in psutil.Process(sup.pid).children(recursive=True)]
    assert len(children) >= 4
    os.kill(sup.pid, signal.SIGKILL)
    wait_until(lambda: not [pid for pid in children if alive(pid)], 5, 0.05, "every child gone within 5 s")


@pytest.mark.timeout(90)
def test_leftovers_of_a_crashed_run_are_removed(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    slot_dir = tmp_path / "slots" / "gpu0"
    slot_dir.mkdir(parents=True)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        (slot_dir / "comfyui.pid").write_text(json.dumps(
            {"pid": stray.pid, "create_time": psutil.Process(stray.pid).create_time()}))
        sup = start_supervisor(processes, tmp_path, tree, "1")
        wait_until(lambda: stray.poll() is not None, 30, 0.05, "the leftover killed")
        assert "leftover ComfyUI of gpu0" in sup.output()
        wait_until(lambda: all_up(sup, 1), 60, 0.1, "slot ready")
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0
    finally:
        stray.kill()
        stray.wait()


@pytest.mark.timeout(90)
def test_notify_socket_gets_ready_after_the_slots(gmanimato, processes, tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(60)
        sup = start_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path), "2",
                               env={"NOTIFY_SOCKET": str(path)})
        messages = []
        while b"READY=1" not in messages:
            messages.append(server.recv(256))
        assert sup.output().count("ComfyUI ready at") == 2
        assert any(m.startswith(b"STATUS=") for m in messages) or server.recv(256).startswith(b"STATUS=")
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0


@pytest.mark.timeout(60)
def test_no_driver_falls_back_to_cpu_or_exits_2(gmanimato, processes, tmp_path):
    strict = gpu_config(gmanimato, tmp_path, cpu_fallback=False)
    sup = start_supervisor(processes, tmp_path, strict, "nodriver", name="strict")
    assert sup.wait(30) == 2
    assert sup.output().strip().splitlines()[-1] == (
        "config error: gpus: nothing to run on (NVML is not available (NVML Shared Library Not Found): "
        "no NVIDIA driver on this machine) and cpu_fallback is false")
    sup = start_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path), "nodriver", name="fallback")
    wait_until(lambda: all_up(sup, 1), 60, 0.1, "the CPU slot ready")
    assert "No GPU to use (NVML is not available" in sup.output() and "cpu: started ComfyUI" in sup.output()
    stop_clean(sup)


def test_a_lost_gpu_gets_no_slot_but_the_others_do(tmp_path):
    from worker.sim.nvml import sim_write_state

    state = tmp_path / "nvml-state.json"
    sim_write_state(str(state), {"lost": [1]})
    code = ("from worker.supervision.gpus import discover; d = discover(); "
            "print([g.index for g in d.gpus], repr(d.problem))")
    env = {**os.environ, **gpu_env("3"), "SIM_NVML_STATE": str(state)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
                         cwd=ROOT)
    assert out.stdout.strip() == "[0, 2] ''", out.stderr
    assert "GPU 1: NVML cannot read it" in out.stderr


@pytest.mark.timeout(120)
def test_hung_comfyui_and_silent_worker_are_killed_and_restarted(gmanimato, processes, tmp_path):
    sup_keys = {"probe_timeout": 2, "heartbeat_timeout": 3,
                "heartbeat_interval": 0.5}
    sup = ready_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path, supervisor=sup_keys), "1", 1)
    comfy_starts, readies = len(pids(sup.output(), "ComfyUI")["gpu0"]), sup.output().count("ComfyUI ready at")
    os.kill(pids(sup.output(), "ComfyUI")["gpu0"][-1], signal.SIGSTOP)   # alive, but answers nothing
    wait_until(lambda: len(pids(sup.output(), "ComfyUI")["gpu0"]) > comfy_starts, 30, 0.1, "ComfyUI restarted")
    assert "ComfyUI runs but has not answered for 2 s; killing it" in sup.output()
    wait_until(lambda: sup.output().count("ComfyUI ready at") > readies, 30, 0.1, "ComfyUI ready again")

    worker_starts = len(pids(sup.output(), "worker")["gpu0"])
    os.kill(pids(sup.output(), "worker")["gpu0"][-1], signal.SIGSTOP)     # alive, but sends no heartbeat
    wait_until(lambda: len(pids(sup.output(), "worker")["gpu0"]) > worker_starts, 30, 0.1, "worker restarted")
    assert "gpu0: worker sent no heartbeat" in sup.output()
    vid = gmanimato.add_job(template="i2v")
    assert gmanimato.wait_final([vid], timeout=60)[vid]["status"] == "completed"
    stop_clean(sup)


@pytest.mark.timeout(90)
def test_second_signal_stops_at_once_and_reports_the_job(gmanimato, processes, tmp_path):
    sup_keys = {"stop_grace": 3}   # killed after 3 + 5 s
    sup = ready_supervisor(processes, tmp_path, gpu_config(gmanimato, tmp_path, supervisor=sup_keys), "1", 1)
    vid = start_long_job(gmanimato, 200)
    os.kill(pids(sup.output(), "ComfyUI")["gpu0"][-1], signal.SIGSTOP)   # wedged: why a drain would hang
    sup.signal(signal.SIGTERM)
    wait_until(lambda: "Draining" in sup.output(), 10, 0.05, "the drain")
    stop_clean(sup)
    final = [h for h in gmanimato.webhooks(vid) if h["body"]["status"] in ("completed", "failed")]
    assert [h["status"] for h in final] == [201]
    assert final[0]["body"]["status"] == "failed" and "the worker was stopped" in final[0]["body"]["error"]


@pytest.mark.timeout(90)
def test_sentinel_file_drains(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    sup = ready_supervisor(processes, tmp_path, tree, "1", 1)
    vid = start_long_job(gmanimato, 20)
    (tmp_path / ".worker_stop").write_text("")
    assert sup.wait(30) == 0
    assert f"Found {tmp_path / '.worker_stop'}: draining" in sup.output()
    assert not (tmp_path / ".worker_stop").exists()
    assert gmanimato.videos()[vid]["status"] == "completed"


@pytest.mark.timeout(60)
def test_a_taken_port_is_skipped_and_said(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    base = tree["comfy"]["base_port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen()
        sup = start_supervisor(processes, tmp_path, tree, "1")
        wait_until(lambda: all_up(sup, 1), 60, 0.1, "slot ready")
        assert f"Port {base} is already taken; skipping it" in sup.output()
        ready = re.findall(r"ComfyUI ready at http://127\.0\.0\.1:(\d+)", sup.output())
        assert ready and int(ready[0]) > base
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0


@pytest.mark.timeout(90)
def test_sigkill_leaves_a_wrapper_grandchild_that_the_next_start_removes(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    # a wrapper script without exec (like `uv run` or a start.sh): ComfyUI is a grandchild
    tree["comfy"]["command"] = ["bash", "-c", " ".join(comfy_sim_command()) + ' "$@"; echo done', "wrapper"]
    sup = start_supervisor(processes, tmp_path, tree, "1", name="first")
    wait_until(lambda: all_up(sup, 1), 60, 0.1, "slot ready")
    family = [c.pid for c in psutil.Process(sup.pid).children(recursive=True)]
    os.kill(sup.pid, signal.SIGKILL)
    survivors = wait_until(lambda: [p for p in family if alive(p)] or None, 5, 0.05, "a survivor")
    assert survivors, "expected the grandchild to outlive its wrapper (PDEATHSIG covers direct children)"
    second = start_supervisor(processes, tmp_path, tree, "1", name="second")
    wait_until(lambda: all_up(second, 1), 60, 0.1, "slot ready again")
    assert "leftover ComfyUI of gpu0" in second.output() and "already taken" not in second.output()
    assert not [p for p in survivors if alive(p)]
    stop_clean(second)


@pytest.mark.timeout(120)
def test_two_supervisors_on_one_base_port_never_take_the_other_comfyui_for_theirs(gmanimato, processes, tmp_path):
    port_base = free_port()
    sups = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tree = gpu_config(gmanimato, tmp_path / name, comfy_args=("--startup-delay", "2"))
        tree["comfy"]["base_port"] = port_base
        sups.append(start_supervisor(processes, tmp_path / name, tree, "1", name=name))
    for sup in sups:
        wait_until(lambda: "ComfyUI ready at" in sup.output(), 90, 0.1, "slots ready")
    urls = [re.findall(r"ComfyUI ready at (\S+)", sup.output())[-1] for sup in sups]
    assert urls[0] != urls[1], urls
    ids = [gmanimato.add_job(template="i2v") for _ in range(4)]
    rows = gmanimato.wait_final(ids, timeout=60)
    assert all(rows[v]["status"] == "completed" for v in ids)
    stop_clean(*sups)


@pytest.mark.timeout(90)
def test_attached_comfyui_that_stops_answering_is_waited_for(gmanimato, processes, tmp_path):
    port = free_port()
    comfy = processes.start("comfyui", comfy_sim_command("--port", str(port), "--cpu"))
    sup_keys = {"probe_timeout": 1}
    tree = gpu_config(gmanimato, tmp_path, supervisor=sup_keys,
                      comfy={"mode": "attach",
                             "attach": [f"127.0.0.1:{port}"]})
    sup = ready_supervisor(processes, tmp_path, tree, "0", 1)
    os.kill(comfy.pid, signal.SIGSTOP)
    wait_until(lambda: "stopped answering" in sup.output() or "has not answered" in sup.output(), 30, 0.1,
               "the outage noticed")
    os.kill(comfy.pid, signal.SIGCONT)
    wait_until(lambda: sup.output().count("ComfyUI ready at") == 2, 30, 0.1, "attached slot ready again")
    vid = gmanimato.add_job(template="i2v")
    assert gmanimato.wait_final([vid], timeout=60)[vid]["status"] == "completed"
    assert comfy.proc.poll() is None                  # attached: never killed
    stop_clean(sup)
    assert comfy.proc.poll() is None


@pytest.mark.timeout(120)
def test_an_idle_box_makes_one_claim_per_poll_interval_whatever_its_gpu_count(gmanimato, processes, tmp_path):
    tree = gpu_config(gmanimato, tmp_path)
    tree["api"]["poll_interval"] = 0.5
    sup = ready_supervisor(processes, tmp_path, tree, "4", 4)
    wait_until(lambda: sup.output().count("Worker for GPU") >= 4, 30, 0.1, "4 workers started")

    def empty_claims() -> int:
        return gmanimato.stats()["task_calls"].get("404", 0)

    before, started = empty_claims(), time.monotonic()
    wait_until(lambda: time.monotonic() - started >= 4.0, 10, 0.1, "a 4 s window")
    made = empty_claims() - before
    window = time.monotonic() - started
    assert window / (0.5 * 1.2) - 2 <= made <= window / (0.5 * 0.8) + 2, made   # one box: ~8; per worker: ~32
    vid = gmanimato.add_job(template="i2v")                                   # a job is still taken at once
    assert gmanimato.wait_final([vid])[vid]["status"] == "completed"
    stop_clean(sup)


@pytest.mark.timeout(60)
def test_comfy_host_left_in_the_environment_is_named_as_overriding_the_config(gmanimato, processes, tmp_path):
    address = f"127.0.0.1:{free_port()}"                   # nothing answers there
    tree = gpu_config(gmanimato, tmp_path)                 # comfy.mode: start in the file
    sup = start_supervisor(processes, tmp_path, tree, "1", env={"COMFY_HOST": address})
    wait_until(lambda: "comfy.mode=attach from COMFY_HOST, overriding supervisor.yaml" in sup.output(), 30, 0.05,
               "the override named at start")
    assert f"comfy.attach=['{address}'] from COMFY_HOST" in sup.output()
    assert "started ComfyUI" not in sup.output()           # attach mode: nothing is started
    wait_until(lambda: "Start-up settled" in sup.output(), 30, 0.05, "start-up settled")   # signals handled
    stop_clean(sup)


@pytest.mark.timeout(90)
def test_an_attached_comfyui_that_does_not_answer_is_said_once_then_slowly_then_when_back(
        gmanimato, processes, tmp_path):
    port = free_port()                                     # nothing answers there yet
    tree = gpu_config(gmanimato, tmp_path, supervisor={"probe_timeout": 1},
                      comfy={"mode": "attach", "attach": [f"127.0.0.1:{port}"]})
    sup = start_supervisor(processes, tmp_path, tree, "0")
    wait_until(lambda: "still does not answer" in sup.output(), 30, 0.05, "the outage said again")
    gone = f"slot0: attached ComfyUI at http://127.0.0.1:{port} does not answer; this slot claims no job until it does"
    assert sup.output().count(gone) == 1
    processes.start("comfyui", comfy_sim_command("--port", str(port), "--cpu"))
    wait_until(lambda: "answers again, after" in sup.output(), 30, 0.05, "its return said")
    vid = gmanimato.add_job(template="i2v")
    assert gmanimato.wait_final([vid], timeout=60)[vid]["status"] == "completed"
    stop_clean(sup)
