"""Stores selected by URL scheme; backends import lazily so the core install stays light."""

from __future__ import annotations

from typing import Any

from costguard.errors import ConfigError
from costguard.stores.base import Control, CounterRow, KillSwitchState, Store, redacted
from costguard.stores.memory import MemoryStore

__all__ = ["Control", "CounterRow", "KillSwitchState", "MemoryStore", "Store", "open_store"]

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")
_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def check_store_url(url: str) -> None:
    """Raise `ConfigError` unless `url` names a store this version can open, its options checked as opening
    would check them (nothing is opened, nothing connects)."""
    if not isinstance(url, str) or "://" not in url:
        shown = repr(url) if not isinstance(url, str) or len(url) < 40 else repr(url[:12] + "…")
        raise ConfigError(
            f"store URL {shown} is not a URL; use memory://, sqlite:///costguard.db, postgresql+psycopg://… "
            "or redis://…",
            path="store",
        )
    if "\x00" in url:
        raise ConfigError("store URL contains a NUL character", path="store")
    scheme = url.split("://", 1)[0].lower()
    base = scheme.split("+", 1)[0]
    if base in _SQL_SCHEMES:
        from costguard.stores._sql_conn import check_url

        check_url(url)  # as opening would: `sqlite://x.db` (two slashes) is in-memory, not a file
        return
    if scheme in _REDIS_SCHEMES:
        from costguard.stores._redis_conn import parse_options

        parse_options(url)
        return
    if scheme == "memory":
        return
    raise ConfigError(
        f"unknown store scheme {scheme!r} in {redacted(url)!r}; expected memory://, sqlite:///…, "
        "postgresql+psycopg://…, redis://…, rediss://… or redis+cluster://…",
        path="store",
    )


def open_store(url: str, **options: Any) -> Store:
    """The store for `url`: `memory://`, `sqlite:///path.db`, `postgresql+psycopg://…`, `redis://…`."""
    check_store_url(url)
    scheme = url.split("://", 1)[0].lower()
    base = scheme.split("+", 1)[0]
    if scheme == "memory":
        return MemoryStore(url)
    if base in _SQL_SCHEMES:
        try:
            from costguard.stores.sql import SQLStore
        except ImportError as exc:  # pragma: no cover - SQLAlchemy is a core dependency
            raise ConfigError(f"the SQL store needs SQLAlchemy: {exc}", path="store") from exc
        return SQLStore(url, **options)
    if scheme in _REDIS_SCHEMES:
        try:
            from costguard.stores.redis import RedisStore
        except ImportError as exc:
            raise ConfigError(
                f'the Redis store needs redis-py: pip install "costguard-ai[redis]" ({exc})', path="store"
            ) from exc
        return RedisStore(url, **options)
    raise AssertionError(url)  # pragma: no cover - check_store_url accepted it
