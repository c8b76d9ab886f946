"""`costguard demo`: run the simulated app of `costguard.demo` in the terminal."""

from __future__ import annotations

from pathlib import Path

import click

from costguard.cli.common import config_option, make_console

__all__ = ["demo"]


@click.command()
@config_option(hidden=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the simulated traffic.")
def demo(config: Path | None, seconds: float, seed: int) -> None:
    """Simulate an app with three LLM features hitting their ceilings (local, no network, no API key)."""
    from costguard.demo import run

    # The demo writes and uses its own temporary config; --config is accepted so every command takes it.
    raise click.exceptions.Exit(run(seconds=seconds, seed=seed, console=make_console()))
