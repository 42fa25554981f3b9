"""GmAnimato misbehaving: a wrong secret, an outage, webhooks refused or failing (local_worker.py)."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.conftest import free_port, wait_until, write_config
from tests.stack import SECRET, base_config, comfy_sim_command
from worker.sim.launch import GMANIMATO_READY, start_sim


@pytest.fixture(scope="module")
def comfy_port(tmp_path_factory):
    from tests.conftest import ManagedProcess

    port = free_port()
    proc = ManagedProcess(comfy_sim_command("--port", str(port), "--cpu"),
                          tmp_path_factory.mktemp("comfy") / "comfyui.log")
    try:
        yield port
    finally:
        proc.kill_group()


def start_worker(processes, tmp_path, api_url: str, comfy_port: int, secret: str = SECRET, name="worker",
                 callback_hosts=()):
    tree = base_config(api_url, tmp_path, comfy={"mode": "attach", "attach": [f"127.0.0.1:{comfy_port}"]})
    tree["api"]["secret"] = secret
    tree["api"]["callback_hosts"] = list(callback_hosts)
    config = write_config(tmp_path / f"{name}.yaml", tree)
    return processes.start(name, [sys.executable, "local_worker.py", "--config", str(config)])


def finals(gma, video_id: str) -> list[dict]:
    return [h for h in gma.webhooks(video_id)
            if isinstance(h["body"], dict) and h["body"].get("status") in ("completed", "failed")]


@pytest.mark.timeout(60)
def test_wrong_secret_says_so_once_and_does_not_hot_loop(gmanimato, comfy_port, processes, tmp_path):
    before = gmanimato.stats()["task_calls"].get("401", 0)
    worker = start_worker(processes, tmp_path, gmanimato.url, comfy_port, secret="not-the-secret")
    wait_until(lambda: "401 Unauthorized" in worker.output(), 30, message="the 401 error line")
    started = time.monotonic()
    wait_until(lambda: time.monotonic() - started > 2.0, 5, message="an observation window")
    lines = [l for l in worker.output().splitlines() if "401 Unauthorized" in l]
    assert len(lines) == 1, lines
    assert "WORKER_TASK_SECRET" in lines[0] and "not-the-secret" not in worker.output()
    assert gmanimato.stats()["task_calls"].get("401", 0) - before == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


@pytest.mark.timeout(90)
def test_webhook_403_is_not_retried_and_500_twice_then_201_is_delivered_once(
        gmanimato, comfy_port, processes, tmp_path):
    refused = gmanimato.add_job(template="i2v")
    flaky = gmanimato.add_job(template="i2v")
    gmanimato.faults(webhook={f"{refused}:final": [403], f"{flaky}:final": [500, 500]})
    worker = start_worker(processes, tmp_path, gmanimato.url, comfy_port)

    gmanimato.wait_final([flaky])
    assert [h["status"] for h in finals(gmanimato, flaky)] == [500, 500, 201]
    assert gmanimato.videos()[flaky]["status"] == "completed"
    wait_until(lambda: "Webhook completed for local-" + refused in worker.output(), 30,
               message="the refused webhook's log line")
    assert [h["status"] for h in finals(gmanimato, refused)] == [403]
    assert gmanimato.videos()[refused]["status"] == "processing"
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


@pytest.mark.timeout(120)
def test_api_gone_for_ten_seconds_is_survived(comfy_port, processes, tmp_path):
    from tests.stack import GmAnimato

    port = free_port()
    args = ["--port", str(port), "--secret", SECRET, "--state-file", str(tmp_path / "state.json")]
    sim = start_sim("worker.sim.gmanimato", args, GMANIMATO_READY)
    gma = GmAnimato(sim.url)
    try:
        first = gma.add_job(template="i2v")
        worker = start_worker(processes, tmp_path, sim.url, comfy_port)
        gma.wait_final([first])
        second = gma.add_job(template="i2v")           # queued just before the outage
        sim.kill()
        gone_at = time.monotonic()
        wait_until(lambda: "unreachable" in worker.output(), 20, message="the worker noticing the outage")
        wait_until(lambda: time.monotonic() - gone_at >= 10.0, 15, message="a 10 s outage")
        sim = start_sim("worker.sim.gmanimato", args, GMANIMATO_READY)
        rows = gma.wait_final([second], timeout=30)
        assert rows[second]["status"] == "completed"
        assert "answers again" in worker.output()
        assert worker.output().count("unreachable") == 1      # said once, not once per retry
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        sim.stop()


@pytest.fixture
def own_gmanimato(tmp_path):
    """Start a private simulated GmAnimato with extra flags: ``own_gmanimato(*flags)``."""
    from tests.stack import GmAnimato

    sims = []

    def start(*flags: str) -> GmAnimato:
        sim = start_sim("worker.sim.gmanimato", ["--port", "0", "--secret", SECRET, *flags], GMANIMATO_READY)
        sims.append(sim)
        return GmAnimato(sim.url, sim)

    yield start
    for sim in sims:
        sim.stop()


@pytest.mark.timeout(90)
def test_result_too_large_for_the_webhook_becomes_a_failed_report(own_gmanimato, comfy_port, processes,
                                                                  tmp_path):
    gma = own_gmanimato("--body-limit", "524288")
    vid = gma.add_job(template="i2v", patch={"16": {"_meta": {"sim": {"output_size": 600_000}}}})
    small = gma.add_job(template="i2v", patch={"16": {"_meta": {"sim": {"output_size": 1000}}}})
    worker = start_worker(processes, tmp_path, gma.url, comfy_port)
    rows = gma.wait_final([vid, small])
    assert [h["status"] for h in finals(gma, vid)] == [413, 201]
    last = finals(gma, vid)[-1]["body"]
    assert last["status"] == "failed" and "configure storage.s3" in last["error"]
    assert rows[vid]["status"] == "failed" and rows[small]["status"] == "completed"
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reachable", [True, False], ids=["redirect", "unreachable-origin"])
def test_bad_callback_falls_back_to_the_derived_url(own_gmanimato, comfy_port, processes, tmp_path, reachable):
    port = free_port()
    origin = f"http://127.0.0.2:{port if reachable else 1}"
    gma = own_gmanimato("--host", "127.0.0.1", "--host", "127.0.0.2", "--port", str(port), "--origin", origin)
    if reachable:
        gma.faults(webhook={"*:final": [308]})
    vid = gma.add_job(template="i2v")
    worker = start_worker(processes, tmp_path, gma.url, comfy_port, callback_hosts=["127.0.0.2"])
    rows = gma.wait_final([vid])
    assert rows[vid]["status"] == "completed"
    why = "answered a redirect (HTTP 308)" if reachable else "is unreachable"
    assert f"{origin}/api/i2v-webhook/{vid} {why}; using http://127.0.0.1:{port}/api/i2v-webhook/{vid}" \
        in worker.output()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


@pytest.mark.timeout(90)
def test_server_side_claim_failures_are_logged_each_time(own_gmanimato, comfy_port, processes, tmp_path):
    gma = own_gmanimato()
    gma.add_job(template="i2v", claim_error="no_workflow")
    good = gma.add_job(template="i2v")
    tree = base_config(gma.url, tmp_path, comfy={"mode": "attach", "attach": [f"127.0.0.1:{comfy_port}"]})
    tree["api"]["auth_retry_interval"] = 0.5
    worker = processes.start("worker", [sys.executable, "local_worker.py", "--config",
                                        str(write_config(tmp_path / "w.yaml", tree))])
    rows = gma.wait_final([good])
    assert rows[good]["status"] == "completed"
    assert "stays processing there" in worker.output()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


@pytest.mark.timeout(90)
def test_job_claimed_while_comfyui_is_down_waits_for_it_and_completes(gmanimato, processes, tmp_path):
    from tests.conftest import ManagedProcess

    port = free_port()
    comfy = ManagedProcess(comfy_sim_command("--port", str(port), "--cpu"), tmp_path / "comfy1.log")
    try:
        worker = start_worker(processes, tmp_path, gmanimato.url, port)
        first = gmanimato.add_job(template="i2v")
        gmanimato.wait_final([first])                  # the worker has seen ComfyUI up
    finally:
        comfy.kill_group()
    vid = gmanimato.add_job(template="i2v")
    wait_until(lambda: "waiting for ComfyUI to try again" in worker.output(), 30,
               message="the worker holding the job for ComfyUI")
    comfy = ManagedProcess(comfy_sim_command("--port", str(port), "--cpu"), tmp_path / "comfy2.log")
    try:
        rows = gmanimato.wait_final([vid], timeout=60)
        assert rows[vid]["status"] == "completed"
        assert "ComfyUI is back; trying again" in worker.output()
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        comfy.kill_group()
