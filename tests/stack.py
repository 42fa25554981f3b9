"""The simulated stack as tests use it: a handle on the simulated GmAnimato, a fast config tree, and
the fixtures that start GmAnimato and a moto S3 server as real processes (re-exported by conftest)."""
from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time

import boto3
import pytest
import requests

from tests.conftest import ROOT, free_port, http_ok, wait_until
from worker.sim.launch import GMANIMATO_READY, start_sim

SECRET = "test-secret-" + secrets.token_hex(4)
FINAL = ("completed", "failed")


class GmAnimato:
    """Test-side handle on a running simulated GmAnimato."""

    def __init__(self, url: str, sim=None) -> None:
        self.url = url
        self.sim = sim

    def add_job(self, **spec) -> str:
        response = requests.post(f"{self.url}/sim/jobs", json=spec, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["video_id"]

    def faults(self, **doc) -> None:
        requests.post(f"{self.url}/sim/faults", json=doc, timeout=10).raise_for_status()

    def videos(self) -> dict[str, dict]:
        return {row["id"]: row for row in requests.get(f"{self.url}/sim/videos", timeout=10).json()}

    def webhooks(self, video_id: str) -> list[dict]:
        return requests.get(f"{self.url}/sim/webhooks", params={"video_id": video_id}, timeout=10).json()

    def stats(self) -> dict:
        return requests.get(f"{self.url}/sim/stats", timeout=10).json()

    def wait_final(self, video_ids: list[str], timeout: float = 90.0) -> dict[str, dict]:
        """Wait until each video has a delivered (2xx) final webhook; returns the video rows."""
        def done():
            return all(any(h["status"] and 200 <= h["status"] < 300 and isinstance(h["body"], dict)
                           and h["body"].get("status") in FINAL for h in self.webhooks(v)) for v in video_ids)
        wait_until(done, timeout, 0.2, f"final webhooks of {video_ids}")
        return self.videos()


@contextlib.contextmanager
def running_gmanimato(handle: type = None):
    """A simulated GmAnimato listening on 127.0.0.1 and 127.0.0.2 (tasks via .2 carry callback_url),
    as a ``handle`` (GmAnimato or a subclass), stopped at the end."""
    sim = start_sim("worker.sim.gmanimato", ["--host", "127.0.0.1", "--host", "127.0.0.2", "--port", "0",
                                             "--secret", SECRET], GMANIMATO_READY)
    try:
        yield (handle or GmAnimato)(sim.url, sim)
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def gmanimato():
    """A simulated GmAnimato for a test module (see running_gmanimato)."""
    with running_gmanimato() as gma:
        yield gma


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server over HTTP with a bucket ``videos``: (endpoint URL, boto3 client)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(endpoint + "/moto-api/"), 30, 0.1, "moto server")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="videos")
        yield endpoint, client
    finally:
        proc.kill()
        proc.wait(10)


def comfy_sim_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "worker.sim.comfyui", "--step-time", "0.05", *extra]


def base_config(api_url: str, tmp_path, **sections) -> dict:
    """A config tree that runs fast against the simulators."""
    tree = {
        "api": {"url": api_url, "secret": SECRET, "poll_interval": 0.2, "backoff_cap": 2,
                "auth_retry_interval": 60},
        "webhook": {"max_retries": 3, "progress_interval": 0.2, "retry_delay": 0.2},
        "gpus": "none", "cpu_fallback": True,
        "comfy": {"mode": "start", "command": comfy_sim_command(), "cwd": str(ROOT),
                  "env": {"PYTHONPATH": str(ROOT)}, "base_port": free_port(),
                  "work_dir": str(tmp_path / "slots"), "startup_timeout": 60},
        "logging": {"level": "info"},
        "supervisor": {"heartbeat_interval": 1, "stop_grace": 5, "drain_timeout": 60,
                       "sentinel_file": str(tmp_path / ".worker_stop"), "probe_interval": 0.2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}
        else:
            tree[key] = value
    return tree


def elapsed_ok(start: float, limit: float) -> bool:
    return time.monotonic() - start < limit
