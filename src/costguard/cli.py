"""The `costguard` command line: check a config, show spend, run the demo."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from costguard.errors import ConfigError, CostGuardError

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.status import CeilingStatus, Status

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_CONFIG = 2
_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def config_option(*, hidden: bool = False) -> Callable[[F], F]:
    """`--config PATH`, shared by every command."""
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        hidden=hidden,
        help="Config file (default: $COSTGUARD_CONFIG, then ./costguard.yaml).",
    )


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # pipes and CI logs: don't squeeze tables into 80 columns
    return console


@contextmanager
def _errors() -> Iterator[None]:
    """Print costguard errors to stderr and exit: 2 for a bad config, 1 for anything else."""
    try:
        yield
    except ConfigError as exc:
        click.echo(f"costguard: config error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None
    except CostGuardError as exc:
        click.echo(f"costguard: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None


def _config_file(config: Path | None) -> Path:
    from costguard.defaults import config_path

    path = config if config is not None else config_path()
    if path is None:
        raise ConfigError("no config file: pass --config PATH, set COSTGUARD_CONFIG, or create ./costguard.yaml")
    return path


@contextmanager
def _guard(config: Path | None) -> Iterator[Guard]:
    from costguard.guard import Guard

    guard = Guard.from_yaml(_config_file(config))
    try:
        yield guard
    finally:
        guard.close()


def _redact(url: str) -> str:
    """A store URL without its password."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def _check_store_url(url: str, file: str) -> None:
    """Check the store URL's form without connecting to the store (CI has no access to it)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme in _SQL_SCHEMES:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"not a valid SQL store URL: {exc}", file=file, path="store") from None
        return
    from costguard.stores import open_store

    try:
        # memory:// opens nothing; other schemes are rejected here before anything connects.
        open_store(url).close()
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=file, path=exc.path or "store") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="costguard-ai", prog_name="costguard")
def main() -> None:
    """costguard: cost ceilings in front of every paid call."""


@main.command("check-config")
@config_option()
def check_config(config: Path | None) -> None:
    """Validate a config file (without opening its store) and summarize it."""
    from costguard.config import load_config

    with _errors():
        loaded = load_config(_config_file(config))
        settings = loaded.config
        _check_store_url(settings.store, loaded.file)
        # Build against an in-memory store: every other check runs, nothing is created or contacted.
        guard = settings.model_copy(update={"store": "memory://"}).build(file=loaded.file)
        ceilings, features = len(guard.ceilings), sorted(guard.features)
        guard.close()
    click.echo(f"{loaded.file}: OK")
    click.echo(f"  store:      {_redact(settings.store)}")
    click.echo(f"  timezone:   {settings.timezone}")
    click.echo(f"  thresholds: {', '.join(f'{t:g}' for t in settings.thresholds)}")
    click.echo(f"  ceilings:   {ceilings}")
    click.echo(f"  features:   {', '.join(features) if features else '(none)'}")


def _amount(value: float, unit: str) -> str:
    if unit == "usd":
        return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"
    return f"{value:,.0f} {unit}"


def _status_table(status: Status) -> Table:
    table = Table(title=f"costguard status at {status.at:%Y-%m-%d %H:%M:%S} UTC")
    table.add_column("ceiling", overflow="fold")
    table.add_column("labels", overflow="fold")
    table.add_column("period")
    for name in ("spent", "limit", "%"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("resets (UTC)", no_wrap=True)
    for row in status.ceilings:
        table.add_row(
            row.ceiling,
            ", ".join(f"{k}={v}" for k, v in sorted(row.labels.items())),
            row.period,
            _amount(row.spent, row.unit),
            _amount(row.limit, row.unit),
            _percent(row),
            f"{row.resets_at:%Y-%m-%d %H:%M}" if row.resets_at else "never",
        )
    return table


def _percent(row: CeilingStatus) -> Text:
    style = "red" if row.ratio >= 1 else "yellow" if row.ratio >= 0.8 else "green"
    return Text(f"{row.ratio * 100:.1f}%", style)


@main.command()
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (Status.to_dict()) instead of a table.")
@click.option("--feature", default=None, help="Only ceilings that bind this feature.")
@click.option("--customer", default=None, help="Only ceilings that bind this customer.")
def status(config: Path | None, as_json: bool, feature: str | None, customer: str | None) -> None:
    """Spend against every ceiling in its current period."""
    with _errors(), _guard(config) as guard:
        current = guard.status(feature=feature, customer=customer)
    if as_json:
        click.echo(json.dumps(current.to_dict(), indent=2))
        return
    console = _console()
    if current.ceilings:
        console.print(_status_table(current))
    else:
        console.print("no ceilings match")
    for switch in current.killswitches:
        scope = ", ".join(f"{k}={v}" for k, v in switch.scope) or "everything"
        console.print(Text(f"kill switch ACTIVE for {scope}: {switch.reason} (by {switch.actor})", "bold red"))


@main.command()
@config_option(hidden=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the simulated traffic.")
def demo(config: Path | None, seconds: float, seed: int) -> None:
    """Simulate an app with three LLM features hitting their ceilings (local, no network, no API key)."""
    from costguard.demo import run

    # The demo writes and uses its own temporary config; --config is accepted so every command takes it.
    raise click.exceptions.Exit(run(seconds=seconds, seed=seed, console=_console()))


if __name__ == "__main__":
    main()
