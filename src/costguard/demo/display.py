"""The demo's display: the live dashboard in a terminal, progress lines in a pipe or CI log, the summary
at the end."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from costguard.demo.app import SPECS, WORKERS, Stats

if TYPE_CHECKING:
    import costguard
    from costguard.status import CeilingStatus, Status
    from costguard.testing import RecordingNotifier

__all__ = ["dashboard", "progress_line", "summary"]


def _day_rows(status: Status) -> dict[str, CeilingStatus]:
    """Today's USD rows: keyed by feature, or `feature/customer` for per-customer ceilings."""
    rows = {}
    for row in status.ceilings:
        if row.period == "day" and row.unit == "usd":
            labels = dict(row.labels)
            key = labels["feature"] + (f"/{labels['customer']}" if "customer" in labels else "")
            rows[key] = row
    return rows


def _state(key: str, row: CeilingStatus, stats: Stats, switched_off: set[str]) -> Text:
    feature, _, customer = key.partition("/")
    scope = tuple(sorted({"feature": feature, **({"customer": customer} if customer else {})}.items()))
    if not customer and feature in switched_off:
        return Text("KILL SWITCH", "bold white on red")
    if scope in stats.blocked:
        return Text("CUT OFF" if customer else "SHUT OFF", "bold red")
    if not customer and stats.tally[feature].degraded:
        return Text("DEGRADED", "magenta")
    if row.ratio >= 0.8:
        return Text("WARN", "yellow")
    return Text("healthy", "green")


def dashboard(guard: costguard.Guard, stats: Stats, seconds: float, total: int) -> RenderableType:
    status = guard.status()
    rows = _day_rows(status)
    switched_off = {dict(s.scope).get("feature", "*") for s in status.killswitches}
    # No borders and one space between columns: the whole screen fits an 80-column terminal.
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    table.add_column("ceiling", no_wrap=True)
    table.add_column("today", width=12)
    for column in ("spent/limit", "allowed", "degraded", "fallback"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    order = list(SPECS)
    for key in sorted(rows, key=lambda k: (order.index(k.split("/")[0]), "/" in k, k)):
        row = rows[key]
        color = "red" if row.ratio >= 1 else "yellow" if row.ratio >= 0.8 else "green"
        bar = ProgressBar(total=row.limit, completed=min(row.spent, row.limit), width=12, complete_style=color)
        tally = stats.tally.get(key) if "/" not in key else None
        counts = [str(v) for v in (tally.allowed, tally.degraded, tally.fallbacks)] if tally else [""] * 3
        name = key if tally else f"  {key.split('/')[1]}"
        spend = f"${row.spent:.3f}/${row.limit:.2f}"
        table.add_row(name, bar, spend, *counts, _state(key, row, stats, switched_off))
    elapsed = time.monotonic() - stats.start
    header = Text(f"costguard demo: {stats.done}/{total} calls from {WORKERS} workers, {elapsed:.1f}s of ~{seconds:g}s")
    lines = [line.copy() for line in stats.lines[-10:]]
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    events = Group(*lines) if lines else Text("(no events yet)", "dim")
    return Group(header, Text(), table, Panel(events, title="latest events", border_style="dim"))


def progress_line(guard: costguard.Guard, stats: Stats, total: int) -> str:
    rows = _day_rows(guard.status())
    parts = [f"{name} ${rows[name].spent:.4f}/${rows[name].limit:.2f}" for name in SPECS if name in rows]
    return f"{time.monotonic() - stats.start:6.1f}s progress {stats.done}/{total} calls: " + ", ".join(parts)


def summary(guard: costguard.Guard, stats: Stats, recorder: RecordingNotifier) -> RenderableType:
    rows = _day_rows(guard.status())
    table = Table(title="Summary")
    table.add_column("feature", no_wrap=True)
    for column in ("calls", "allowed", "fallbacks", "degraded", "spent today", "daily limit"):
        table.add_column(column, justify="right")
    for name, tally in stats.tally.items():
        row = rows.get(name)
        spent, limit = (f"${row.spent:.4f}", f"${row.limit:.2f}") if row else ("-", "-")
        table.add_row(
            name, *(str(v) for v in (tally.calls, tally.allowed, tally.fallbacks, tally.degraded)), spent, limit
        )
    records = guard.audit(limit=1_000_000)
    by_decision = Counter(r.decision for r in records)
    kinds = Counter(recorder.kinds())
    audit = ", ".join(f"{n} {d}" for d, n in sorted(by_decision.items()))
    alerts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    return Group(
        table,
        Text(f"audit log (guard.audit): {len(records)} records ({audit})", overflow="fold"),
        Text(f"alerts delivered to notifiers: {alerts}", overflow="fold"),
    )
