"""The fault suite's rig: the real supervisor.py, a simulated GmAnimato that can be killed and restarted
with its state, simulated ComfyUIs that record every finished prompt in a file outside themselves, moto
S3 behind a gate, failpoints, and :meth:`Rig.check_promise`, which judges at GmAnimato."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port, wait_until
from tests.faults.s3gate import S3Gate
from tests.stack import FINAL, SECRET, GmAnimato, gmanimato, s3_server  # noqa: F401  (fixtures)
from tests.supervised import gpu_config, start_supervisor
from worker.sim.launch import GMANIMATO_READY, start_sim


class RestartableGmAnimato(GmAnimato):
    """A private simulated GmAnimato on a fixed port whose state survives its own kill."""

    def __init__(self, tmp_path: Path) -> None:
        self.args = ["--port", str(free_port()), "--secret", SECRET, "--state-file",
                     str(tmp_path / "gmanimato-state.json")]
        super().__init__("", None)
        self.start()

    def start(self) -> None:
        self.sim = start_sim("worker.sim.gmanimato", self.args, GMANIMATO_READY)
        self.url = self.sim.url

    def kill(self) -> None:
        self.sim.kill()


@pytest.fixture
def own_gma(tmp_path):
    gma = RestartableGmAnimato(tmp_path)
    yield gma
    gma.sim.stop()


@pytest.fixture(scope="module")
def s3(s3_server):  # noqa: F811
    """moto S3 behind an :class:`S3Gate`: (gate, boto3 client); the gate is open at each test's start."""
    endpoint, client = s3_server
    gate = S3Gate(int(endpoint.rsplit(":", 1)[1]))
    yield gate, client
    gate.close()


@pytest.fixture
def rig(processes, tmp_path, s3):
    gate, _ = s3
    gate.set_mode("open")
    return lambda gma, **sections: Rig(processes, tmp_path, gma, s3, **sections)


class Rig:
    """One supervisor configuration against one GmAnimato, started (and restarted) on demand."""

    def __init__(self, processes, tmp_path: Path, gma: GmAnimato, s3, gpus: str = "1", **sections) -> None:
        self.processes, self.tmp_path, self.gma, self.gpus = processes, tmp_path, gma, gpus
        self.gate, self.s3 = s3
        self.record = tmp_path / "executions.jsonl"
        self.failpoints = tmp_path / "failpoints.json"
        webhook = {"max_retries": 3, "progress_interval": 0.2, "retry_delay": 0.2, "outbox_max_delay": 1,
                   **sections.pop("webhook", {})}
        storage = {"s3": {"endpoint_url": self.gate.url, "bucket": "videos", "access_key_id": "AKIAFAULTS0001",
                          "secret_access_key": "faults-s3-secret", "region": "us-east-1"},
                   "retry_for": 30, **sections.pop("storage", {})}
        self.tree = gpu_config(gma, tmp_path, "all", ("--record", str(self.record)), webhook=webhook,
                               storage=storage, **sections)
        self.tree["failpoints"] = str(self.failpoints)
        self.starts = 0
        self.sup = None

    # ---- processes --------------------------------------------------------------------------------
    def start(self, slots: int = 1):
        self.starts += 1
        self.sup = start_supervisor(self.processes, self.tmp_path, self.tree, self.gpus,
                                    name=f"supervisor{self.starts}")
        wait_until(lambda: self.sup.output().count("ComfyUI ready at") >= slots, 60, 0.1, "slots ready")
        return self.sup

    # ---- failpoints -------------------------------------------------------------------------------
    def hold_at(self, point: str) -> None:
        self.failpoints.write_text(json.dumps({point: "pause"}))

    def release(self) -> None:
        self.failpoints.write_text("{}")

    def wait_hold(self, timeout: float = 60) -> dict:
        hit = self.failpoints.with_name(self.failpoints.name + ".hit")
        wait_until(hit.exists, timeout, 0.05, "a process held at the failpoint")
        return json.loads(hit.read_text())

    # ---- what happened ----------------------------------------------------------------------------
    def journal(self) -> dict[str, dict]:
        """job id -> journal row (read straight from the SQLite file)."""
        path = self.tmp_path / "slots" / "state" / "journal.sqlite3"
        if not path.exists():
            return {}
        with sqlite3.connect(path, timeout=30) as db:
            db.row_factory = sqlite3.Row
            return {row["job_id"]: dict(row) for row in db.execute("SELECT * FROM jobs") if row["job_id"]}

    def row(self, vid: str) -> dict:
        return self.journal().get(f"local-{vid}", {})

    def executions(self, vid: str) -> list[dict]:
        """Every prompt of this job that ComfyUI finished (success or not), from the record file."""
        if not self.record.exists():
            return []
        lines = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [line for line in lines if line["prompt_id"].startswith(f"local-{vid}-")]

    def in_sampler(self, vid: str) -> bool:
        return any(isinstance(h["body"], dict) and h["body"].get("progress", {}).get("current_node") == "44"
                   for h in self.gma.webhooks(vid))

    # ---- the promise ------------------------------------------------------------------------------
    def check_promise(self, outcomes: dict[str, str], timeout: float = 90) -> dict[str, dict]:
        """Every job settled as ``outcomes`` says (completed | failed | refused), and the promise holds:
        one accepted final body, the same every time it was sent, never progress after a final, no
        execution after GmAnimato had the job completed, nothing left processing, S3 bytes right."""
        pending = [v for v, o in outcomes.items() if o != "refused"]
        if pending:
            self.gma.wait_final(pending, timeout)
        refused = [v for v, o in outcomes.items() if o == "refused"]
        wait_until(lambda: all(self.row(v).get("phase") == "refused" for v in refused), timeout, 0.1,
                   "refusals recorded in the journal")
        videos = self.gma.videos()
        for vid, outcome in outcomes.items():
            self.check_job(vid, outcome, videos[vid])
        return videos

    def check_job(self, vid: str, outcome: str, video: dict) -> None:
        hooks = self.gma.webhooks(vid)
        finals = [h for h in hooks if isinstance(h["body"], dict) and h["body"].get("status") in FINAL]
        accepted = [h for h in finals if h["status"] and 200 <= h["status"] < 300]
        assert finals, f"{vid}: no final webhook"
        assert len({json.dumps(h["body"], sort_keys=True) for h in finals}) == 1, f"{vid}: final body changed"
        first_final = hooks.index(finals[0])
        late = [h["body"] for h in hooks[first_final:] if h["body"].get("status") == "processing"]
        assert not late, f"{vid}: progress after a final webhook: {late}"
        row = self.row(vid)
        if outcome == "refused":
            assert not accepted and row["phase"] == "refused" and row["last_http"] == finals[-1]["status"]
            return
        assert len(accepted) == 1, f"{vid}: {len(accepted)} accepted final webhooks"
        assert accepted[0]["body"]["status"] == outcome == video["status"], (accepted[0]["body"], video["status"])
        assert row["phase"] == "delivered", row
        successes = [e for e in self.executions(vid) if e["success"]]
        assert all(e["t"] <= accepted[0]["t"] for e in successes), f"{vid}: ran again after completion"
        if outcome == "completed":
            assert len(successes) == 1, f"{vid}: ran to success {len(successes)} times"
            self.check_stored(vid, accepted[0]["body"]["files"][0], row["slot"])

    def check_stored(self, vid: str, entry: dict, slot: str) -> None:
        """The delivered URL names an S3 object with exactly the bytes ComfyUI wrote."""
        assert entry["type"] == "s3_url"
        key = urlsplit(entry["data"]).path.split("/", 2)[2]
        assert key == f"local-{vid}/{entry['filename']}"
        stored = self.s3.get_object(Bucket="videos", Key=key)["Body"].read()
        written = (self.tmp_path / "slots" / slot / "output" / entry["filename"]).read_bytes()
        assert stored == written and len(stored) > 1000
