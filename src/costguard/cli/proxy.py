"""`costguard proxy`: the config's upstreams behind run keys and the same caps, over HTTP."""

from __future__ import annotations

from pathlib import Path

import click

from costguard.cli.common import EXIT_ERROR, cli_errors, config_file, config_option

__all__ = ["proxy"]


@click.command()
@config_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8788, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="uvicorn's line per request (costguard's audit log records every decision either way).",
)
def proxy(config: Path | None, host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve the proxy (uvicorn): /<upstream>/<path> with a run key as the API key."""
    try:
        import httpx  # noqa: F401
        import uvicorn
    except ImportError:
        click.echo('costguard: proxy needs the proxy extra: pip install "costguard-ai[proxy]"', err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    from costguard.config import load_config

    with cli_errors():
        path = config_file(config)
        upstreams = load_config(path).config.proxy.upstreams
    if not upstreams:
        click.echo(f"costguard: {path}: proxy.upstreams is empty: nothing to forward to", err=True)
        raise click.exceptions.Exit(2)
    from costguard.proxy.serve import server_stack

    http, loop = server_stack()
    click.echo(
        f"costguard proxy on http://{host}:{port}/ for {', '.join(sorted(upstreams))} ({http}, {loop})", err=True
    )
    # Each worker builds its own guard from the file (uvicorn imports the factory in each process).
    import os

    os.environ["COSTGUARD_PROXY_CONFIG"] = str(path)
    uvicorn.run(
        "costguard.proxy.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=access_log,
        server_header=False,
        http=http,
        loop=loop,
    )
