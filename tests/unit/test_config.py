"""Config: precedence, original env names, and one clear message per bad key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load_config(None, env={})
    assert config.api.url == "http://localhost:5173"
    assert config.api.poll_interval == 5 and config.webhook.max_retries == 3
    assert config.gpus == "all" and config.cpu_fallback is True
    assert config.comfy.base_port == 8188 and config.comfy.command == ("python", "main.py")


def test_example_config_yaml_loads():
    config = load_config(ROOT / "config.yaml", env={})
    assert config.api.callback in ("task", "derive")


def test_precedence_flags_over_env_over_file(tmp_path):
    path = write(tmp_path, "api: {url: http://file:1, poll_interval: 7}\nwebhook: {max_retries: 9}\n")
    env = {"GMANIMATO_API_URL": "http://env:2", "WORKER_MAX_RETRIES": "4"}
    config = load_config(path, env=env, overrides={"api.url": "http://flag:3", "webhook.max_retries": None})
    assert config.api.url == "http://flag:3"
    assert config.webhook.max_retries == 4
    assert config.api.poll_interval == 7


def test_original_env_names(tmp_path):
    env = {"WORKER_API_URL": "http://worker-api:5173", "WORKER_TASK_SECRET": "s3cr3t",
           "WORKER_POLL_INTERVAL": "2.5", "COMFY_HOST": "127.0.0.1:8190", "BUCKET_ENDPOINT_URL": "http://s3:9000",
           "BUCKET_NAME": "videos", "BUCKET_ACCESS_KEY_ID": "AK", "BUCKET_SECRET_ACCESS_KEY": "SK",
           "BUCKET_REGION": "eu-west-1"}
    config = load_config(None, env=env)
    assert config.api.url == "http://worker-api:5173" and config.api.secret == "s3cr3t"
    assert config.api.poll_interval == 2.5
    assert config.comfy.mode == "attach" and config.comfy.attach == ("127.0.0.1:8190",)
    assert config.storage.s3.bucket == "videos" and config.storage.s3.region == "eu-west-1"
    assert "s3cr3t" not in repr(config) and "SK" not in repr(config.storage)


def test_gmanimato_api_url_wins_over_worker_api_url():
    env = {"GMANIMATO_API_URL": "http://a:1", "WORKER_API_URL": "http://b:2"}
    assert load_config(None, env=env).api.url == "http://a:1"


def test_secret_file_relative_to_config(tmp_path):
    (tmp_path / "secret.txt").write_text("from-file\n")
    config = load_config(write(tmp_path, "api: {secret_file: secret.txt}\n"), env={})
    assert config.api.secret == "from-file"


@pytest.mark.parametrize("text, message", [
    ("api: {poll_interval: -1}", "api.poll_interval: must be > 0, got -1"),
    ("api: {pol_interval: 1}", "api.pol_interval: unknown key"),
    ("colour: blue", "colour: unknown key"),
    ("api: {callback: maybe}", "api.callback: must be one of task, derive"),
    ("api: {url: localhost:5173}", "api.url: must be an http:// or https:// URL"),
    ("webhook: {max_retries: two}", "webhook.max_retries: must be a number"),
    ("webhook: {max_retries: 1.5}", "webhook.max_retries: must be a whole number"),
    ("cpu_fallback: perhaps", "cpu_fallback: must be true or false"),
    ("gpus: {a: 1}", "gpus: must be all, none or a list"),
    ("comfy: {mode: attach}", "comfy.attach: mode is attach"),
    ("comfy: {base_port: 70000}", "comfy.base_port: must be a TCP port"),
    ("comfy: 5", "comfy: must be a mapping"),
    ("logging: {level: loud}", "logging.level: must be one of"),
    ("api: {secret_file: /nonexistent/secret}", "api.secret_file: cannot read"),
    ("- just\n- a list", "the top level must be a mapping"),
    ("api: {poll_interval: .nan}", "api.poll_interval: must be a finite number"),
    ("webhook: {max_retries: .inf}", "webhook.max_retries: must be a finite number"),
    ("api: {url: 'http://gm:99999'}", "api.url: not a valid URL"),
    ("comfy: {mode: attach, attach: ['host:abc']}", "comfy.attach: not a ComfyUI address"),
    ("storage: {s3: {endpoint_url: 'http://s3:9000'}}", "storage.s3.bucket: required"),
    ("api: [unclosed", "not valid YAML"),
    ("jobs: {resume: later}", "jobs.resume: must be one of retry, fail, got 'later'"),
    ("jobs: {max_attempts: 0}", "jobs.max_attempts: must be > 0, got 0"),
    ("webhook: {expiry: -1}", "webhook.expiry: must be > 0, got -1"),
    ("storage: {retry_for: -5}", "storage.retry_for: must be >= 0, got -5"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)


def test_gpus_forms(tmp_path):
    assert load_config(write(tmp_path, "gpus: [0, GPU-abc]"), env={}).gpus == ("0", "GPU-abc")
    assert load_config(write(tmp_path, "gpus: none"), env={}).gpus == "none"
    assert load_config(None, env={}, overrides={"gpus": "1,2"}).gpus == ("1", "2")


def test_cli_exits_2_with_one_line_naming_the_key(tmp_path):
    path = write(tmp_path, "api: {poll_interval: -1}\n")
    result = subprocess.run([sys.executable, "supervisor.py", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: api.poll_interval: must be > 0, got -1"


def test_bad_env_values_name_the_key():
    with pytest.raises(ConfigError, match="comfy.attach: not a ComfyUI address"):
        load_config(None, env={"COMFY_HOST": "127.0.0.1:99999"})
    with pytest.raises(ConfigError, match="api.poll_interval: must be a finite number"):
        load_config(None, env={"WORKER_POLL_INTERVAL": "nan"})


def test_state_dir_defaults_under_work_dir_and_state_directory_wins(tmp_path):
    path = write(tmp_path, f"comfy: {{work_dir: {tmp_path / 'slots'}}}\nstate_dir: {tmp_path / 'file'}\n")
    assert load_config(None, env={}).state_path == (Path("comfy-slots") / "state").resolve()
    assert load_config(path, env={}).state_path == tmp_path / "file"
    env = {"STATE_DIRECTORY": f"{tmp_path / 'unit'}:{tmp_path / 'other'}"}
    assert load_config(path, env=env).state_path == tmp_path / "unit"
