#!/usr/bin/env python3
"""The original single-worker command line: one worker, in this process, against one ComfyUI.

    python local_worker.py --api-url http://gmanimato:5173 --poll-interval 5 --max-retries 3 --debug

ComfyUI is the one at ``COMFY_HOST`` (default ``127.0.0.1:8188``); storage comes from ``BUCKET_*``;
the secret from ``WORKER_TASK_SECRET``. ``--config`` may name a config.yaml for everything else.
SIGTERM or Ctrl-C finishes the running job first; a second one stops at once (the job is reported
failed). A file named by ``WORKER_SENTINEL_FILE`` (default ``.worker_stop``) also stops it cleanly.
Claimed jobs are journaled in ``state_dir`` (default ``<comfy.work_dir>/state``) like the supervisor's:
a job this process was running when it died is recovered at its next start.
"""
from __future__ import annotations

import logging
import signal
import sys

import click

from worker import exits
from worker.config import ConfigError, comfy_base_url, load_config, log_overrides
from worker.folder_lock import FolderBusy, hold_folder
from worker.jobs.loop import SlotSpec, Worker, install_drain_signals
from worker.journal.store import JournalError
from worker.logs import setup_logging
from worker.supervision.startup import check_journal

DEFAULT_COMFY_HOST = "127.0.0.1:8188"
SLOT = "local"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api-url", help="GmAnimato base URL (env GMANIMATO_API_URL or WORKER_API_URL; "
                                "default http://localhost:5173).")
@click.option("--poll-interval", type=float, help="Seconds between polls of an empty queue "
                                                  "(env WORKER_POLL_INTERVAL; default 5).")
@click.option("--max-retries", type=int, help="Retries of a final webhook (env WORKER_MAX_RETRIES; default 3).")
@click.option("--debug", is_flag=True, help="Log debug detail.")
@click.option("--config", "config_path", type=click.Path(),   # checked by load_config: one line, exit 2
              help="Optional config.yaml (flags and env win over it).")
def main(api_url: str | None, poll_interval: float | None, max_retries: int | None, debug: bool,
         config_path: str | None) -> None:
    """Run one GmAnimato worker against the ComfyUI at COMFY_HOST."""
    overrides = {"api.url": api_url, "api.poll_interval": poll_interval,
                 "webhook.max_retries": max_retries, "logging.level": "debug" if debug else None}
    try:
        config = load_config(config_path, overrides=overrides)
        comfy_url = comfy_base_url(config.comfy.attach[0] if config.comfy.attach else DEFAULT_COMFY_HOST)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(exits.EXIT_CONFIG)
    setup_logging("local-worker", config.logging.level, config.logging.format, config.secrets())
    log_overrides(logging.getLogger("local_worker"), config_path, overrides)
    try:
        lock = hold_folder(config.state_path, "state_dir")   # noqa: F841 (held until the process ends)
        check_journal(config, [SLOT])
        worker = Worker(config, SlotSpec(SLOT, f"ComfyUI at {comfy_url}", comfy_url))
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(exits.EXIT_CONFIG)
    except (FolderBusy, JournalError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exits.EXIT_CONFIG)
    install_drain_signals(worker, (signal.SIGTERM, signal.SIGINT))
    sys.exit(worker.run())


if __name__ == "__main__":
    main()
