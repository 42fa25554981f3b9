"""A journal that cannot take a claim (disk full, I/O error): the claimed job is still reported failed
at GmAnimato, and the worker stops rather than run jobs it cannot record."""
from __future__ import annotations

import sqlite3

import pytest

from tests.stack import base_config
from worker.config import load_config
from worker.jobs.loop import SlotSpec, Worker


def test_a_claim_the_journal_cannot_take_is_reported_failed(own_gma, tmp_path):
    tree = base_config(own_gma.url, tmp_path)
    config = load_config(None, env={}, overrides={"api.url": own_gma.url, "api.secret": tree["api"]["secret"],
                                                  "comfy.work_dir": str(tmp_path / "slots")})
    worker = Worker(config, SlotSpec("local", "ComfyUI", "http://127.0.0.1:9"))
    vid = own_gma.add_job(template="i2v")

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    worker.journal.record_claim = disk_full
    with pytest.raises(sqlite3.OperationalError):
        worker.poll_once()
    hooks = own_gma.webhooks(vid)
    assert [(h["status"], h["body"]["status"]) for h in hooks] == [(201, "failed")]
    assert hooks[0]["body"]["error"] == "the worker cannot write its journal (database or disk is full)"
    assert own_gma.videos()[vid]["status"] == "failed"
