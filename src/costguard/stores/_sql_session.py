"""The SQL store's sessions, each within the caller's deadline: fair queues for this process's
connections (and SQLite's writers), a watch that cuts off a server that stopped answering, write
transactions, reads, PostgreSQL's autocommit server-function calls, and the statement cache.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from costguard.errors import StoreBusy
from costguard.stores._sql_conn import SQLOptions
from costguard.stores._sql_schema import Schema
from costguard.stores._watchdog import watch

__all__ = ["FairGate", "Sessions"]


def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error


class FairGate:
    """At most `permits` holders, handed to waiters in the order they asked. Python's own locks (and
    SQLAlchemy's pool) let a releasing thread take the slot straight back, so under a burst some
    threads of a process would wait past their deadline while others go round again."""

    def __init__(self, permits: int) -> None:
        self._lock = threading.Lock()
        self._free = permits
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():
                return True  # handed over just as the wait ended
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # handed over: the slot stays taken
            else:
                self._free += 1

    @contextmanager
    def slot(self, timeout: float, what: str) -> Iterator[None]:
        """Hold a slot for the block; `StoreBusy` when none comes free within `timeout`."""
        if not self.acquire(timeout):
            raise StoreBusy(f"SQL store busy: no {what} free within {timeout * 1000:.0f} ms")
        try:
            yield
        finally:
            self.release()


class Sessions:
    """Connections to one database, handed out fairly within the deadline; the schema installed first."""

    def __init__(self, options: SQLOptions, engine: Engine, schema: Schema) -> None:
        self.options = options
        self.engine = engine
        self.schema = schema
        self.sqlite = options.sqlite
        # SQLite writers of a process queue here, one at a time, so only one of its connections
        # contends for the file lock.
        self._writers: FairGate | None = FairGate(1) if options.sqlite else None
        self._slots = FairGate(options.pool_size + options.max_overflow)
        # Reserve and settle on PostgreSQL: one statement each, committed by itself.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._statements: dict[str, sa.TextClause] = {}
        self._calls: dict[str, str] = {}
        self._driver_error: type[Exception] = Exception if options.sqlite else _psycopg_error()

    @contextmanager
    def _watched(self, conn: Connection) -> Iterator[Connection]:
        """Shut the connection's socket down if the server hasn't answered by the deadline (a frozen
        server still acknowledges packets, so no server-side or TCP timeout would end the wait)."""
        if self.sqlite:
            yield conn
            return
        raw = conn.connection.dbapi_connection
        fd = getattr(getattr(raw, "pgconn", None), "socket", None)
        with watch(fd, self.options.attempt_s() + 0.05):
            yield conn

    @contextmanager
    def _install(self) -> Iterator[Connection]:
        """The schema's own transaction (no slot: it runs once, before the first session)."""
        with self.engine.begin() as conn, self._watched(conn):
            yield conn

    def ensure_schema(self) -> None:
        self.schema.ensure(self._install)

    def drop_schema(self) -> None:
        self.schema.drop(self.engine.begin)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction (on SQLite `BEGIN IMMEDIATE`, one writer of this process at a time)."""
        self.ensure_schema()
        attempt_s = self.options.attempt_s
        if self._writers is None:
            with self._slots.slot(attempt_s(), "connection"), self.engine.begin() as conn, self._watched(conn):
                yield conn
            return
        with (
            self._writers.slot(attempt_s(), "write slot"),
            self._slots.slot(attempt_s(), "connection"),
            self.engine.begin() as conn,
        ):
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (on SQLite a plain `BEGIN`: it doesn't queue behind writers)."""
        self.ensure_schema()
        with self._slots.slot(self.options.attempt_s(), "connection"), self.engine.connect() as raw:
            conn = raw.execution_options(costguard_read=True)
            with conn.begin(), self._watched(conn):
                yield conn

    def call(self, function: str, doc: str) -> Any:
        """One server function call in autocommit, `doc` its JSON argument: one round trip, made on the
        pooled driver connection itself (a hot feature's calls are mostly this; SQLAlchemy's execution
        layer would cost more client CPU than the server spends on the call).

        Its wait for a row lock ends with nine tenths of the attempt's time (`lock_timeout` for the
        statement alone): on a hot row the server itself answers "lock timeout" — nothing applied, the
        connection kept, the store evidently alive — before the watchdog would have to cut the
        connection, which leaves the outcome unknown and costs the overloaded server a new session."""
        self.ensure_schema()
        sql = self._calls.get(function)
        if sql is None:
            sql = self._calls[function] = (
                "WITH t AS MATERIALIZED (SELECT set_config('lock_timeout', %s, true)) "
                f"SELECT {self.options.prefix}{function}(%s::jsonb) FROM t"
            )
        attempt_s = self.options.attempt_s
        with self._slots.slot(attempt_s(), "connection"):
            try:
                fairy = self.engine.raw_connection()
            except self._driver_error as exc:  # never connected: nothing was sent
                raise sa_exc.DBAPIError.instance(sql, None, exc, self._driver_error) from exc
            driver: Any = fairy.driver_connection
            watched = None
            try:
                with watch(driver.pgconn.socket, attempt_s() + 0.05) as watched:
                    driver.autocommit = True
                    try:
                        lock_ms = str(max(1, int(attempt_s() * 900)))
                        row = driver.execute(sql, (lock_ms, doc), prepare=True).fetchone()
                    finally:
                        if not driver.closed and not driver.broken:
                            driver.autocommit = False
            except self._driver_error as exc:
                raise self._wrapped(fairy, sql, exc, cut=watched is not None and watched.fired) from exc
            finally:
                fairy.close()
        result = row[0]
        return result if isinstance(result, (dict, list)) else json.loads(result)

    def _wrapped(self, fairy: Any, sql: str, exc: Exception, *, cut: bool) -> sa_exc.DBAPIError:
        """The driver's error as SQLAlchemy's (which `mapped` turns into costguard's); a connection that
        died takes the pool's other connections with it, as the engine itself would do — unless the
        watchdog cut it (`cut`): a slow reply says nothing about the others, and reconnecting them all
        would load an overloaded server with a burst of new sessions."""
        driver = fairy.driver_connection
        lost = bool(
            driver is None
            or driver.closed
            or driver.broken
            or self.engine.dialect.is_disconnect(cast("Any", exc), driver, None)
        )
        if lost:
            fairy.invalidate(exc)
            if not cut:
                self.engine.pool._invalidate(fairy, exc, _checkin=False)  # what Connection does on a disconnect
        wrapped = sa_exc.DBAPIError.instance(sql, None, exc, self._driver_error, connection_invalidated=lost)
        return cast("sa_exc.DBAPIError", wrapped)

    def statement(self, name: str, build: Callable[[], str]) -> sa.TextClause:
        """A raw statement of this store's tables, built once (its text is constant, so the driver
        prepares it once too)."""
        stmt = self._statements.get(name)
        if stmt is None:
            stmt = self._statements[name] = sa.text(build())
        return stmt
