"""What the `costguard` commands share: their repeated options, opening the config's guard, reporting
errors with the CLI's exit codes, the console, and how scopes, actors and amounts are read and shown."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from costguard.errors import ConfigError, CostGuardError, StoreError

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = [
    "EXIT_CONFIG",
    "EXIT_ERROR",
    "actor_name",
    "actor_option",
    "amount",
    "cli_errors",
    "config_file",
    "config_option",
    "filter_options",
    "json_option",
    "make_console",
    "open_guard",
    "parse_scope",
    "period_option",
    "print_json",
    "reason_option",
    "scope_text",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_CONFIG = 2


# ----------------------------------------------------------------- options
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


def json_option(text: str) -> Callable[[F], F]:
    """`--json`: print JSON instead of a table or chart; `text` is the option's help."""
    return click.option("--json", "as_json", is_flag=True, help=text)


def filter_options(function: F) -> F:
    """`--feature NAME` and `--customer ID`: only ceilings that bind them."""
    function = click.option("--customer", default=None, help="Only ceilings that bind this customer.")(function)
    return click.option("--feature", default=None, help="Only ceilings that bind this feature.")(function)


def period_option() -> Callable[[F], F]:
    """`--period`: which of a scope's limits (a month's by default)."""
    return click.option(
        "--period", type=click.Choice(["hour", "day", "week", "month", "total"]), default="month", show_default=True
    )


def reason_option(text: str) -> Callable[[F], F]:
    """`--reason TEXT`, required and not blank: an operator change says why; `text` is the option's help."""

    def not_blank(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if not value.strip():
            raise click.BadParameter("a reason is required (it goes in the audit log); it can't be blank")
        return value

    return click.option("--reason", required=True, help=text, callback=not_blank)


def actor_option() -> Callable[[F], F]:
    """`--actor NAME`: who made an operator change (see `actor_name`)."""
    return click.option("--actor", default=None, help="Who (default: cli:$USER).")


# ----------------------------------------------------------------- the guard and errors
@contextmanager
def cli_errors() -> Iterator[None]:
    """Print costguard errors to stderr and exit: 2 for a bad config, 1 for anything else."""
    try:
        yield
    except ConfigError as exc:
        click.echo(f"costguard: config error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None
    except CostGuardError as exc:
        click.echo(f"costguard: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except ValueError as exc:  # an argument the guard refused (an unknown label, a missing reason)
        click.echo(f"costguard: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None


@contextmanager
def changing(not_done: str) -> Iterator[None]:
    """Around an operator's change: when the store can't be reached, say plainly that it did not happen
    (`not_done`, exit 1) — no alert is sent for it, the operator is the one who needs to know."""
    try:
        yield
    except StoreError as exc:
        click.echo(
            f"costguard: {not_done}: the store can't be reached ({exc}); nothing was changed. "
            "Try again when it answers.",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_ERROR) from None


def config_file(config: Path | None) -> Path:
    """`--config`, else $COSTGUARD_CONFIG, else ./costguard.yaml; `ConfigError` when there is none."""
    from costguard.defaults import config_path

    path = config if config is not None else config_path()
    if path is None:
        raise ConfigError("no config file: pass --config PATH, set COSTGUARD_CONFIG, or create ./costguard.yaml")
    return path


@contextmanager
def open_guard(config: Path | None) -> Iterator[Guard]:
    """The config's guard, closed afterwards; errors opening it, using it or closing it are reported as
    `cli_errors` does."""
    from costguard.guard import Guard

    with cli_errors():
        guard = Guard.from_yaml(config_file(config))
        try:
            yield guard
        finally:
            guard.close()


# ----------------------------------------------------------------- reading and showing
def make_console() -> Console:
    """A console for tables and charts: 160 columns wide when the output is not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # pipes and CI logs: don't squeeze tables into 80 columns
    return console


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2))


def parse_scope(text: str | None) -> dict[str, str]:
    """`feature=support_agent,customer=acme` (also `feature:support_agent`); empty or `global` = everything."""
    if text is None or text.strip() in ("", "global"):
        return {}
    scope: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=") if "=" in part else part.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(
                f"{part!r} is not NAME=VALUE; write the scope as feature=support_agent or "
                "feature=support_agent,customer=acme",
                param_hint="SCOPE",
            )
        scope[name.strip()] = value.strip()
    return scope


def actor_name(actor: str | None) -> str:
    """`--actor`, else `cli:` and the user's name, else `cli`."""
    if actor:
        return actor
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def scope_text(labels: Any) -> str:
    """`customer=acme, feature=support_agent` from a mapping or pairs; `everything` when empty."""
    items = labels.items() if hasattr(labels, "items") else labels
    return ", ".join(f"{k}={v}" for k, v in sorted(items)) or "everything"


def amount(value: float, unit: str) -> str:
    """`$1,234.50`, `$0.0042` or `1,200 calls`."""
    if unit == "usd":
        return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"
    return f"{value:,.0f} {unit}"
