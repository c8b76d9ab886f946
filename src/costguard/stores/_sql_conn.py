"""Connecting the SQL store: the URL's options, the SQLAlchemy engine (SQLite's pragmas and lock
polling, PostgreSQL's timeouts and a connect bounded by the deadline), and the one boundary where
driver errors become costguard's.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from costguard import deadline as dl
from costguard.errors import ConfigError, StoreBusy, StoreError, StoreTimeout, StoreUnavailable
from costguard.stores._sql_schema import PREFIX
from costguard.stores.base import redacted

__all__ = ["SQLOptions", "connect_within", "map_error", "mapped", "open_engine", "server_answered"]

P = ParamSpec("P")
T = TypeVar("T")

_SQLITE_BUSY_MS = 10

# SQLSTATEs of overload: the server's connection limit, a server starting or shutting down, and a
# statement the server cancelled (statement or lock timeout, a deadlock or serialization victim) —
# each rolled back, so asking again is safe.
_BUSY_STATES = {"53300", "53400", "57P03", "57014", "55P03", "40001", "40P01"}
_BUSY_TEXT = ("database is locked", "database table is locked", "too many clients", "remaining connection slots")
# Errors raised before the request could have reached the server: nothing was applied.
_NOT_SENT_TEXT = (
    "connection refused",
    "could not connect",
    "connection failed",
    "could not translate host name",
    "name or service not known",
    "no such host",
    "unable to open database file",
    "connection timed out",
    "connection timeout expired",
)


def map_error(exc: sa_exc.DBAPIError | sa_exc.TimeoutError) -> StoreError:
    """The one boundary where driver errors become costguard's own: overload is `StoreBusy`, a
    connection lost mid-request `StoreTimeout` (its outcome unknown), an unreachable server
    `StoreUnavailable`, anything the server answered with `StoreError`."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    message = str(orig if orig is not None else exc).strip()
    text = message.splitlines()[0] if message else type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, sa_exc.TimeoutError):
        return StoreBusy(f"SQL store busy: no pooled connection free in time ({text})")
    if state in _BUSY_STATES or any(part in lowered for part in _BUSY_TEXT):
        return StoreBusy(f"SQL store busy: {text}")
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        if any(part in lowered for part in _NOT_SENT_TEXT):
            return StoreUnavailable(f"SQL store unavailable: {text}")
        return StoreTimeout(f"SQL store connection lost during a request (its outcome is unknown): {text}")
    return StoreError(f"SQL store error: {text}")


def server_answered(exc: BaseException) -> bool:
    """Whether the server itself answered with the error — a lock or statement timeout, a constraint: it
    is alive and taking requests — rather than the connection failing (no SQLSTATE, or class 08), the
    server out of resources (class 53: its connection limit follows `on_store_error` like an outage) or
    going down (57P01-57P05)."""
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and not state.startswith(("08", "53", "57P0"))


def mapped(method: Callable[P, T]) -> Callable[P, T]:
    """Driver errors become costguard's at this one boundary (see `map_error`); an answer — an error the
    server sent included — is noted (`Store.answered_at`)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = method(*args, **kwargs)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            if server_answered(exc):
                args[0].answered_at = time.monotonic()  # type: ignore[attr-defined]
            raise map_error(exc) from exc
        args[0].answered_at = time.monotonic()  # type: ignore[attr-defined]  # the store: it answered
        return result

    return wrapper


@dataclass(frozen=True)
class SQLOptions:
    """A parsed store URL: what SQLAlchemy gets, plus costguard's own options."""

    url: sa.URL
    prefix: str
    sqlite: bool
    timeout_ms: float
    pool_size: int
    max_overflow: int

    @property
    def identity(self) -> str:
        """The database and table prefix, the password masked."""
        return f"{redacted(self.url.render_as_string(hide_password=False))}#{self.prefix}"

    def attempt_s(self) -> float:
        """How long this attempt may take: the store timeout, or what is left of the caller's deadline."""
        return dl.remaining_s(self.timeout_ms / 1000)


def open_engine(url: str, *, timeout_ms: float | None, prefix: str | None) -> tuple[SQLOptions, Engine]:
    """The URL's options and an engine for them; `ConfigError` (the password never shown) when either is wrong.

    Nothing connects yet: the first call does.
    """
    try:
        options = _parse(url, timeout_ms, prefix)
        return options, _sqlite_engine(options) if options.sqlite else _postgres_engine(options)
    except (sa_exc.ArgumentError, ValueError, ImportError) as exc:
        raise _cannot_open(url, exc) from None


def check_url(url: str) -> None:
    """`ConfigError` for a URL `open_engine` would refuse (`check-config`): nothing connects, no driver loads."""
    try:
        _parse(url, None, None)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise _cannot_open(url, exc) from None


def _cannot_open(url: str, exc: Exception) -> ConfigError:
    hint = ' (pip install "costguard-ai[postgres]")' if isinstance(exc, ImportError) else ""
    return ConfigError(
        f"cannot open SQL store {redacted(url)!r}: {_without_secrets(str(exc), url)}{hint}", path="store"
    )


def _parse(url: str, timeout_ms: float | None, prefix: str | None) -> SQLOptions:
    """Parse the URL and take costguard's own query options (`timeout_ms`, `prefix`, pool sizes) out of it;
    keyword arguments win over the query string."""
    parsed = sa.make_url(url)
    names = ("timeout_ms", "prefix", "pool_size", "max_overflow")
    ours = {name: str(parsed.query[name]) for name in names if name in parsed.query}
    parsed = parsed.difference_update_query(list(ours))
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    prefix = prefix or ours.get("prefix", "costguard_")
    if not PREFIX.fullmatch(prefix):
        raise ValueError(f"table prefix {prefix!r} is not valid: use letters, digits and '_', starting with a letter")
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            "an in-memory SQLite database lives and dies with one connection; use memory:// for an "
            "in-process store, or a file: sqlite:///costguard.db"
        )
    timeout = float(timeout_ms if timeout_ms is not None else ours.get("timeout_ms", 2000.0))
    if not timeout > 0:
        raise ValueError(f"timeout_ms must be more than 0, got {timeout:g}")
    # Connections per process: `pool_size` kept open, up to `max_overflow` more under load.
    # Callers beyond them queue in this process, first come first served, within their
    # deadline: on one hot counter more connections only make more server processes wait
    # for its row lock, and every overflow connection opened and closed costs a backend.
    pool_size = int(ours.get("pool_size", 4))
    max_overflow = int(ours.get("max_overflow", 0))
    if pool_size < 1 or max_overflow < 0:
        raise ValueError("pool_size must be at least 1 and max_overflow at least 0")
    return SQLOptions(parsed, prefix, sqlite, timeout, pool_size, max_overflow)


def _without_secrets(text: str, url: str) -> str:
    """An error message with the URL's password (and the raw URL) taken out."""
    text = text.replace(url, redacted(url))
    try:
        password = sa.make_url(url).password
    except (sa_exc.ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


def _sqlite_engine(options: SQLOptions) -> Engine:
    engine = sa.create_engine(
        options.url,
        connect_args={"timeout": options.timeout_ms / 1000, "check_same_thread": False},
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.timeout_ms / 1000,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        # SQLite's own busy handler sleeps longer the longer it waits (up to 100 ms between
        # polls), so a process that has waited a while loses the file lock to every newcomer.
        # It waits briefly here; `_on_begin` polls again until the deadline, every process alike.
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # WAL is a property of the file: switch once. The switch doesn't wait on the busy
        # handler when another connection opens the new file at the same moment, so retry.
        deadline = time.monotonic() + options.timeout_ms / 1000
        while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front so check-then-write can't interleave across processes.
        if conn.get_execution_options().get("costguard_read", False):
            conn.exec_driver_sql("BEGIN")
            return
        end = time.monotonic() + options.attempt_s()
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except sa_exc.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= end:
                    raise
            time.sleep(random.uniform(0, 0.001))  # noqa: S311 - jitter, not a secret

    return engine


def _postgres_engine(options: SQLOptions) -> Engine:
    engine = sa.create_engine(
        options.url,
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.timeout_ms / 1000,
        # No pre-ping: it costs a round trip per transaction. A connection that died with the
        # server fails one call (StoreUnavailable, handled by on_store_error) and the pool is
        # invalidated, so the next call reconnects; `pool_recycle` retires idle ones first.
        pool_recycle=1800,
        connect_args={
            # libpq counts whole seconds and treats anything under 2 as 2.
            "connect_timeout": max(2, int(options.timeout_ms / 1000 + 0.999)),
            "options": f"-c statement_timeout={int(options.timeout_ms)} -c lock_timeout={int(options.timeout_ms)}",
            # A partitioned network: data unacknowledged this long drops the connection (so the
            # call fails and follows on_store_error) instead of waiting for TCP's minutes.
            "tcp_user_timeout": max(1000, 2 * int(options.timeout_ms)),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    )

    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return connect_within(lambda: dialect.loaded_dbapi.connect(*cargs, **cparams), options.attempt_s())

    return engine


def connect_within(connect: Callable[[], Any], seconds: float) -> Any:
    """A new connection, or `OperationalError` after `seconds`: libpq's own connect timeout is whole
    seconds, at least 2, and a frozen server accepts the TCP connection and then never answers. The
    attempt goes on in its thread; a connection it makes after we gave up is closed."""
    import psycopg

    done = threading.Event()
    outcome: list[Any] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            made: Any = connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            made = exc
        with lock:
            if done.is_set() and not isinstance(made, BaseException):
                made.close()  # the caller gave up: nobody will use it
                return
            outcome.append(made)
            done.set()

    threading.Thread(target=attempt, name="costguard-connect", daemon=True).start()
    if not done.wait(seconds):
        with lock:
            if not outcome:
                done.set()
                raise psycopg.OperationalError(f"connection timed out: no answer within {seconds * 1000:.0f} ms")
    made = outcome[0]
    if isinstance(made, BaseException):
        raise made
    return made
