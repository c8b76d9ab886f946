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
    from costguard.config import AdminConfig
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
    except ValueError as exc:  # an argument the guard refused (an unknown label, a missing reason)
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


def _scope(text: str | None) -> dict[str, str]:
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


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def _scope_text(labels: Any) -> str:
    items = labels.items() if hasattr(labels, "items") else labels
    return ", ".join(f"{k}={v}" for k, v in sorted(items)) or "everything"


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


@main.command()
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (Forecast.to_dict()) instead of a chart.")
@click.option("--feature", default=None, help="Only ceilings that bind this feature.")
@click.option("--customer", default=None, help="Only ceilings that bind this customer.")
def forecast(config: Path | None, as_json: bool, feature: str | None, customer: str | None) -> None:
    """Projected spend at each USD ceiling's period end, from recent hourly velocity."""
    with _errors(), _guard(config) as guard:
        result = guard.forecast(feature=feature, customer=customer)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    console = _console()
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
        runs_out = f"{row.depletion_at:%Y-%m-%d %H:%M}" if row.depletion_at else "-"
        table.add_row(
            f"{row.ceiling}\n{_scope_text(row.labels)}",
            row.period,
            _bar(row.spent_usd, row.projected_usd, row.limit_usd),
            _amount(row.spent_usd, "usd"),
            Text(
                _amount(row.projected_usd, "usd") if row.projected_usd is not None else "-",
                "green" if row.on_track else "red",
            ),
            _amount(row.limit_usd, "usd"),
            _amount(row.velocity_usd_per_hour, "usd"),
            Text(runs_out, "red" if row.depletion_at else ""),
            f"{row.confidence:.0%}",
        )
    console.print(table)


@main.group()
def limits() -> None:
    """Change a ceiling's limit at run time (persisted, audited, every process follows)."""


@limits.command("set")
@config_option()
@click.argument("scope")
@click.option(
    "--period", type=click.Choice(["hour", "day", "week", "month", "total"]), default="month", show_default=True
)
@click.option("--usd", type=float, default=None, help="The new limit in USD.")
@click.option("--calls", type=click.IntRange(min=0), default=None, help="The new limit in calls.")
@click.option("--tokens", type=click.IntRange(min=0), default=None, help="The new limit in tokens.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: cli:$USER).")
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
    labels = _scope(scope)
    with _errors(), _guard(config) as guard:
        try:
            guard.set_limit(
                labels, period=period, usd=usd, calls=calls, tokens=tokens, reason=reason, actor=_actor(actor)
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    amount = (
        _amount(usd, "usd")
        if usd is not None
        else _amount(float(calls if calls is not None else tokens or 0), "calls" if calls is not None else "tokens")
    )
    click.echo(f"{_scope_text(labels)}: {period} limit set to {amount} ({reason})")


@limits.command("clear")
@config_option()
@click.argument("scope")
@click.option(
    "--period", type=click.Choice(["hour", "day", "week", "month", "total"]), default="month", show_default=True
)
@click.option("--unit", type=click.Choice(["usd", "calls", "tokens"]), default="usd", show_default=True)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: cli:$USER).")
def limits_clear(config: Path | None, scope: str, period: str, unit: str, reason: str, actor: str | None) -> None:
    """Remove a run-time limit so the config's value applies again."""
    labels = _scope(scope)
    with _errors(), _guard(config) as guard:
        try:
            guard.clear_limit(labels, period=period, unit=unit, reason=reason, actor=_actor(actor))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"{_scope_text(labels)}: run-time {period} {unit} limit cleared ({reason})")


@main.group()
def killswitch() -> None:
    """Stop guarded calls now: everything, a feature, a customer, any labels."""


@killswitch.command("activate")
@config_option()
@click.option("--scope", default=None, help="feature=NAME, customer=ID, any labels; default: everything.")
@click.option("--reason", required=True, help="Why (shown to operators and kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: cli:$USER).")
def killswitch_activate(config: Path | None, scope: str | None, reason: str, actor: str | None) -> None:
    """Turn a kill switch on; every process follows within its cache (500 ms by default)."""
    labels = _scope(scope)
    with _errors(), _guard(config) as guard:
        changed = guard.killswitch.activate(reason=reason, actor=_actor(actor), scope=labels or None)
    click.echo(f"kill switch {'ON' if changed else 'was already on'} for {_scope_text(labels)}")


@killswitch.command("deactivate")
@config_option()
@click.option("--scope", default=None, help="The scope it was activated with; default: everything.")
@click.option("--reason", required=True, help="Why calls may run again (required; kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: cli:$USER).")
def killswitch_deactivate(config: Path | None, scope: str | None, reason: str, actor: str | None) -> None:
    """Turn a kill switch off."""
    labels = _scope(scope)
    with _errors(), _guard(config) as guard:
        changed = guard.killswitch.deactivate(actor=_actor(actor), scope=labels or None, reason=reason)
    click.echo(f"kill switch {'OFF' if changed else 'was not on'} for {_scope_text(labels)}")


@killswitch.command("status")
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--history", type=click.IntRange(min=0), default=10, show_default=True, help="Past changes to show.")
def killswitch_status(config: Path | None, as_json: bool, history: int) -> None:
    """Active kill switches and recent changes."""
    with _errors(), _guard(config) as guard:
        current = guard.killswitch.status(history=history)
    if as_json:
        click.echo(json.dumps(current.to_dict(), indent=2))
        return
    console = _console()
    data = current.to_dict()
    if not data["active"]:
        console.print(Text("no kill switch is active", "green"))
    for switch in data["active"]:
        console.print(
            Text(
                f"ACTIVE for {_scope_text(switch['scope'])} since {switch['since']}: {switch['reason']} "
                f"(by {switch['actor']})",
                "bold red",
            )
        )
    for entry in data.get("history", []):
        console.print(
            f"  {entry['at']}  {entry['decision']:<24} {_scope_text(entry.get('scope') or {})}  "
            f"{entry.get('reason') or ''}  by {entry.get('actor')}"
        )


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


@main.command()
@config_option()
@click.option("--since", default=None, help="ISO time or a span back from now (24h, 7d).")
@click.option("--until", default=None, help="ISO time or a span back from now.")
@click.option("--feature", default=None)
@click.option("--customer", default=None)
@click.option("--decision", default=None, help="reserve, commit, release, blocked, limit_changed, killswitch_…")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--before-id", type=int, default=None, help="Page: records older than this id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
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
    with _errors(), _guard(config) as guard:
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
    console = _console()
    table = Table(title=f"costguard audit ({len(records)} records, newest first)")
    for name in ("id", "at (UTC)", "decision", "labels", "details"):
        table.add_column(name, overflow="fold")
    for record in records:
        details = ", ".join(f"{k}={v}" for k, v in record.data.items() if v is not None and k != "scope")
        style = "red" if record.decision == "blocked" else ""
        table.add_row(
            str(record.id),
            f"{record.when:%Y-%m-%d %H:%M:%S}",
            Text(record.decision, style),
            _scope_text(record.labels),
            details,
        )
    console.print(table)
    if len(records) == limit and records[-1].id is not None:
        console.print(f"more: --before-id {records[-1].id}")


def _load(config: Path | None) -> tuple[Guard, AdminConfig]:
    """A guard and the config's `admin:` block (tokens live in the config, not on the guard)."""
    from costguard.config import load_config

    loaded = load_config(_config_file(config))
    return loaded.build(), loaded.config.admin


@main.command()
@config_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True, help="Port to listen on.")
def serve(config: Path | None, host: str, port: int) -> None:
    """Serve the admin API and the dashboard (uvicorn); tokens come from the config's admin.tokens."""
    try:
        import uvicorn

        from costguard.admin import app
    except ImportError:
        click.echo('costguard: serve needs the admin extra: pip install "costguard-ai[admin]"', err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    with _errors():
        guard, admin = _load(config)
    try:
        with _errors():
            application = app(guard, admin=admin)
        if not admin.tokens:
            click.echo("costguard: no admin.tokens in the config: every /v1 endpoint will answer 401", err=True)
        click.echo(f"costguard admin API and dashboard on http://{host}:{port}/", err=True)
        uvicorn.run(application, host=host, port=port, log_level="info", server_header=False)
    finally:
        guard.close()


@main.command("mcp")
@config_option()
def mcp_command(config: Path | None) -> None:
    """Run the MCP server on stdio; kill switch tools need COSTGUARD_MCP_TOKEN set to an admin token."""
    try:
        import mcp.server.mcpserver  # noqa: F401

        from costguard.mcp_server import serve_stdio
    except ImportError:
        click.echo('costguard: mcp needs the mcp extra: pip install "costguard-ai[mcp]"', err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    with _errors():
        guard, admin = _load(config)
    try:
        with _errors():
            serve_stdio(guard, admin=admin)
    finally:
        guard.close()


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
