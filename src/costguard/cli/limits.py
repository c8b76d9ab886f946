"""`costguard limits set|clear`: change a ceiling's limit at run time (persisted and audited)."""

from __future__ import annotations

from pathlib import Path

import click

from costguard.cli.common import (
    actor_name,
    actor_option,
    amount,
    changing,
    config_option,
    open_guard,
    parse_scope,
    period_option,
    reason_option,
    scope_text,
)
from costguard.errors import LimitNotFound

__all__ = ["limits"]


@click.group()
def limits() -> None:
    """Change a ceiling's limit at run time (persisted, audited, every process follows)."""


@limits.command("set")
@config_option()
@click.argument("scope")
@period_option()
@click.option("--usd", type=float, default=None, help="The new limit in USD.")
@click.option("--calls", type=click.IntRange(min=0), default=None, help="The new limit in calls.")
@click.option("--tokens", type=click.IntRange(min=0), default=None, help="The new limit in tokens.")
@reason_option("Why (kept in the audit log).")
@actor_option()
def limits_set(
    config: Path | None,
    scope: str,
    period: str,
    usd: float | None,
    calls: int | None,
    tokens: int | None,
    reason: str,
    actor: str | None,
) -> None:
    """Set SCOPE's limit, e.g. `costguard limits set feature=support_agent --usd 750 --reason "launch"`."""
    labels = parse_scope(scope)
    with open_guard(config) as guard, changing(f"the {period} limit of {scope_text(labels)} was NOT set"):
        try:
            start = guard.set_limit(
                labels, period=period, usd=usd, calls=calls, tokens=tokens, reason=reason, actor=actor_name(actor)
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    unit = "usd" if usd is not None else "calls" if calls is not None else "tokens"
    new_limit = (
        amount(usd, "usd") if usd is not None else amount(float(calls if calls is not None else tokens or 0), unit)
    )
    click.echo(f"{scope_text(labels)}: {period} limit set to {new_limit} ({reason})")
    if not start.known:
        click.echo(f"start not known: {start.note}")
    elif start.spent is not None:
        when = "so far" if period == "total" else f"this {period}"
        click.echo(f"counting from {amount(start.spent, unit)} already spent {when} ({start.source})")


@limits.command("clear")
@config_option()
@click.argument("scope")
@period_option()
@click.option("--unit", type=click.Choice(["usd", "calls", "tokens"]), default="usd", show_default=True)
@reason_option("Why (kept in the audit log).")
@actor_option()
def limits_clear(config: Path | None, scope: str, period: str, unit: str, reason: str, actor: str | None) -> None:
    """Remove a run-time limit so the config's value applies again."""
    labels = parse_scope(scope)
    with open_guard(config) as guard, changing(f"the {period} limit of {scope_text(labels)} was NOT cleared"):
        try:
            guard.clear_limit(labels, period=period, unit=unit, reason=reason, actor=actor_name(actor))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        except LimitNotFound as exc:
            raise click.ClickException(str(exc)) from None  # exit 1: nothing was cleared
    click.echo(f"{scope_text(labels)}: run-time {period} {unit} limit cleared ({reason})")
