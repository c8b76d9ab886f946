"""`costguard keys issue|list|revoke`: a capped, expiring API key per agent run for `costguard proxy`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from costguard.cli.common import (
    actor_name,
    actor_option,
    changing,
    cli_errors,
    config_option,
    json_option,
    make_console,
    open_guard,
    parse_scope,
    print_json,
    scope_text,
)

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Run keys for `costguard proxy`: one per agent run, capped, revocable, expiring."""


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text  # refused by the caps check, with the cap's name


def _caps(values: tuple[str, ...]) -> dict[str, int | float | str]:
    caps: dict[str, int | float | str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(f"expected NAME=AMOUNT such as total_usd=5, got {item!r}", param_hint="--cap")
        caps[name.strip()] = _number(value.strip())
    return caps


@keys.command("issue")
@config_option()
@click.option("--labels", "labels_text", required=True, help="The labels of its calls: run=r-42,agent=billing.")
@click.option("--cap", "caps", multiple=True, help="A cap on those labels, e.g. total_usd=5 or daily_usd=1 (repeat).")
@click.option("--ttl", "ttl_s", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds it is valid.")
@click.option("--upstream", "upstreams", multiple=True, help="An upstream it may use (repeat; default: all).")
@json_option("Print JSON: id, key (shown once), labels, caps, upstreams, expires_at.")
@actor_option()
def keys_issue(
    config: Path | None,
    labels_text: str,
    caps: tuple[str, ...],
    ttl_s: float | None,
    upstreams: tuple[str, ...],
    as_json: bool,
    actor: str | None,
) -> None:
    """Issue a key; it is printed once and stored only as a hash."""
    from costguard.runkeys import RunKeys

    labels = parse_scope(labels_text)
    with open_guard(config) as guard, changing("no key was issued"):
        issued = RunKeys(guard).issue(labels, _caps(caps), ttl_s=ttl_s, upstreams=upstreams, actor=actor_name(actor))
    if as_json:
        print_json(issued.to_dict())
        return
    click.echo(f"issued key {issued.id} for {scope_text(labels)} (shown once, keep it now):", err=True)
    click.echo(issued.key)


@keys.command("list")
@config_option()
@json_option("Print JSON: every key's id, labels, caps, upstreams, times and status (never the key).")
def keys_list(config: Path | None, as_json: bool) -> None:
    """Every key: active, expired and revoked."""
    from costguard.runkeys import RunKeys, key_view

    with open_guard(config) as guard, cli_errors():
        now = guard.clock()
        rows = [key_view(state, now) for state in RunKeys(guard).list()]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "labels", "caps", "upstreams", "status")
    for row in rows:
        table.add_row(
            row["id"],
            scope_text(row["labels"]),
            json.dumps(row["caps"]),
            ",".join(row["upstreams"]) or "all",
            row["status"],
        )
    make_console().print(table)


@keys.command("revoke")
@config_option()
@click.argument("key_id")
@actor_option()
def keys_revoke(config: Path | None, key_id: str, actor: str | None) -> None:
    """Revoke a key: every proxy refuses it within its control refresh (500 ms by default)."""
    from costguard.runkeys import RunKeys

    with open_guard(config) as guard, changing(f"key {key_id} was NOT revoked"):
        state = RunKeys(guard).revoke(key_id, actor=actor_name(actor))
    if state is None:
        raise click.ClickException(f"no key {key_id!r} (`costguard keys list` shows them)")
    click.echo(f"key {key_id} revoked")


@keys.command("purge")
@config_option()
@click.option(
    "--older-than",
    "older_than",
    default="7d",
    show_default=True,
    help="Purge keys revoked or expired longer ago than this (30m, 12h, 7d or seconds; 0: all of them).",
)
@json_option("Print JSON: the purged keys (never the keys themselves).")
@actor_option()
def keys_purge(config: Path | None, older_than: str, as_json: bool, actor: str | None) -> None:
    """Delete keys that stopped working a while ago, with the caps they set (their spend stays counted)."""
    from costguard._config.values import duration_seconds
    from costguard.runkeys import RunKeys, key_view

    try:
        seconds = 0.0 if older_than.strip() in ("0", "0s") else duration_seconds(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    with open_guard(config) as guard, changing("no key was purged"):
        purged = RunKeys(guard).purge(seconds, actor=actor_name(actor))
        now = guard.clock()
    if as_json:
        print_json([key_view(state, now) for state in purged])
        return
    click.echo(f"purged {len(purged)} key{'' if len(purged) == 1 else 's'} revoked or expired over {older_than} ago")
