"""Helpers for tests that run the real supervisor.py with simulated GPUs (the fake pynvml first on
PYTHONPATH), simulated ComfyUI programs and the simulated GmAnimato."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import psutil

from tests.conftest import ROOT, wait_until, write_config
from tests.stack import base_config, comfy_sim_command

SHIM = ROOT / "worker" / "sim" / "pynvml_shim"


def gpu_env(gpus: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{SHIM}{os.pathsep}{ROOT}", "SIM_NVML_GPUS": gpus}


def fake_uuids(gpus: str) -> list[str]:
    code = ("import pynvml; pynvml.nvmlInit(); print(' '.join(pynvml.nvmlDeviceGetUUID("
            "pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())))")
    env = {**os.environ, **gpu_env(gpus)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    return out.stdout.split()


def gpu_config(gma, tmp_path, gpus: str = "all", comfy_args=(), **sections):
    tree = base_config(gma.url, tmp_path, gpus=gpus, **sections)
    tree["comfy"]["command"] = comfy_sim_command(*comfy_args)
    tree["comfy"]["env"] = {"PYTHONPATH": f"{SHIM}{os.pathsep}{ROOT}"}
    return tree


def start_supervisor(processes, tmp_path, tree, gpus: str, name="supervisor", env=None):
    config = write_config(tmp_path / f"{name}.yaml", tree)
    return processes.start(name, [sys.executable, "supervisor.py", "--config", str(config)],
                           env={**gpu_env(gpus), **(env or {})})


def pids(log: str, what: str) -> dict[str, list[int]]:
    """slot -> pids in start order, from lines like 'gpu1: started ComfyUI (pid 123)'."""
    found: dict[str, list[int]] = {}
    for slot, pid in re.findall(rf"(\w+): started {what} \(pid (\d+)\)", log):
        found.setdefault(slot, []).append(int(pid))
    return found


def ready_supervisor(processes, tmp_path, tree, gpus: str, slots: int, **kw):
    """Start a supervisor and wait until ``slots`` of its ComfyUIs answered."""
    sup = start_supervisor(processes, tmp_path, tree, gpus, **kw)
    wait_until(lambda: all_up(sup, slots), 60, 0.1, f"{slots} slot(s) ready")
    return sup


def stop_clean(*sups) -> None:
    """SIGTERM drains; every supervisor must exit 0."""
    for sup in sups:
        sup.signal(signal.SIGTERM)
    for sup in sups:
        assert sup.wait(30) == 0


def slot_of_job(log: str, video_id: str) -> str | None:
    match = re.search(rf"worker-(\w+) - INFO - Received task: local-{video_id}\b", log)
    return match.group(1) if match else None


def all_up(sup, count: int) -> bool:
    return sup.output().count("ComfyUI ready at") >= count


def sampler(steps: int, step_time: float) -> dict:
    return {"44": {"_meta": {"sim": {"steps": steps, "step_time": step_time}}}}


def in_sampler(gma, vid: str) -> bool:
    return any(h["body"].get("progress", {}).get("current_node") == "44" for h in gma.webhooks(vid))


def start_long_job(gma, steps: int) -> str:
    """Queue a job whose sampler runs ``steps`` x 0.1 s, and wait until it is inside the sampler."""
    vid = gma.add_job(template="i2v", patch=sampler(steps, 0.1))
    wait_until(lambda: in_sampler(gma, vid), 30, 0.05, "the sampler running")
    return vid


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
