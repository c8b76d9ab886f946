"""`costguard serve` and `costguard mcp`: the admin API and dashboard over HTTP, the MCP server on stdio."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from costguard.cli.common import EXIT_ERROR, cli_errors, config_file, config_option

if TYPE_CHECKING:
    from costguard.config import AdminConfig
    from costguard.guard import Guard

__all__ = ["mcp_command", "serve"]


def _missing_extra(command: str, extra: str) -> NoReturn:
    click.echo(f'costguard: {command} needs the {extra} extra: pip install "costguard-ai[{extra}]"', err=True)
    raise click.exceptions.Exit(EXIT_ERROR) from None


@contextmanager
def _served(config: Path | None) -> Iterator[tuple[Guard, AdminConfig]]:
    """A guard and the config's `admin:` block (tokens live in the config, not on the guard), closed
    afterwards; errors opening it are reported as `cli_errors` does, errors while serving are the caller's."""
    from costguard.config import load_config

    with cli_errors():
        loaded = load_config(config_file(config))
        guard = loaded.build()
    try:
        yield guard, loaded.config.admin
    finally:
        guard.close()


@click.command()
@config_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True, help="Port to listen on.")
def serve(config: Path | None, host: str, port: int) -> None:
    """Serve the admin API and the dashboard (uvicorn); tokens come from the config's admin.tokens."""
    try:
        import uvicorn

        from costguard.admin import app
    except ImportError:
        _missing_extra("serve", "admin")
    with _served(config) as (guard, admin):
        with cli_errors():
            application = app(guard, admin=admin)
        # Without admin.tokens, building the app logged the one warning (every /v1 endpoint answers 401).
        click.echo(f"costguard admin API and dashboard on http://{host}:{port}/", err=True)
        uvicorn.run(application, host=host, port=port, log_level="info", server_header=False)


@click.command("mcp")
@config_option()
def mcp_command(config: Path | None) -> None:
    """Run the MCP server on stdio; kill switch tools need COSTGUARD_MCP_TOKEN set to an admin token."""
    try:
        import mcp.server.mcpserver  # noqa: F401

        from costguard.mcp_server import serve_stdio
    except ImportError:
        _missing_extra("mcp", "mcp")
    with _served(config) as (guard, admin), cli_errors():
        serve_stdio(guard, admin=admin)
