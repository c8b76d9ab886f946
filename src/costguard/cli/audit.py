"""`costguard audit`: the audit log, newest first, as a table or JSON lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from costguard.cli.common import amount, config_option, json_option, make_console, open_guard, scope_text
from costguard.events import AUDIT_DECISIONS

__all__ = ["audit"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def _when(text: str | None) -> float | None:
    """An ISO 8601 time, or a span back from now: 30m, 24h, 7d."""
    if text is None:
        return None
    match = _RELATIVE.match(text.strip())
    if match:
        import time

        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return time.time() - seconds
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither an ISO time (2026-11-01T00:00Z) nor a span (24h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@click.command()
@config_option()
@click.option("--since", default=None, help="ISO time or a span back from now (24h, 7d).")
@click.option("--until", default=None, help="ISO time or a span back from now.")
@click.option("--feature", default=None)
@click.option("--customer", default=None)
@click.option("--decision", type=click.Choice(AUDIT_DECISIONS), default=None, help="Only records with this decision.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--before-id", type=int, default=None, help="Page: records older than this id.")
@json_option("Print JSON lines.")
def audit(
    config: Path | None,
    since: str | None,
    until: str | None,
    feature: str | None,
    customer: str | None,
    decision: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """The audit log, newest first: every decision and every operator change."""
    with open_guard(config) as guard:
        records = guard.audit(
            _when(since),
            _when(until),
            feature=feature,
            customer=customer,
            decision=decision,
            limit=limit,
            before_id=before_id,
        )
    if as_json:
        for record in records:
            click.echo(json.dumps(record.to_dict()))
        return
    console = make_console()
    table = Table(title=f"costguard audit ({len(records)} records, newest first)")
    for name in ("id", "at (UTC)", "decision", "labels", "details"):
        table.add_column(name, overflow="fold")
    for record in records:
        details = ", ".join(_detail(k, v) for k, v in record.data.items() if v is not None and k != "scope")
        style = "red" if record.decision == "blocked" else ""
        table.add_row(
            str(record.id),
            f"{record.when:%Y-%m-%d %H:%M:%S}",
            Text(record.decision, style),
            scope_text(record.labels),
            details,
        )
    console.print(table)
    if len(records) == limit and records[-1].id is not None:
        console.print(f"more: --before-id {records[-1].id}")


def _detail(name: str, value: object) -> str:
    """One item of a record's data; an allowed reserve's `ceilings` as `scope period spent of limit`."""
    if name == "ceilings" and isinstance(value, list):
        shown = [
            f"{scope_text(c['scope'])} {c['period']} {amount(c['spent'], c['unit'])} of {amount(c['limit'], c['unit'])}"
            for c in value
        ]
        return "ceilings=" + "; ".join(shown)
    return f"{name}={value}"
