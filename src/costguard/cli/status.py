"""`costguard status` and `costguard forecast`: spend against every ceiling now, and where it is headed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from costguard.cli.common import (
    amount,
    config_option,
    filter_options,
    json_option,
    make_console,
    open_guard,
    print_json,
    scope_text,
)

if TYPE_CHECKING:
    from costguard.status import CeilingStatus, Status

__all__ = ["forecast", "status"]


def _percent(row: CeilingStatus) -> Text:
    style = "red" if row.ratio >= 1 else "yellow" if row.ratio >= 0.8 else "green"
    return Text(f"{row.ratio * 100:.1f}%", style)


def _status_table(status: Status) -> Table:
    table = Table(title=f"costguard status at {status.at:%Y-%m-%d %H:%M:%S} UTC")
    table.add_column("ceiling", overflow="fold")
    table.add_column("labels", overflow="fold")
    table.add_column("period")
    # `spent` counts what is in flight, as enforcement does; `reserved` is that part, `leased` the part of
    # it slices hold.
    for name in ("spent", "reserved", "leased", "limit", "%"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("resets (UTC)", no_wrap=True)
    for row in status.ceilings:
        table.add_row(
            row.ceiling,
            ", ".join(f"{k}={v}" for k, v in sorted(row.labels.items())),
            row.period,
            amount(row.spent, row.unit),
            amount(row.reserved, row.unit),
            amount(row.leased, row.unit),
            amount(row.limit, row.unit),
            _percent(row),
            f"{row.resets_at:%Y-%m-%d %H:%M}" if row.resets_at else "never",
        )
    return table


@click.command()
@config_option()
@json_option("Print JSON (Status.to_dict()) instead of a table.")
@filter_options
def status(config: Path | None, as_json: bool, feature: str | None, customer: str | None) -> None:
    """Spend against every ceiling in its current period."""
    with open_guard(config) as guard:
        current = guard.status(feature=feature, customer=customer)
    if as_json:
        print_json(current.to_dict())
        return
    console = make_console()
    if current.ceilings:
        console.print(_status_table(current))
    else:
        console.print("no ceilings match")
    for switch in current.killswitches:
        scope = ", ".join(f"{k}={v}" for k, v in switch.scope) or "everything"
        console.print(Text(f"kill switch ACTIVE for {scope}: {switch.reason} (by {switch.actor})", "bold red"))


def _bar(spent: float, projected: float | None, limit: float, width: int = 30) -> Text:
    """`████▒▒▒▒·····│`: spent, then projected, against the limit (the bar spans 1.5 times the limit)."""
    scale = width / (limit * 1.5) if limit > 0 else 0.0
    cells_spent = min(width, round(spent * scale))
    cells_projected = min(width, max(cells_spent, round((projected or 0) * scale)))
    at_limit = min(width - 1, round(limit * scale))
    text = Text()
    for i in range(width):
        char, style = ("█", "red" if spent >= limit else "green") if i < cells_spent else ("·", "dim")
        if cells_spent <= i < cells_projected:
            char, style = "▒", "yellow" if (projected or 0) > limit else "cyan"
        if i == at_limit:
            char, style = "│", "bold"
        text.append(char, style)
    return text


@click.command()
@config_option()
@json_option("Print JSON (Forecast.to_dict()) instead of a chart.")
@filter_options
def forecast(config: Path | None, as_json: bool, feature: str | None, customer: str | None) -> None:
    """Projected spend at each USD ceiling's period end, from recent hourly velocity."""
    with open_guard(config) as guard:
        result = guard.forecast(feature=feature, customer=customer)
    if as_json:
        print_json(result.to_dict())
        return
    console = make_console()
    if not result.ceilings:
        console.print("no USD ceilings match")
        return
    table = Table(title=f"costguard forecast at {result.at:%Y-%m-%d %H:%M} UTC  (█ spent  ▒ projected  │ limit)")
    table.add_column("ceiling / labels", overflow="fold")
    table.add_column("period")
    table.add_column("chart", no_wrap=True)
    for name in ("spent", "projected", "limit", "$/h"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("runs out (UTC)", no_wrap=True)
    table.add_column("conf.", justify="right")
    for row in result.ceilings:
        runs_out = "exhausted" if row.exhausted else f"{row.depletion_at:%Y-%m-%d %H:%M}" if row.depletion_at else "-"
        table.add_row(
            f"{row.ceiling}\n{scope_text(row.labels)}",
            row.period,
            _bar(row.spent_usd, row.projected_usd, row.limit_usd),
            amount(row.spent_usd, "usd"),
            Text(
                amount(row.projected_usd, "usd") if row.projected_usd is not None else "-",
                "green" if row.on_track else "red",
            ),
            amount(row.limit_usd, "usd"),
            amount(row.velocity_usd_per_hour, "usd"),
            Text(runs_out, "red" if row.depletion_at else ""),
            f"{row.confidence:.0%}",
        )
    console.print(table)
