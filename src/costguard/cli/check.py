"""`costguard check-config`: validate a config file without opening its store, and summarize it."""

from __future__ import annotations

import re
from pathlib import Path

import click

from costguard.cli.common import cli_errors, config_file, config_option
from costguard.errors import ConfigError

__all__ = ["check_config"]

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


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


@click.command("check-config")
@config_option()
def check_config(config: Path | None) -> None:
    """Validate a config file (without opening its store) and summarize it."""
    from costguard.config import load_config

    with cli_errors():
        loaded = load_config(config_file(config))
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
