"""The configuration users write: frozen dataclasses loaded from YAML, environment and flags.

Precedence is flags > environment > file > defaults. Unknown keys and bad values raise
:class:`ConfigError`, whose message names the key ("api.poll_interval: must be > 0, got -1", and
"... (from env WORKER_POLL_INTERVAL)" when the value came from there); the command line turns it into
one line on stderr and exit code 2, which systemd does not restart. :func:`load_config` raises nothing
else, whatever the file holds (not UTF-8, a directory, YAML nested too deeply). Every number has a
range (durations at most 30 days, ``webhook.expiry``/``jobs.keep_closed`` 365 days, counts 1000, sizes
10 GiB) so that nothing past the check can overflow. This module is the only reader of the
environment, and it reads it only when :func:`load_config` is called.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import reprlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class ConfigError(Exception):
    """A configuration key is unknown or has a bad value; the message names the key. It is one line
    (the command line prints it as the only line on stderr before exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(part.strip() for part in str(message).splitlines()))


@dataclass(frozen=True)
class ApiConfig:
    url: str = "http://localhost:5173"
    secret: str = field(default="", repr=False)
    secret_file: str = ""
    poll_interval: float = 5.0
    callback: str = "task"            # task: use the task's callback_url when present; derive: always build it
    timeout: float = 30.0             # seconds for one GmAnimato request
    auth_retry_interval: float = 60.0  # after a 401, ask again this often (the secret may be fixed server-side)
    backoff_cap: float = 60.0         # longest wait between claims while GmAnimato is unreachable
    callback_hosts: tuple[str, ...] = ()  # hosts (host or host:port) a task's callback_url may name besides api.url's


@dataclass(frozen=True)
class WebhookConfig:
    max_retries: int = 3          # a final webhook is sent at most 1 + max_retries times
    progress_interval: float = 2.0
    retry_delay: float = 1.0      # first retry wait; doubles each retry, capped at 60 s, with jitter
    timeout: float = 30.0
    expiry: float = 86400.0       # an undelivered final webhook stays in the outbox this long
    outbox_max_delay: float = 300.0  # longest wait between two outbox attempts
    signing_secret: str = field(default="", repr=False)  # whsec_<base64>: sign webhooks (Standard Webhooks)


@dataclass(frozen=True)
class ComfyConfig:
    mode: str = "start"           # start: the supervisor runs ComfyUI; attach: use running instances
    command: tuple[str, ...] = ("python", "main.py")
    cwd: str = ""
    base_port: int = 8188
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    attach: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    work_dir: str = "./comfy-slots"
    timeout: float = 30.0         # seconds for one ComfyUI HTTP request
    job_timeout: float = 1500.0   # a prompt running longer fails (GmAnimato times jobs out at 30 min)


@dataclass(frozen=True)
class InputsConfig:
    max_mb: float = 100.0             # one input file (ComfyUI's default --max-upload-size)
    download_timeout: float = 120.0   # one input download, start to last byte
    redirect_hosts: tuple[str, ...] = ()  # private hosts an input download may be redirected to
    treat_as_public: tuple[str, ...] = ()  # tests only: addresses the redirect rule counts as public


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str = ""
    bucket: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    region: str = ""


@dataclass(frozen=True)
class StorageConfig:
    s3: S3Config = field(default_factory=S3Config)
    retry_for: float = 120.0      # transient S3 failures are retried this long before the job fails
    base64_max_mb: float = 32.0   # with no bucket: the largest output sent base64 inside the webhook


@dataclass(frozen=True)
class JobsConfig:
    resume: str = "retry"         # an open job whose process died: retry (re-run it) | fail (report it)
    max_attempts: int = 2         # starts of one job, every kind of restart counted
    resume_max_age: float = 1500.0  # claimed longer ago than this: reported failed instead of re-run
    keep_closed: float = 604800.0   # finished journal rows are pruned after this many seconds
    allowed_node_types: tuple[str, ...] = ()  # node class_types a task's workflow may use (empty: any)
    prefetch: bool = True         # claim and queue the next job while the running one is near its end
    prefetch_window: float = 10.0   # ... "near": its estimated time left is under this many seconds


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"          # text (the original worker's lines) | json


@dataclass(frozen=True)
class SupervisorConfig:
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 60.0
    probe_interval: float = 1.0
    probe_timeout: float = 60.0       # a running ComfyUI whose probe fails this long is restarted
    backoff_start: float = 1.0
    backoff_cap: float = 60.0
    healthy_reset: float = 300.0
    max_restarts: int = 5
    restart_window: float = 300.0
    stop_grace: float = 10.0
    drain_timeout: float = 900.0
    sentinel_file: str = ".worker_stop"
    log_max_bytes: int = 50 * 1024 * 1024   # each slot's comfyui.log rotates at this size ...
    log_backups: int = 3                    # ... keeping this many old files


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    gpus: str | tuple[str, ...] = "all"
    gpus_exclude: tuple[str, ...] = ()
    cpu_fallback: bool = True
    comfy: ComfyConfig = field(default_factory=ComfyConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    state_dir: str = ""               # the journal's folder; default <comfy.work_dir>/state
    failpoints: str = ""              # fault tests only: a JSON file naming points to pause at

    @property
    def state_path(self) -> Path:
        """Where the journal lives: ``state_dir``, else ``<comfy.work_dir>/state`` (absolute)."""
        return Path(self.state_dir or Path(self.comfy.work_dir) / "state").resolve()

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so log output can be scrubbed of them."""
        values = (self.api.secret, self.storage.s3.access_key_id, self.storage.s3.secret_access_key,
                  self.webhook.signing_secret)
        return tuple(v for v in values if v)


# Environment names of the original worker, mapped to dotted keys. The first name found wins.
ENV_KEYS: tuple[tuple[str, str], ...] = (
    ("GMANIMATO_API_URL", "api.url"),
    ("WORKER_API_URL", "api.url"),
    ("WORKER_TASK_SECRET", "api.secret"),
    ("WORKER_POLL_INTERVAL", "api.poll_interval"),
    ("WORKER_MAX_RETRIES", "webhook.max_retries"),
    ("BUCKET_ENDPOINT_URL", "storage.s3.endpoint_url"),
    ("BUCKET_NAME", "storage.s3.bucket"),
    ("BUCKET_ACCESS_KEY_ID", "storage.s3.access_key_id"),
    ("BUCKET_SECRET_ACCESS_KEY", "storage.s3.secret_access_key"),
    ("BUCKET_REGION", "storage.s3.region"),
    ("WORKER_SENTINEL_FILE", "supervisor.sentinel_file"),
)
# systemd's StateDirectory= sets STATE_DIRECTORY (a colon-separated list: the first is ours); it wins
# over the file, so a unit can move the journal without editing config.yaml.
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"

CHOICES = {
    "api.callback": ("task", "derive"),
    "comfy.mode": ("start", "attach"),
    "jobs.resume": ("retry", "fail"),
    "logging.level": ("debug", "info", "warning", "error"),
    "logging.format": ("text", "json"),
}
POSITIVE = {"api.poll_interval", "api.timeout", "api.auth_retry_interval", "api.backoff_cap",
            "webhook.progress_interval", "webhook.timeout", "comfy.startup_timeout", "comfy.timeout",
            "comfy.job_timeout", "supervisor.heartbeat_interval", "supervisor.heartbeat_timeout",
            "supervisor.probe_interval", "supervisor.probe_timeout", "supervisor.backoff_start",
            "supervisor.log_max_bytes", "supervisor.backoff_cap",
            "supervisor.restart_window", "supervisor.drain_timeout", "webhook.expiry",
            "webhook.outbox_max_delay", "jobs.max_attempts", "jobs.resume_max_age", "jobs.keep_closed",
            "jobs.prefetch_window"}
NON_NEGATIVE = {"webhook.max_retries", "webhook.retry_delay", "supervisor.healthy_reset",
                "supervisor.max_restarts", "supervisor.stop_grace", "supervisor.log_backups",
                "storage.retry_for"}
POSITIVE |= {"inputs.max_mb", "inputs.download_timeout", "storage.base64_max_mb"}

# Upper bounds: a value past them is a typo (or 1e300), and would overflow a sleep or a timestamp at
# run time instead of failing here. Durations are seconds.
DAY = 86400
MAX_SECONDS = (30 * DAY, "30 days")
MAX_LONG_SECONDS = (365 * DAY, "365 days")
MAX_COUNT = (1000, "")
MAX_MB = (10240, "10 GiB")
LONG_SECONDS = {"webhook.expiry", "jobs.keep_closed"}
COUNTS = {"webhook.max_retries", "supervisor.max_restarts", "jobs.max_attempts", "supervisor.log_backups"}
SIZES_MB = {"inputs.max_mb", "storage.base64_max_mb"}
MAXIMUM: dict[str, tuple[float, str]] = {
    dotted: (MAX_LONG_SECONDS if dotted in LONG_SECONDS else MAX_COUNT if dotted in COUNTS
             else MAX_MB if dotted in SIZES_MB else MAX_SECONDS)
    for dotted in POSITIVE | NON_NEGATIVE}
MAXIMUM["supervisor.log_max_bytes"] = (100 * 1024 ** 3, "100 GiB")

MAX_FILE_BYTES = 16 * 1024 * 1024     # a config file larger than this is not one (e.g. /dev/zero)
MAX_SECRET_BYTES = 64 * 1024
_show = reprlib.Repr()                 # values in messages: short, and safe for huge or aliased trees
_show.maxstring = _show.maxother = 80
_show.maxlevel = 3


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the configuration: ``overrides`` (dotted keys, from flags) > ``env`` > file > defaults.

    Whatever the file, the environment or the flags hold, the only exception is :class:`ConfigError`;
    a bad value that came from the environment is named with its variable as well as its key."""
    env = os.environ if env is None else env
    from_env = _env_items(env)
    flags = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    try:
        return _load(path, {dotted: value for dotted, (_, value) in from_env.items()}, flags)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        if key in from_env and key not in flags:
            raise ConfigError(f"{exc} (from env {from_env[key][0]})") from exc
        raise


def _load(path: str | os.PathLike | None, env_values: Mapping[str, Any], flags: Mapping[str, Any]) -> Config:
    tree = _read_file(path) if path else {}
    _check_known(tree, Config, "")
    for dotted, value in {**env_values, **flags}.items():
        _set_dotted(tree, dotted, value)
    config = _build(Config, tree, "")
    config = _resolve_secret_file(config, path)
    _validate(config)
    return config


class _Unreadable(Exception):
    """Why a file's text could not be had (one short phrase)."""


def _read_utf8(path: str | os.PathLike, limit: int) -> str:
    """A small UTF-8 text file (a BOM is dropped), or :class:`_Unreadable` saying why not."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc) or type(exc).__name__) from exc
    except ValueError as exc:            # a NUL in the name
        raise _Unreadable(str(exc)) from exc
    if len(data) > limit:
        raise _Unreadable(f"larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from exc


def _read_file(path: str | os.PathLike) -> dict:
    try:
        text = _read_utf8(path, MAX_FILE_BYTES)
    except _Unreadable as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except Exception as exc:   # PyYAML's constructors raise ValueError & co. (a date like 2024-13-45)
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__}: {exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _env_items(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Dotted key -> (the environment variable it comes from, its value)."""
    items: dict[str, tuple[str, Any]] = {}
    for name, dotted in ENV_KEYS:
        if env.get(name) and dotted not in items:
            items[dotted] = (name, env[name])
    state = env.get(STATE_DIRECTORY_ENV, "").split(":")[0]
    if state:
        items["state_dir"] = (STATE_DIRECTORY_ENV, state)
    host = env.get("COMFY_HOST")
    if host:
        items["comfy.mode"] = ("COMFY_HOST", "attach")
        items["comfy.attach"] = ("COMFY_HOST", [host])
    return items


SECRET_KEYS = frozenset({"api.secret", "storage.s3.access_key_id", "storage.s3.secret_access_key",
                         "webhook.signing_secret"})


def describe_overrides(path: str | os.PathLike | None, env: Mapping[str, str] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> list[tuple[bool, str]]:
    """Each value that came from the environment or a flag rather than the file, as ``(overrides the
    file, line)``: "comfy.mode=attach from COMFY_HOST, overriding config.yaml". Secret values are not
    shown. Call it after :func:`load_config` succeeded (the file is known to be readable)."""
    env = os.environ if env is None else env
    tree = _read_file(path) if path else {}
    flags = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    sources = {dotted: (f"from {name}", value) for dotted, (name, value) in _env_items(env).items()}
    sources.update({dotted: ("from the command line", value) for dotted, value in flags.items()})
    lines = []
    for dotted, (where, value) in sorted(sources.items()):
        shown = "(hidden)" if dotted in SECRET_KEYS else _show.repr(value) if not isinstance(value, str) else value
        in_file = _has_dotted(tree, dotted)
        lines.append((in_file, f"{dotted}={shown} {where}" + (f", overriding {Path(path).name}" if in_file else "")))
    return lines


def log_overrides(logger: Any, path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> None:
    """Name at start every value the environment or a flag set: a warning when it overrides the file
    (``COMFY_HOST`` left from the original worker's unit turns a start-mode config into attach mode)."""
    for overriding, line in describe_overrides(path, overrides=overrides):
        (logger.warning if overriding else logger.info)("Config: %s", line)


def _has_dotted(tree: Mapping, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    return {dotted: value for dotted, (_, value) in _env_items(env).items()}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _key_text(key: Any) -> str:
    """A key as it goes into a message: itself when it is a short printable string."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 80:
        return key
    return _show.repr(key)


def _check_known(tree: Any, cls: type, prefix: str) -> None:
    if not isinstance(tree, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        dotted = f"{prefix}{_key_text(key)}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{dotted}: unknown key (known here: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if value is None:          # a section whose keys are all commented out
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: must be a mapping, got {_show.repr(value)}")
            _check_known(value, hint, dotted + ".")


def _build(cls: type, tree: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        dotted = f"{prefix}{f.name}"
        hint = hints[f.name]
        value = tree[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value or {}, dotted + ".")
        else:
            kwargs[f.name] = _coerce(dotted, hint, value)
    return cls(**kwargs)


def _coerce(dotted: str, hint: Any, value: Any) -> Any:
    """Turn a YAML or environment value into the field's type, or say which key is wrong."""
    if dotted == "gpus":
        return _coerce_gpus(value)
    if hint is bool:
        return _coerce_bool(dotted, value)
    if hint in (int, float):
        return _coerce_number(dotted, hint, value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{dotted}: must be a string, got {_show.repr(value)}")
        return _no_nul(dotted, str(value))
    if typing.get_origin(hint) is tuple:
        return _coerce_str_list(dotted, value)
    if typing.get_origin(hint) is Mapping:
        return _coerce_str_map(dotted, value)
    raise ConfigError(f"{dotted}: unsupported value {_show.repr(value)}")


def _no_nul(dotted: str, text: str) -> str:
    if "\x00" in text:
        raise ConfigError(f"{dotted}: must not contain a NUL character, got {_show.repr(text)}")
    return text


def _coerce_bool(dotted: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int, float)) else ""
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{dotted}: must be true or false, got {_show.repr(value)}")


def _coerce_number(dotted: str, hint: type, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{dotted}: must be a number, got {_show.repr(value)}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{dotted}: must be a number, got {_show.repr(value)}") from None
    except OverflowError:       # an integer too large for a float
        raise ConfigError(f"{dotted}: must be {_allowed(dotted)}, got {_show.repr(value)}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{dotted}: must be a finite number, got {_show.repr(value)}")
    if hint is int:
        if number != int(number):
            raise ConfigError(f"{dotted}: must be a whole number, got {_show.repr(value)}")
        return int(number)
    return number


def _coerce_str_list(dotted: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (_no_nul(dotted, value),)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{dotted}: must be a list of strings, got {_show.repr(value)}")
    return tuple(_no_nul(dotted, str(v)) for v in value)


def _coerce_str_map(dotted: str, value: Any) -> dict[str, str]:
    """``comfy.env``: names to scalar values (an empty value is ``""``), fit for a process environment."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{dotted}: must be a mapping of names to values, got {_show.repr(value)}")
    result = {}
    for key, item in value.items():
        name = str(key) if isinstance(key, (str, int)) and not isinstance(key, bool) else ""
        if not name or "=" in name or "\x00" in name:
            raise ConfigError(f"{dotted}: {_show.repr(key)} is not an environment variable name")
        if item is None:
            item = ""
        if not isinstance(item, (str, int, float, bool)):
            raise ConfigError(f"{dotted}.{_key_text(name)}: must be a string, got {_show.repr(item)}")
        result[name] = _no_nul(f"{dotted}.{_key_text(name)}", str(item))
    return result


def _coerce_gpus(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str) and value.strip().lower() in ("all", "none"):
        return value.strip().lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return (str(value),)
    if isinstance(value, str):
        return tuple(part.strip() for part in _no_nul("gpus", value).split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) for v in value):
        return tuple(_no_nul("gpus", str(v)) for v in value)
    raise ConfigError(f"gpus: must be all, none or a list of GPU indexes or UUIDs, got {_show.repr(value)}")


def _resolve_secret_file(config: Config, config_path: str | os.PathLike | None) -> Config:
    if config.api.secret or not config.api.secret_file:
        return config
    secret_path = Path(config.api.secret_file)
    if not secret_path.is_absolute() and config_path:
        try:
            secret_path = Path(config_path).resolve().parent / secret_path
        except (OSError, RuntimeError) as exc:     # RuntimeError: a symlink loop (Python < 3.13)
            raise ConfigError(f"api.secret_file: cannot find the config file's folder ({exc})") from exc
    try:
        secret = _read_utf8(secret_path, MAX_SECRET_BYTES).strip()
    except _Unreadable as exc:
        raise ConfigError(f"api.secret_file: cannot read {secret_path} ({exc})") from exc
    if not secret:
        raise ConfigError(f"api.secret_file: {secret_path} is empty")
    problem = _header_problem(secret)
    if problem:
        raise ConfigError(f"api.secret_file: the secret in {secret_path} {problem}")
    return dataclasses.replace(config, api=dataclasses.replace(config.api, secret=secret))


def _header_problem(secret: str) -> str:
    """Why ``secret`` cannot be sent as the ``x-worker-secret`` header ("" when it can); never quotes it."""
    if any(not " " <= ch <= "~" for ch in secret):
        return "must be printable ASCII (it is sent as the x-worker-secret header; value not shown)"
    if secret != secret.strip():
        return "must not begin or end with a space (it is sent as the x-worker-secret header)"
    return ""


def _number_text(value: float) -> str:
    """-1, 2592000, 0.5, 1e+300: whole numbers without a decimal point, as the messages quote them."""
    if (isinstance(value, int) or float(value).is_integer()) and abs(value) < 1e15:
        return str(int(value))
    try:
        return f"{float(value):g}"
    except OverflowError:
        return _show.repr(value)


def _allowed(dotted: str) -> str:
    """The range a number key allows, in words: ``> 0 and <= 2592000 (30 days)``."""
    low = "> 0" if dotted in POSITIVE else ">= 0" if dotted in NON_NEGATIVE else ""
    if dotted not in MAXIMUM:
        return f"a number {low}".strip()
    maximum, label = MAXIMUM[dotted]
    return f"{low} and <= {_number_text(maximum)}{f' ({label})' if label else ''}"


def _validate(config: Config) -> None:
    for dotted in sorted(POSITIVE | NON_NEGATIVE):
        value = _get_dotted(config, dotted)
        if dotted in POSITIVE and value <= 0:
            raise ConfigError(f"{dotted}: must be > 0, got {_number_text(value)}")
        if dotted in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{dotted}: must be >= 0, got {_number_text(value)}")
        if value > MAXIMUM[dotted][0]:
            raise ConfigError(f"{dotted}: must be {_allowed(dotted)}, got {_number_text(value)}")
    for dotted in sorted(CHOICES):
        value = _get_dotted(config, dotted)
        if value not in CHOICES[dotted]:
            raise ConfigError(f"{dotted}: must be one of {', '.join(CHOICES[dotted])}, got {_show.repr(value)}")
    if config.api.secret:
        problem = _header_problem(config.api.secret)
        if problem:
            raise ConfigError(f"api.secret: {problem}")
    _validate_url("api.url", config.api.url)
    if config.storage.s3.endpoint_url:
        _validate_url("storage.s3.endpoint_url", config.storage.s3.endpoint_url)
        if not config.storage.s3.bucket:
            raise ConfigError("storage.s3.bucket: required when storage.s3.endpoint_url is set "
                              "(env BUCKET_NAME)")
    if config.storage.s3.bucket:
        _validate_s3_client(config.storage.s3)
    if not 1 <= config.comfy.base_port <= 65535:
        raise ConfigError(f"comfy.base_port: must be a TCP port (1-65535), got {config.comfy.base_port}")
    if config.comfy.mode == "start" and not config.comfy.command:
        raise ConfigError("comfy.command: must name the program that starts ComfyUI")
    if config.comfy.mode == "attach" and not config.comfy.attach:
        raise ConfigError("comfy.attach: mode is attach, so list at least one ComfyUI address")
    for address in config.comfy.attach:
        comfy_base_url(address)
    if config.webhook.signing_secret:
        signing_key(config.webhook.signing_secret)
    for dotted in ("api.callback_hosts", "inputs.redirect_hosts"):
        for host in _get_dotted(config, dotted):
            if not HOST_PATTERN.fullmatch(host.strip()):
                raise ConfigError(f"{dotted}: each entry must be a host name or address, optionally with "
                                  f":port, got {_show.repr(host)}")
    for address in config.inputs.treat_as_public:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"inputs.treat_as_public: each entry must be an IP address, got "
                              f"{_show.repr(address)}") from None


HOST_PATTERN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.:_-]+)(:[0-9]{1,5})?")
REGION_PATTERN = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")   # botocore's host label


def _validate_s3_client(s3: S3Config) -> None:
    """What boto3 would refuse when the worker builds its S3 client (a traceback at every start)."""
    if s3.region and not REGION_PATTERN.fullmatch(s3.region):
        raise ConfigError(f"storage.s3.region: must be a region name such as eu-west-1, got {_show.repr(s3.region)}")
    if bool(s3.access_key_id) != bool(s3.secret_access_key):
        given, missing = (("access_key_id", "secret_access_key") if s3.access_key_id
                          else ("secret_access_key", "access_key_id"))
        raise ConfigError(f"storage.s3.{missing}: required when storage.s3.{given} is set "
                          "(env BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY)")


def signing_key(secret: str) -> bytes:
    """``whsec_<base64>`` (Standard Webhooks) -> the HMAC key bytes, or a ConfigError that does not
    quote the secret."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        raise ConfigError("webhook.signing_secret: must have the form whsec_<base64> (Standard Webhooks)")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError("webhook.signing_secret: the part after whsec_ must be base64 of at least 16 bytes")
    return key


def _validate_url(dotted: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        raise ConfigError(f"{dotted}: not a valid URL, got {_show.repr(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{dotted}: must be an http:// or https:// URL, got {_show.repr(url)}")


def _get_dotted(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def comfy_base_url(address: str) -> str:
    """``127.0.0.1:8188`` or ``http://host:port`` -> ``http://host:port`` (no trailing slash)."""
    text = address.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"comfy.attach: not a ComfyUI address (host:port or URL), got {_show.repr(address)}")
    return text
