"""ComfyUI's environment: least privilege. The worker's secrets and endpoints stay with the worker."""
from __future__ import annotations

import os

import pytest

from worker.config import load_config
from worker.supervision.children import SlotPlan, comfy_env

PLAN = SlotPlan("gpu0", "GPU 0", 8188, gpu_uuid="GPU-1234")
WORKER_ENV = {
    "WORKER_TASK_SECRET": "task-secret", "WORKER_API_URL": "http://gm:5173", "WORKER_POLL_INTERVAL": "5",
    "WORKER_MAX_RETRIES": "3", "WORKER_SENTINEL_FILE": "/run/stop", "GMANIMATO_API_URL": "http://gm:5173",
    "BUCKET_ENDPOINT_URL": "http://s3:9000", "BUCKET_NAME": "videos", "BUCKET_ACCESS_KEY_ID": "AKID",
    "BUCKET_SECRET_ACCESS_KEY": "s3-secret", "BUCKET_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "AKID2", "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_PROFILE": "prod",
    "COMFY_HOST": "127.0.0.1:8188",
}
ORDINARY = {"PATH": "/usr/bin:/bin", "HOME": "/home/worker", "LANG": "C.UTF-8", "HF_HOME": "/models/hf"}


def env_for(monkeypatch, environ: dict[str, str], config_env: dict | None = None, **secrets: str):
    """comfy_env with exactly ``environ`` as the process environment, ``comfy.env`` and secrets as given."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    overrides = {"comfy.env": config_env or {}, **{k.replace("__", "."): v for k, v in secrets.items()}}
    config = load_config(None, env={}, overrides=overrides)
    return comfy_env(config, PLAN)


def test_worker_variables_are_not_passed(monkeypatch):
    env = env_for(monkeypatch, {**WORKER_ENV, **ORDINARY})
    leaked = sorted(set(env) & set(WORKER_ENV))
    assert leaked == []
    for name, value in ORDINARY.items():
        assert env[name] == value


@pytest.mark.parametrize("name", ["AWS_SESSION_TOKEN", "BUCKET_ANYTHING", "GMANIMATO_TOKEN", "WORKER_X",
                                  "worker_lowercase", "COMFY_HOST"])
def test_every_name_of_the_families_is_dropped(monkeypatch, name):
    env = env_for(monkeypatch, {name: "value", "PATH": "/bin"})
    assert name not in env and env["PATH"] == "/bin"


def test_a_variable_holding_a_configured_secret_is_dropped_whatever_its_name(monkeypatch):
    signing = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    environ = {"MY_TOKEN": "the-api-secret", "S3_KEY": "s3-secret-key", "S3_ID": "s3-key-id",
               "HOOK": signing, "PADDED": " the-api-secret\n", "UNRELATED": "the-api-secret-not", "PATH": "/bin"}
    env = env_for(monkeypatch, environ, api__secret="the-api-secret",
                  storage__s3__access_key_id="s3-key-id", storage__s3__secret_access_key="s3-secret-key",
                  webhook__signing_secret=signing)
    assert sorted(env) == ["CUDA_VISIBLE_DEVICES", "PATH", "PYTHONUNBUFFERED", "UNRELATED"]


def test_no_secrets_configured_drops_nothing_else(monkeypatch):
    env = env_for(monkeypatch, {"EMPTY": "", "PATH": "/bin"})
    assert env["EMPTY"] == "" and env["PATH"] == "/bin"


def test_comfy_env_is_applied_on_top_so_an_operator_can_pass_anything(monkeypatch):
    env = env_for(monkeypatch, {**WORKER_ENV, "PATH": "/bin"},
                  config_env={"AWS_PROFILE": "comfy-models", "HF_TOKEN": "hf", "PATH": "/opt/bin",
                              "MY_TOKEN": "the-api-secret"},
                  api__secret="the-api-secret")
    assert env["AWS_PROFILE"] == "comfy-models" and env["HF_TOKEN"] == "hf" and env["PATH"] == "/opt/bin"
    assert env["MY_TOKEN"] == "the-api-secret"      # explicit: the operator's choice
    assert "AWS_SECRET_ACCESS_KEY" not in env and "WORKER_TASK_SECRET" not in env


def test_gpu_pin_and_unbuffered_output(monkeypatch):
    env = env_for(monkeypatch, {"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234" and env["PYTHONUNBUFFERED"] == "1"
    cpu = comfy_env(load_config(None, env={}), SlotPlan("cpu", "CPU", 8188))
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""
    env = env_for(monkeypatch, {"PYTHONUNBUFFERED": "0"}, config_env={"CUDA_VISIBLE_DEVICES": "7"})
    assert env["PYTHONUNBUFFERED"] == "0"              # kept when set, as before
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234"   # the pin always wins
