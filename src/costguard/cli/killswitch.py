"""`costguard killswitch activate|deactivate|status`: stop guarded calls now, let them run again, see what is off."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from costguard.cli.common import (
    actor_name,
    actor_option,
    changing,
    config_option,
    json_option,
    make_console,
    open_guard,
    parse_scope,
    print_json,
    reason_option,
    scope_text,
)

__all__ = ["killswitch"]


@click.group()
def killswitch() -> None:
    """Stop guarded calls now: everything, a feature, a customer, any labels."""


@killswitch.command("activate")
@config_option()
@click.option("--scope", default=None, help="feature=NAME, customer=ID, any labels; default: everything.")
@reason_option("Why (shown to operators and kept in the audit log).")
@actor_option()
def killswitch_activate(config: Path | None, scope: str | None, reason: str, actor: str | None) -> None:
    """Turn a kill switch on; every process follows within its cache (500 ms by default)."""
    labels = parse_scope(scope)
    with open_guard(config) as guard, changing(f"the kill switch for {scope_text(labels)} was NOT activated"):
        changed = guard.killswitch.activate(reason=reason, actor=actor_name(actor), scope=labels or None)
    click.echo(f"kill switch {'ON' if changed else 'was already on'} for {scope_text(labels)}")


@killswitch.command("deactivate")
@config_option()
@click.option("--scope", default=None, help="The scope it was activated with; default: everything.")
@reason_option("Why calls may run again (required; kept in the audit log).")
@actor_option()
def killswitch_deactivate(config: Path | None, scope: str | None, reason: str, actor: str | None) -> None:
    """Turn a kill switch off."""
    labels = parse_scope(scope)
    with open_guard(config) as guard, changing(f"the kill switch for {scope_text(labels)} was NOT deactivated"):
        changed = guard.killswitch.deactivate(actor=actor_name(actor), scope=labels or None, reason=reason)
    click.echo(f"kill switch {'OFF' if changed else 'was not on'} for {scope_text(labels)}")


@killswitch.command("status")
@config_option()
@json_option("Print JSON (KillSwitchStatus.to_dict(): active, switches, history).")
@click.option("--history", type=click.IntRange(min=0), default=10, show_default=True, help="Past changes to show.")
def killswitch_status(config: Path | None, as_json: bool, history: int) -> None:
    """Active kill switches and recent changes."""
    with open_guard(config) as guard:
        current = guard.killswitch.status(history=history)
    if as_json:
        print_json(current.to_dict())
        return
    console = make_console()
    data = current.to_dict()
    if not data["switches"]:
        console.print(Text("no kill switch is active", "green"))
    for switch in data["switches"]:
        console.print(
            Text(
                f"ACTIVE for {scope_text(switch['scope'])} since {switch['since']}: {switch['reason']} "
                f"(by {switch['actor']})",
                "bold red",
            )
        )
    for entry in data.get("history", []):
        console.print(
            f"  {entry['at']}  {entry['decision']:<24} {scope_text(entry.get('scope') or {})}  "
            f"{entry.get('reason') or ''}  by {entry.get('actor')}"
        )
