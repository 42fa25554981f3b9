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
    # upper bounds: the message names the key and the range
    ("api: {poll_interval: 1e300}", "api.poll_interval: must be > 0 and <= 2592000 (30 days), got 1e+300"),
    ("api: {poll_interval: 2592001}", "api.poll_interval: must be > 0 and <= 2592000 (30 days), got 2592001"),
    ("supervisor: {stop_grace: 1.0e+300}", "supervisor.stop_grace: must be >= 0 and <= 2592000 (30 days)"),
    ("webhook: {expiry: 31536001}", "webhook.expiry: must be > 0 and <= 31536000 (365 days), got 31536001"),
    ("jobs: {keep_closed: 1e12}", "jobs.keep_closed: must be > 0 and <= 31536000 (365 days)"),
    ("webhook: {max_retries: 1001}", "webhook.max_retries: must be >= 0 and <= 1000, got 1001"),
    ("jobs: {max_attempts: 100000}", "jobs.max_attempts: must be > 0 and <= 1000"),
    ("supervisor: {max_restarts: 5000}", "supervisor.max_restarts: must be >= 0 and <= 1000"),
    ("supervisor: {log_backups: 1001}", "supervisor.log_backups: must be >= 0 and <= 1000"),
    ("inputs: {max_mb: 10241}", "inputs.max_mb: must be > 0 and <= 10240 (10 GiB), got 10241"),
    ("storage: {base64_max_mb: 1e9}", "storage.base64_max_mb: must be > 0 and <= 10240 (10 GiB)"),
    ("supervisor: {log_max_bytes: 107374182401}",
     "supervisor.log_max_bytes: must be > 0 and <= 107374182400 (100 GiB), got 107374182401"),
    (f"supervisor: {{log_backups: {'9' * 400}}}", "supervisor.log_backups: must be >= 0 and <= 1000, got 999"),
    ("inputs: {download_timeout: 0}", "inputs.download_timeout: must be > 0, got 0"),
    # broken YAML of every kind is one ConfigError
    ("a: " + "[" * 5000, "not valid YAML (nested too deeply)"),
    ("api: {url: 2024-13-45}", "not valid YAML (ValueError: month must be in 1..12)"),
    (f"webhook: {{max_retries: {'1' * 5000}}}", "not valid YAML (ValueError"),
    ("api: {url: !!python/object:os.system x}", "not valid YAML"),
    # values no later code could use
    ('api: {url: "http://gm\\0:1"}', "api.url: must not contain a NUL character"),
    ("comfy: {env: {A: [1, 2]}}", "comfy.env.A: must be a string, got [1, 2]"),
    ("comfy: {env: {'A=B': x}}", "comfy.env: 'A=B' is not an environment variable name"),
    ('api: {secret: "caf\\u00e9"}', "api.secret: must be printable ASCII"),
    ("api: {secret: ' padded'}", "api.secret: must not begin or end with a space"),
    ("storage: {s3: {bucket: v, region: 'eu west'}}", "storage.s3.region: must be a region name"),
    ("storage: {s3: {bucket: v, access_key_id: AK}}",
     "storage.s3.secret_access_key: required when storage.s3.access_key_id is set"),
    ("storage: {s3: {bucket: v, secret_access_key: SK}}", "storage.s3.access_key_id: required"),
    ('"a\\nb": 1', "'a\\nb': unknown key"),
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


def test_every_number_key_has_a_range():
    """Each int/float key is bounded both ways (comfy.base_port has its own TCP-port check)."""
    import dataclasses
    import typing

    from worker import config as c

    def numbers(cls, prefix=""):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                yield from numbers(hint, f"{prefix}{f.name}.")
            elif hint in (int, float):
                yield f"{prefix}{f.name}"

    keys = set(numbers(c.Config)) - {"comfy.base_port"}
    assert keys == c.POSITIVE | c.NON_NEGATIVE == set(c.MAXIMUM)
    defaults = load_config(None, env={})
    for dotted in keys:      # every default is inside its own range
        assert c._get_dotted(defaults, dotted) <= c.MAXIMUM[dotted][0], dotted


def test_largest_allowed_values_load(tmp_path):
    text = ("api: {poll_interval: 2592000}\nwebhook: {expiry: 31536000, max_retries: 1000}\n"
            "jobs: {keep_closed: 31536000}\ninputs: {max_mb: 10240}\nsupervisor: {log_max_bytes: 107374182400}\n")
    config = load_config(write(tmp_path, text), env={})
    assert config.webhook.expiry == 31536000 and config.supervisor.log_max_bytes == 100 * 1024 ** 3


def test_file_problems_are_config_errors(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"api: {url: 'http://gm:5173'}  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: cannot read the config file \(not UTF-8 text: "
                                          r"byte 0xe9 at offset 35\)"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read the config file .*directory"):
        load_config(tmp_path, env={})
    with pytest.raises(ConfigError, match="cannot read the config file .*No such file"):
        load_config(tmp_path / "missing.yaml", env={})
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffapi: {poll_interval: 3}\n".encode())
    assert load_config(bom, env={}).api.poll_interval == 3


def test_secret_file_problems_are_config_errors(tmp_path):
    config = write(tmp_path, "api: {secret_file: secret.txt}\n")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"\xff\xfes\x00e\x00")          # UTF-16, as some editors save it
    with pytest.raises(ConfigError, match=r"api.secret_file: cannot read .*secret.txt \(not UTF-8 text"):
        load_config(config, env={})
    secret.write_text("  \n")
    with pytest.raises(ConfigError, match="api.secret_file: .*secret.txt is empty"):
        load_config(config, env={})
    secret.write_text("caf\u00e9-secret\n")
    with pytest.raises(ConfigError, match="api.secret_file: the secret in .* must be printable ASCII") as info:
        load_config(config, env={})
    assert "caf" not in str(info.value)
    secret.write_text("x" * (65 * 1024))
    with pytest.raises(ConfigError, match=r"api.secret_file: cannot read .* \(larger than 64 KiB\)"):
        load_config(config, env={})
    secret.unlink()
    secret.mkdir()
    with pytest.raises(ConfigError, match="api.secret_file: cannot read .*directory"):
        load_config(config, env={})


def test_secret_values_are_never_quoted(tmp_path):
    for value in ("caf\u00e9", " lead", "tab\there"):
        with pytest.raises(ConfigError) as info:
            load_config(None, env={"WORKER_TASK_SECRET": value})
        assert str(info.value).startswith("api.secret: ") and value.strip() not in str(info.value)
        assert str(info.value).endswith("(from env WORKER_TASK_SECRET)")


def test_empty_sections_are_allowed(tmp_path):
    config = load_config(write(tmp_path, "api:\nstorage:\n  s3:\ncomfy:\n  env: {A: , B: 1}\n"), env={})
    assert config.api.poll_interval == 5 and config.comfy.env == {"A": "", "B": "1"}


def test_env_values_name_the_variable_and_the_key():
    cases = {"1e300": "api.poll_interval: must be > 0 and <= 2592000 (30 days), got 1e+300",
             "abc": "api.poll_interval: must be a number, got 'abc'",
             "-1": "api.poll_interval: must be > 0, got -1"}
    for value, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(None, env={"WORKER_POLL_INTERVAL": value})
        assert str(info.value) == f"{message} (from env WORKER_POLL_INTERVAL)"
    with pytest.raises(ConfigError, match=r"webhook.max_retries: .* \(from env WORKER_MAX_RETRIES\)$"):
        load_config(None, env={"WORKER_MAX_RETRIES": "99999"})
    with pytest.raises(ConfigError, match=r"storage.s3.region: .* \(from env BUCKET_REGION\)$"):
        load_config(None, env={"BUCKET_NAME": "v", "BUCKET_REGION": "eu west"})
    # a flag wins over the environment, and is not blamed on it
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"WORKER_POLL_INTERVAL": "1"}, overrides={"api.poll_interval": -2})
    assert str(info.value) == "api.poll_interval: must be > 0, got -2"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any of the worker's variables, its state under tmp_path."""
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WORKER_", "GMANIMATO_", "BUCKET_", "AWS_", "COMFY_", "STATE_DIRECTORY"))}
    return {**env, "STATE_DIRECTORY": str(tmp_path / "state"), **extra}


def assert_config_exit(result: subprocess.CompletedProcess, key: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: ") and key in lines[0], lines[0]


BAD_FILES = {
    "interval_1e300": (b"api: {poll_interval: 1e300}\n", "api.poll_interval: must be > 0 and <= 2592000"),
    "not_utf8": (b"api: {url: http://gm:5173}  # \xff\xfe\n", "not UTF-8 text"),
    "deep": (b"api: " + b"[" * 5000, "not valid YAML (nested too deeply)"),
    "bad_date": (b"state_dir: 2024-13-45\n", "not valid YAML"),
    "secret_not_utf8": (b"api: {secret_file: secret.bin}\n", "api.secret_file: cannot read"),
    "region": (b"storage: {s3: {bucket: v, region: 'eu west'}}\n", "storage.s3.region"),
    "directory": (None, "cannot read the config file"),
    "missing": (None, "cannot read the config file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("program", ["supervisor.py", "local_worker.py"])
def test_cli_bad_config_files_exit_2_with_one_line(tmp_path, program, case):
    content, key = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    if case == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    (tmp_path / "secret.bin").write_bytes(b"\xff\xfe\x00s")
    result = subprocess.run([sys.executable, program, "--config", str(path)], cwd=ROOT, check=False,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert_config_exit(result, key)


@pytest.mark.parametrize("env, key", [
    ({"WORKER_POLL_INTERVAL": "1e300"},
     "api.poll_interval: must be > 0 and <= 2592000 (30 days), got 1e+300 (from env WORKER_POLL_INTERVAL)"),
    ({"WORKER_POLL_INTERVAL": "abc"}, "api.poll_interval: must be a number, got 'abc' (from env WORKER_POLL_INTERVAL)"),
    ({"WORKER_MAX_RETRIES": "1e9"}, "webhook.max_retries: must be >= 0 and <= 1000"),
    ({"WORKER_TASK_SECRET": "caf\u00e9"}, "api.secret: must be printable ASCII"),
    ({"COMFY_HOST": "127.0.0.1:99999"}, "comfy.attach: not a ComfyUI address"),
    ({"BUCKET_NAME": "v", "BUCKET_REGION": "bad_region!"}, "storage.s3.region"),
    ({"BUCKET_NAME": "v", "BUCKET_ACCESS_KEY_ID": "AK"}, "storage.s3.secret_access_key: required"),
])
def test_local_worker_bad_env_exits_2_with_one_line(tmp_path, env, key):
    result = subprocess.run([sys.executable, "local_worker.py"], cwd=ROOT, env=clean_env(tmp_path, **env),
                            check=False, capture_output=True, text=True, timeout=60)
    assert_config_exit(result, key)


def test_supervisor_bad_env_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "supervisor.py"], cwd=ROOT, check=False,
                            env=clean_env(tmp_path, WORKER_POLL_INTERVAL="1e300"),
                            capture_output=True, text=True, timeout=60)
    assert_config_exit(result, "api.poll_interval: must be > 0 and <= 2592000 (30 days), got 1e+300 "
                               "(from env WORKER_POLL_INTERVAL)")


def test_values_from_the_environment_and_flags_are_named_with_what_they_override(tmp_path):
    from worker.config import describe_overrides
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  url: http://gm:5173\n  secret: from-file\ncomfy:\n  mode: start\n")
    env = {"COMFY_HOST": "10.0.0.5:8188", "WORKER_TASK_SECRET": "s3cr3t-value", "WORKER_POLL_INTERVAL": "2"}
    lines = describe_overrides(path, env, {"logging.level": "debug", "gpus": None})
    assert (True, "comfy.mode=attach from COMFY_HOST, overriding config.yaml") in lines
    assert (False, "comfy.attach=['10.0.0.5:8188'] from COMFY_HOST") in lines
    assert (True, "api.secret=(hidden) from WORKER_TASK_SECRET, overriding config.yaml") in lines
    assert (False, "api.poll_interval=2 from WORKER_POLL_INTERVAL") in lines
    assert (False, "logging.level=debug from the command line") in lines
    assert not any("s3cr3t" in line for _, line in lines) and len(lines) == 5
    assert describe_overrides(path, {}, {}) == []
