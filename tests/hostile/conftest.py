"""The hostile-input suite's rig: the real ``local_worker.py`` / ``supervisor.py`` against the simulated
GmAnimato (raw claim answers, task patches, the stray-request log), the simulated ComfyUI (tampered
outputs, a record of every prompt it ran), a moto S3 server and :class:`ProbeServer` third parties.

Every test queues its bad jobs and then a good one (claims are FIFO) into one worker run, and judges the
outcome from outside: the worker still alive, the good job completed, one readable ``failed`` webhook per
bad job that has a usable id, no stray request at GmAnimato, no probe hit where none may be, every S3 key
under ``<job id>/``, and no secret nor forged line in the worker's log. Nothing sleeps a fixed time.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.conftest import ManagedProcess, free_port, http_ok, wait_until, write_config
from tests.hostile.servers import ProbeServer
from tests.stack import FINAL, SECRET, GmAnimato, base_config, comfy_sim_command, running_gmanimato
from worker.sim.gma_tasks import generated_png

TOKEN = secrets.token_hex(4)
S3_KEY_ID = f"AKIAHOSTILE{TOKEN.upper()}"
S3_SECRET = f"hostile-s3-secret-{TOKEN}"
API_USER = "gmuser"
API_PASSWORD = f"api-pa55-{TOKEN}"
SECRETS = (SECRET, S3_KEY_ID, S3_SECRET, API_PASSWORD)
PNG_URI = "data:image/png;base64," + base64.b64encode(generated_png()).decode("ascii")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - [\w.-]+ - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - ")
_ACCESS = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO aiohttp\.access: \S+ '
                     r'"GET /api/worker/task HTTP/1\.1" (\d{3}) ')


def with_credentials(url: str) -> str:
    """``http://host:port`` -> ``http://user:password@host:port`` (the password must never be logged)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{API_USER}:{API_PASSWORD}@{rest}"


# ---- GmAnimato --------------------------------------------------------------------------------
class HostileGma(GmAnimato):
    """The simulated GmAnimato with the hostile controls and the judgements the tests share."""

    def __init__(self, url: str, sim) -> None:
        super().__init__(url, sim)
        self.mark = 0

    def reset(self) -> None:
        requests.post(f"{self.url}/sim/reset", timeout=10).raise_for_status()
        self.mark = len(self.sim.lines)

    def raw(self, *answers: dict) -> None:
        self.faults(task_raw=list(answers))

    def stray(self) -> list[dict]:
        return requests.get(f"{self.url}/sim/stray", timeout=10).json()

    def all_webhooks(self) -> list[dict]:
        return requests.get(f"{self.url}/sim/webhooks", timeout=10).json()

    def task_calls(self) -> list[tuple[float, int]]:
        """(time, status) of every ``GET /api/worker/task`` since the reset, from the sim's access log."""
        calls = []
        for line in list(self.sim.lines)[self.mark:]:
            match = _ACCESS.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                calls.append((stamp, int(match.group(2))))
        return calls

    def finals(self, vid: str) -> list[dict]:
        return [h for h in self.webhooks(vid) if isinstance(h["body"], dict) and h["body"].get("status") in FINAL]

    def one_failed(self, vid: str, *phrases: str, status: int = 201) -> dict:
        """Exactly one final webhook for ``vid``: readable JSON, ``failed`` under ``local-<vid>``, its error
        naming every phrase, answered ``status``; returns its body."""
        finals = self.single_final(vid)
        body = finals[0]["body"]
        assert body["status"] == "failed" and body["id"] == f"local-{vid}", body
        assert isinstance(body.get("error"), str) and body["error"], body
        for phrase in phrases:
            assert phrase in body["error"], f"{phrase!r} not in {body['error']!r}"
        assert finals[0]["status"] == status, finals[0]
        return body

    def single_final(self, vid: str) -> list[dict]:
        """The one final webhook of ``vid`` (as a one-item list), which is also its last webhook."""
        hooks = self.webhooks(vid)
        finals = self.finals(vid)
        shown = [(h["status"], h["body"].get("status") if isinstance(h["body"], dict) else h["body"]) for h in hooks]
        assert len(finals) == 1 and hooks[-1] == finals[0], f"{vid}: expected one final webhook, last: {shown}"
        return finals

    def one_completed(self, vid: str) -> dict:
        finals = self.single_final(vid)
        assert finals[0]["status"] == 201 and finals[0]["body"]["status"] == "completed", finals[0]
        assert self.videos()[vid]["status"] == "completed"
        return finals[0]["body"]


@pytest.fixture(scope="package")
def hostile_sim():
    """One simulated GmAnimato for the suite, on 127.0.0.1 and 127.0.0.2 (tasks via .2 carry callback_url)."""
    with running_gmanimato(HostileGma) as gma:
        yield gma


@pytest.fixture
def gma(hostile_sim):
    """The suite's GmAnimato, reset: no videos, webhooks, faults, strays or call counts from before."""
    hostile_sim.reset()
    return hostile_sim


# ---- S3 -----------------------------------------------------------------------------------------
@dataclass
class Bucket:
    name: str
    endpoint: str
    client: Any

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def config(self) -> dict:
        return {"s3": {"endpoint_url": self.endpoint, "bucket": self.name, "access_key_id": S3_KEY_ID,
                       "secret_access_key": S3_SECRET, "region": "us-east-1"}}

    def assert_keys_under(self, job_ids: list[str]) -> list[str]:
        """Every key is ``<one of job_ids>/<plain name>``; returns the keys."""
        keys = self.keys()
        for key in keys:
            prefix, _, name = key.partition("/")
            assert prefix in job_ids and name and "/" not in name and "\\" not in name \
                and name not in (".", ".."), f"S3 key outside <job id>/: {key!r} (jobs {job_ids})"
        return keys


@pytest.fixture(scope="package")
def moto():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(endpoint + "/moto-api/"), 30, 0.1, "moto server")
        yield endpoint, boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                     aws_access_key_id="testing", aws_secret_access_key="testing")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def bucket(moto):
    """A fresh bucket of its own for each test."""
    endpoint, client = moto
    name = f"hostile-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, endpoint, client)


# ---- ComfyUI ----------------------------------------------------------------------------------
@dataclass
class Comfy:
    port: int
    tamper_file: Path
    record_file: Path
    proc: ManagedProcess

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tamper(self, mode: str, entries: list[dict]) -> None:
        """Outputs the next prompts report (read by the sim at each prompt)."""
        tmp = self.tamper_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mode": mode, "entries": entries}))
        tmp.replace(self.tamper_file)

    def untamper(self) -> None:
        self.tamper_file.unlink(missing_ok=True)

    def prompts_of(self, vid: str) -> list[dict]:
        """Every prompt of job ``local-<vid>`` the sim finished (from its --record file)."""
        if not self.record_file.exists():
            return []
        lines = [json.loads(line) for line in self.record_file.read_text().splitlines() if line.strip()]
        return [line for line in lines if str(line.get("prompt_id", "")).startswith(f"local-{vid}-")]


@pytest.fixture(scope="package")
def comfy_sim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-comfy")
    port = free_port()
    tamper, record = folder / "tamper.json", folder / "record.jsonl"
    proc = ManagedProcess(comfy_sim_command("--port", str(port), "--cpu", "--base-directory", str(folder / "base"),
                                            "--tamper-outputs", str(tamper), "--record", str(record)),
                          folder / "comfyui.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/system_stats"), 30, 0.1, "the ComfyUI sim")
        yield Comfy(port, tamper, record, proc)
    finally:
        proc.kill_group()


@pytest.fixture
def comfy(comfy_sim):
    """The suite's ComfyUI sim, untampered at the start and the end of each test."""
    comfy_sim.untamper()
    assert comfy_sim.proc.proc.poll() is None, "the ComfyUI sim died"
    yield comfy_sim
    comfy_sim.untamper()


# ---- third parties ----------------------------------------------------------------------------
@pytest.fixture
def probes():
    """``probes(host)`` starts a :class:`ProbeServer` there; all are stopped after the test."""
    started: list[ProbeServer] = []

    def start(host: str) -> ProbeServer:
        probe = ProbeServer(host=host).start()
        started.append(probe)
        return probe

    yield start
    for probe in started:
        probe.stop()


# ---- the worker -------------------------------------------------------------------------------
class WorkerRun:
    """One real worker process (local_worker.py or supervisor.py) and the judgements on its output."""

    def __init__(self, proc: ManagedProcess, home: Path) -> None:
        self.proc, self.home = proc, home

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.proc.output()

    def lines(self, text: str) -> list[str]:
        return [line for line in self.output().splitlines() if text in line]

    def assert_alive(self) -> None:
        assert self.proc.proc.poll() is None, f"the worker exited ({self.proc.proc.returncode}):\n" \
                                              + "\n".join(self.output().splitlines()[-20:])

    def assert_clean_log(self, forged: tuple[str, ...] = ()) -> None:
        """No secret anywhere; every line is a log record's own line (nothing spilled onto a line of its
        own); no line starts with a ``forged`` prefix (text planted in a task after a newline)."""
        out = self.output()
        for value in SECRETS:
            assert value not in out, f"a secret reached the log: {value[:6]}…"
        strays = [line for line in out.splitlines() if line.strip() and not LOG_LINE.match(line)]
        assert not strays, f"lines that are not log records: {strays[:5]}"
        for prefix in forged:
            assert not [line for line in out.splitlines() if line.startswith(prefix)], f"forged line {prefix!r}"

    def stop(self, timeout: float = 30) -> None:
        self.proc.signal(signal.SIGTERM)
        assert self.proc.wait(timeout) == 0, "\n".join(self.output().splitlines()[-20:])


def start_local_worker(processes, tmp_path: Path, gma: HostileGma, comfy: Comfy, bucket: Bucket,
                       name: str = "worker", **sections) -> WorkerRun:
    """local_worker.py attached to the suite's ComfyUI, S3 in ``bucket``, api.url with credentials in it,
    in its own folder (journal included); ``sections`` are merged into the config tree's sections."""
    home = tmp_path / name
    home.mkdir()
    api = {"url": with_credentials(gma.url), **sections.pop("api", {})}
    tree = base_config(api["url"], home, comfy={"mode": "attach", "attach": [comfy.host]},
                       storage=bucket.config(), api=api, **sections)
    config = write_config(home / "config.yaml", tree)
    proc = processes.start(name, [sys.executable, "local_worker.py", "--config", str(config)])
    return WorkerRun(proc, home)


def deep(depth: int, vid: str | None = None) -> dict:
    """A raw claim answer of ``depth`` nested lists (as the ``input`` of ``{"id": "local-<vid>"}``)."""
    return {"deep": depth, **({"id": f"local-{vid}"} if vid else {})}


def raw_bytes(data: bytes, content_type: str = "application/json") -> dict:
    return {"status": 200, "content_type": content_type, "body_b64": base64.b64encode(data).decode("ascii")}


def raw_text(text: str, content_type: str = "application/json") -> dict:
    return {"status": 200, "content_type": content_type, "body": text}
