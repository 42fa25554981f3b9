#!/usr/bin/env python3
"""The GmAnimato GPU worker: one ComfyUI and one worker per GPU, supervised.

    python supervisor.py --config config.yaml     run for real
    python supervisor.py demo                      the whole flow against the built-in simulators

Parses flags, loads the config, builds the Supervisor, runs it, exits with a named code. Nothing else.
"""
from __future__ import annotations

import logging
import sys

import click

from worker import exits
from worker.config import ConfigError, load_config, log_overrides
from worker.logs import setup_logging


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(),   # checked by load_config: one line, exit 2
              help="config.yaml to run with (flags > environment > file).")
@click.option("--api-url", help="GmAnimato base URL (overrides api.url).")
@click.option("--gpus", help="all, none, or a comma-separated list of GPU indexes or UUIDs.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="logging.level")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, api_url: str | None, gpus: str | None,
        log_level: str | None) -> None:
    """Run the GmAnimato GPU worker (see README.md)."""
    ctx.obj = {"config_path": config_path,
               "overrides": {"api.url": api_url, "gpus": gpus, "logging.level": log_level}}
    if ctx.invoked_subcommand is None:
        sys.exit(run_supervisor(config_path, ctx.obj["overrides"]))


def run_supervisor(config_path: str | None, overrides: dict) -> int:
    from worker.folder_lock import FolderBusy
    from worker.journal.store import JournalError
    from worker.supervision.arbiter import Supervisor
    from worker.supervision.slots import GpuUnavailable
    from worker.supervision.startup import prepare_box

    try:
        config = load_config(config_path, overrides=overrides)
        setup_logging("supervisor", config.logging.level, config.logging.format, config.secrets())
        log_overrides(logging.getLogger("supervisor"), config_path, overrides)
        box = prepare_box(config)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        return exits.EXIT_CONFIG
    except (FolderBusy, JournalError) as exc:     # restarting cannot help: a person must act
        click.echo(f"error: {exc}", err=True)
        return exits.EXIT_CONFIG
    except GpuUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        return exits.EXIT_FAILURE
    supervisor = Supervisor(config, box.plans)
    supervisor.install_signal_handlers()
    try:
        return supervisor.run()
    finally:
        box.release()


@cli.command()
@click.option("--jobs", default=3, show_default=True, help="How many sample jobs to queue.")
@click.option("--step-time", default=0.25, show_default=True, help="Simulated seconds per sampler step.")
def demo(jobs: int, step_time: float) -> None:
    """Run sample jobs through the real supervisor against simulated GmAnimato and ComfyUI."""
    from worker.sim.demo import run_demo

    sys.exit(run_demo(jobs, step_time))


if __name__ == "__main__":
    cli()
