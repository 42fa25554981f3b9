"""Hostile input under the real supervisor.py (one CPU slot, the simulated ComfyUI started by it).

Deeply nested claim answers in a row must not crash the worker process (six crashes would make its slot
FATAL); the ComfyUI child, which runs whatever the task's workflow asks, gets none of the worker's
variables or secrets; the job's uploaded input leaves ComfyUI's input folder once the job is done.
"""
from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until, write_config
from tests.hostile.conftest import S3_KEY_ID, S3_SECRET, SECRETS, WorkerRun, deep, with_credentials
from tests.stack import SECRET, base_config, comfy_sim_command
from tests.supervised import alive, in_sampler, pids, sampler

AWS_ENV_SECRET = "hostile-aws-env-secret"
WORKER_PREFIXES = ("AWS_", "BUCKET_", "WORKER_", "GMANIMATO_")


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


@pytest.mark.timeout(120)
def test_deep_tasks_in_a_row_leave_the_slot_up_comfyui_gets_no_secrets_and_inputs_are_removed(
        gma, bucket, processes, tmp_path):
    reported = [gma.add_job(status="processing") for _ in range(4)]
    gma.raw(deep(200_000, reported[0]), deep(200_000), deep(100, reported[1]), deep(200_000, reported[2]),
            deep(500_000), deep(100_000, reported[3]))
    tree = base_config(gma.url, tmp_path, api={"poll_interval": 0.2, "backoff_cap": 1})
    tree["comfy"]["command"] = comfy_sim_command("--record", str(tmp_path / "record.jsonl"))
    env = {"GMANIMATO_API_URL": with_credentials(gma.url), "WORKER_TASK_SECRET": SECRET,
           "BUCKET_ENDPOINT_URL": bucket.endpoint, "BUCKET_NAME": bucket.name, "BUCKET_ACCESS_KEY_ID": S3_KEY_ID,
           "BUCKET_SECRET_ACCESS_KEY": S3_SECRET, "BUCKET_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "AKIAENVHOSTILE0001", "AWS_SECRET_ACCESS_KEY": AWS_ENV_SECRET,
           "WORKER_NOTE": "worker-only", "GMANIMATO_NOTE": "worker-only"}
    config = write_config(tmp_path / "supervisor.yaml", tree)
    sup = WorkerRun(processes.start("supervisor", [sys.executable, "supervisor.py", "--config", str(config)],
                                    env=env), tmp_path)

    wait_until(lambda: all(gma.finals(v) for v in reported), 60, 0.1, "the four reportable deep tasks reported")
    for vid in reported:
        gma.one_failed(vid, "nest")
    wait_until(lambda: len(sup.lines("cannot run and has no usable id")) == 2, 30, 0.1, "two lost deep tasks")

    good = gma.add_job(template="i2v", patch=sampler(10, 0.1))
    wait_until(lambda: in_sampler(gma, good), 30, 0.05, "the good job inside its sampler")
    uploaded = tmp_path / "slots" / "cpu" / "input" / f"{good}.png"
    assert uploaded.is_file()                            # ComfyUI's input folder holds the job's image now
    gma.wait_final([good], timeout=60)
    gma.one_completed(good)
    wait_until(lambda: not uploaded.exists(), 10, 0.05, "the job's input removed from ComfyUI's input folder")

    log = sup.output()
    workers, comfies = pids(log, "worker"), pids(log, "ComfyUI")
    assert len(workers["cpu"]) == 1 and alive(workers["cpu"][0]), workers   # never crashed, never restarted
    assert "FATAL" not in log and "Traceback" not in log
    sup.assert_alive()

    comfy_env = environ(comfies["cpu"][0])
    assert "PYTHONPATH" in comfy_env and "CUDA_VISIBLE_DEVICES" in comfy_env     # the right process was read
    leaked = sorted(name for name in comfy_env if name.upper().startswith(WORKER_PREFIXES))
    assert leaked == [], leaked
    assert not [n for n, v in comfy_env.items() if any(s in v for s in (*SECRETS, AWS_ENV_SECRET))]
    assert psutil.Process(comfies["cpu"][0]).ppid() == sup.pid

    assert gma.stray() == []
    bucket.assert_keys_under([f"local-{good}"])
    sup.assert_clean_log()
    assert AWS_ENV_SECRET not in log
    sup.stop()
