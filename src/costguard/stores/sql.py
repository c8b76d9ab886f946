"""`sqlite:///…` and `postgresql+psycopg://…` on SQLAlchemy Core.

PostgreSQL: a reserve and a settle are each one statement in autocommit, a call of a server
function installed with the schema (`pg/functions.sql`) that locks the counter rows in key order,
checks them exactly as the engine's pure `evaluate_reserve` does, and writes the totals, the
reservation and the audit record — so a hot counter row is locked for the microseconds the
function runs, never across the client's round trips (a client starved of CPU can't hold a lock).
`settle_many` settles a whole batch in one transaction of three statements.

SQLite: each reserve or settle is one `BEGIN IMMEDIATE` transaction that runs the engine's steps
in Python; the file lock serializes writers across processes.

The schema is created on first use, not when the store is opened, so a cold start with the
database down follows `on_store_error` instead of raising.
"""

from __future__ import annotations

import functools
import json
import random
import re
import sqlite3
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from costguard import deadline as dl
from costguard.engine import (
    EXPIRY_GRACE_S,
    CommitOutcome,
    CounterOp,
    Crossing,
    LimitOverride,
    ReserveOutcome,
    ReservePlan,
    all_expired,
    claim_crossings,
    clear_previous,
    crossings_from,
    evaluate_reserve,
    fired_name,
    op_from_json,
    op_to_json,
    reserve_record,
    settle_deltas,
)
from costguard.errors import ConfigError, StoreBusy, StoreError, StoreTimeout, StoreUnavailable
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope
from costguard.stores._watchdog import watch
from costguard.stores.base import Control, CounterRow, KillSwitchState, Store, redacted

__all__ = ["SQLStore", "map_error"]

# INSERT … ON CONFLICT DO NOTHING RETURNING arrived in SQLite 3.35.
_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

P = ParamSpec("P")
T = TypeVar("T")

_SETTLED_KEEP_S = 86400.0
_SQLITE_BUSY_MS = 10
_OPEN_KEEP_S = EXPIRY_GRACE_S  # as on Redis: an open reservation lives max(2 days, its longest counter)
_COUNTER_FIELDS = ("key", "ceiling_id", "scope", "period", "unit", "bucket", "expires_at")
_WRITE_FIELDS = ("key", "committed", "reserved", "fired", "expires_at")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,40}")


def _tables(prefix: str) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    meta = sa.MetaData()
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
    t = {
        "counters": sa.Table(
            f"{prefix}counters",
            meta,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("ceiling_id", sa.Text, nullable=False),
            sa.Column("scope", sa.Text, nullable=False),
            sa.Column("period", sa.String(8), nullable=False),
            sa.Column("unit", sa.String(8), nullable=False),
            sa.Column("bucket", sa.String(40), nullable=False),
            sa.Column("committed", sa.BigInteger, nullable=False),
            sa.Column("reserved", sa.BigInteger, nullable=False),
            sa.Column("fired", sa.Text, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=True),
            sa.Index(f"{prefix}counters_bucket", "period", "bucket"),
            sa.Index(f"{prefix}counters_expiry", "expires_at"),
        ),
        "reservations": sa.Table(
            f"{prefix}reservations",
            meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("settled", sa.Boolean, nullable=False),
            sa.Column("counters", sa.Text, nullable=False),
            sa.Index(f"{prefix}reservations_at", "settled", "at"),
        ),
        "events": sa.Table(
            f"{prefix}events",
            meta,
            sa.Column("id", big, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("decision", sa.String(32), nullable=False),
            sa.Column("feature", sa.Text, nullable=True),
            sa.Column("customer", sa.Text, nullable=True),
            sa.Column("reservation_id", sa.String(64), nullable=True),
            sa.Column("labels", sa.Text, nullable=False),
            sa.Column("data", sa.Text, nullable=False),
            sa.Index(f"{prefix}events_at", "at"),
            sa.Index(f"{prefix}events_feature", "feature", "id"),
        ),
        "control": sa.Table(
            f"{prefix}control",
            meta,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("value", sa.Text, nullable=False),
        ),
        "cache": sa.Table(
            f"{prefix}cache",
            meta,
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("value", sa.LargeBinary, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        ),
    }
    return meta, t


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


def _mapped(method: Callable[P, T]) -> Callable[P, T]:
    """Driver errors become costguard's at this one boundary (see `map_error`)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise map_error(exc) from exc

    return wrapper


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _connect_within(connect: Callable[[], Any], seconds: float) -> Any:
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


def _without_secrets(text: str, url: str) -> str:
    """An error message with the URL's password (and the raw URL) taken out."""
    text = text.replace(url, redacted(url))
    try:
        password = sa.make_url(url).password
    except (sa_exc.ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


class _FairGate:
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


_FUNCTIONS = (
    "reserve(jsonb)",
    "settle(jsonb)",
    "claim(jsonb, bigint, bigint, text[], boolean, integer, jsonb)",
    "shown(bigint, text)",
    "audit(jsonb, integer, jsonb, bigint)",
    "fired_text(text[])",
)


@functools.lru_cache(maxsize=16)
def _functions_sql(prefix: str) -> str:
    """The server functions for a table prefix (validated: letters, digits and `_`)."""
    source = resources.files("costguard.stores").joinpath("pg/functions.sql").read_text("utf-8")
    return source.replace("{p}", prefix)


def _op_row(op: CounterOp) -> list[object]:
    """A counter as a reservation row keeps it: `engine.op_to_json` plus its threshold names (the
    server's settle function claims thresholds by the names the engine gives them)."""
    return [*op_to_json(op), [fired_name(t) for t, _ in op.levels]]


def _op_doc(op: CounterOp) -> dict[str, Any]:
    """A counter as the server's reserve function takes it."""
    return {
        "key": op.key,
        "ceiling_id": op.ceiling_id,
        "scope": _dumps([list(item) for item in op.scope]),
        "period": op.period.value,
        "unit": op.unit.value,
        "bucket": op.bucket,
        "amount": op.amount,
        "limit": op.limit,
        "hard": op.hard,
        "levels": [[fired_name(t), level, t >= 1.0] for t, level in op.levels],
        "expires_at": op.expires_at,
        "previous_key": op.previous_key,
        "counts_new": op.counts_new + 1,  # from 1, as the function counts; 0: an ordinary counter
    }


def _record_row(record: AuditRecord) -> dict[str, Any]:
    """An audit record as a row of the events table."""
    return {
        "at": record.at,
        "decision": record.decision,
        "feature": record.labels.get("feature"),
        "customer": record.labels.get("customer"),
        "reservation_id": record.reservation_id,
        "labels": _dumps(dict(record.labels)),
        "data": _dumps(dict(record.data)),
    }


def _parse_url(url: str) -> tuple[sa.URL, dict[str, str]]:
    """Parse the URL and take costguard's own query options (`timeout_ms`, `prefix`, pool sizes) out of it."""
    parsed = sa.make_url(url)
    names = ("timeout_ms", "prefix", "pool_size", "max_overflow")
    ours = {name: str(parsed.query[name]) for name in names if name in parsed.query}
    parsed = parsed.difference_update_query(list(ours))
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed, ours


class SQLStore(Store):
    """The SQL store. `timeout_ms`: how long one attempt may take — a statement, SQLite's lock wait, the
    wait for a pooled connection (default: the guard's `store_deadline_ms`, else 2 s). `pool_size` and
    `max_overflow` bound this process's connections (4 + 4 by default; processes x both <= the server's
    `max_connections`)."""

    def __init__(self, url: str, *, timeout_ms: float | None = None, prefix: str | None = None) -> None:
        self.url = redacted(url)  # shown in reprs and messages: never the password
        try:
            sa_url, opts = _parse_url(url)
            self.prefix = prefix or opts.get("prefix", "costguard_")
            if not _PREFIX.fullmatch(self.prefix):
                raise ValueError(
                    f"table prefix {self.prefix!r} is not valid: use letters, digits and '_', starting with a letter"
                )
            self.sqlite = sa_url.get_backend_name() == "sqlite"
            if self.sqlite and sa_url.database in (None, "", ":memory:"):
                raise ValueError(
                    "an in-memory SQLite database lives and dies with one connection; use memory:// for an "
                    "in-process store, or a file: sqlite:///costguard.db"
                )
            self._returning = not self.sqlite or _SQLITE_RETURNING
            # SQLite writers of a process queue here, one at a time, so only one of its connections
            # contends for the file lock.
            self._writers: _FairGate | None = _FairGate(1) if self.sqlite else None
            self.timeout_ms = float(timeout_ms if timeout_ms is not None else opts.get("timeout_ms", 2000.0))
            if not self.timeout_ms > 0:
                raise ValueError(f"timeout_ms must be more than 0, got {self.timeout_ms:g}")
            # Connections per process: `pool_size` kept open, up to `max_overflow` more under load.
            # Callers beyond them queue in this process, first come first served, within their
            # deadline: on one hot counter more connections only make more server processes wait
            # for its row lock, and every overflow connection opened and closed costs a backend.
            self.pool_size = int(opts.get("pool_size", 4))
            self.max_overflow = int(opts.get("max_overflow", 0))
            if self.pool_size < 1 or self.max_overflow < 0:
                raise ValueError("pool_size must be at least 1 and max_overflow at least 0")
            self._slots = _FairGate(self.pool_size + self.max_overflow)
            self._identity = f"{redacted(sa_url.render_as_string(hide_password=False))}#{self.prefix}"
            self.engine = self._create_engine(sa_url)
            # Reserve and settle on PostgreSQL: one statement each, committed by itself.
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        except (sa_exc.ArgumentError, ValueError, ImportError) as exc:
            hint = ' (pip install "costguard-ai[postgres]")' if isinstance(exc, ImportError) else ""
            raise ConfigError(
                f"cannot open SQL store {redacted(url)!r}: {_without_secrets(str(exc), url)}{hint}", path="store"
            ) from None
        self.meta, self.t = _tables(self.prefix)
        self._statements: dict[str, sa.TextClause] = {}
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    @property
    def identity(self) -> str:
        return self._identity

    def _create_engine(self, sa_url: sa.URL) -> Engine:
        if self.sqlite:
            engine = sa.create_engine(
                sa_url,
                connect_args={"timeout": self.timeout_ms / 1000, "check_same_thread": False},
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
                pool_timeout=self.timeout_ms / 1000,
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
                deadline = time.monotonic() + self.timeout_ms / 1000
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
                end = time.monotonic() + self._attempt_s()
                while True:
                    try:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                        return
                    except sa_exc.OperationalError as exc:
                        if "locked" not in str(exc) or time.monotonic() >= end:
                            raise
                    time.sleep(random.uniform(0, 0.001))  # noqa: S311 - jitter, not a secret

            return engine
        engine = sa.create_engine(
            sa_url,
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            pool_timeout=self.timeout_ms / 1000,
            # No pre-ping: it costs a round trip per transaction. A connection that died with the
            # server fails one call (StoreUnavailable, handled by on_store_error) and the pool is
            # invalidated, so the next call reconnects; `pool_recycle` retires idle ones first.
            pool_recycle=1800,
            connect_args={
                # libpq counts whole seconds and treats anything under 2 as 2.
                "connect_timeout": max(2, int(self.timeout_ms / 1000 + 0.999)),
                "options": f"-c statement_timeout={int(self.timeout_ms)} -c lock_timeout={int(self.timeout_ms)}",
                # A partitioned network: data unacknowledged this long drops the connection (so the
                # call fails and follows on_store_error) instead of waiting for TCP's minutes.
                "tcp_user_timeout": max(1000, 2 * int(self.timeout_ms)),
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )

        @sa.event.listens_for(engine, "do_connect")
        def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            return _connect_within(lambda: dialect.loaded_dbapi.connect(*cargs, **cparams), self._attempt_s())

        return engine

    def _attempt_s(self) -> float:
        """How long this attempt may take: the store timeout, or what is left of the caller's deadline."""
        return dl.remaining_s(self.timeout_ms / 1000)

    @contextmanager
    def _watched(self, conn: Connection) -> Iterator[Connection]:
        """Shut the connection's socket down if the server hasn't answered by the deadline (a frozen
        server still acknowledges packets, so no server-side or TCP timeout would end the wait)."""
        if self.sqlite:
            yield conn
            return
        raw = conn.connection.dbapi_connection
        fd = getattr(getattr(raw, "pgconn", None), "socket", None)
        with watch(fd, self._attempt_s() + 0.05):
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        self._ensure_schema()
        if self._writers is None:
            with self._slots.slot(self._attempt_s(), "connection"), self.engine.begin() as conn, self._watched(conn):
                yield conn
            return
        with (
            self._writers.slot(self._attempt_s(), "write slot"),
            self._slots.slot(self._attempt_s(), "connection"),
            self.engine.begin() as conn,
        ):
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure_schema()
        with self._slots.slot(self._attempt_s(), "connection"), self.engine.connect() as raw:
            conn = raw.execution_options(costguard_read=True)
            with conn.begin(), self._watched(conn):
                yield conn

    def _call(self, function: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """One server function call in autocommit: one round trip."""
        self._ensure_schema()
        stmt = self._statement(f"call:{function}", lambda: f"SELECT {self.prefix}{function}(CAST(:doc AS jsonb))")
        params = {"doc": _dumps(doc)}
        with (
            self._slots.slot(self._attempt_s(), "connection"),
            self._autocommit.connect() as conn,
            self._watched(conn),
        ):
            result = conn.execute(stmt, params).scalar_one()
        return result if isinstance(result, dict) else json.loads(result)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            with self._schema_lock:
                if not self._schema_ready:
                    self._create_schema()
                    self._schema_ready = True

    def _create_schema(self) -> None:
        with self.engine.begin() as conn, self._watched(conn):
            if not self.sqlite:
                # Several processes may start at once; one creates, the others wait here.
                lock_id = zlib.crc32(self.prefix.encode()) & 0x7FFFFFFF
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            self.meta.create_all(conn, checkfirst=True)
            if not self.sqlite:
                conn.exec_driver_sql(_functions_sql(self.prefix))

    def _insert(self, table: sa.Table) -> Any:
        if self.sqlite:
            return sqlite_insert(table)
        return postgresql_insert(table)

    def _statement(self, name: str, build: Callable[[], str]) -> sa.TextClause:
        """A raw statement of this store's tables, built once (its text is constant, so the driver
        prepares it once too)."""
        stmt = self._statements.get(name)
        if stmt is None:
            stmt = self._statements[name] = sa.text(build())
        return stmt

    def _lock_counters(
        self, conn: Connection, ops: Sequence[CounterOp], created: set[str] | None = None
    ) -> dict[str, tuple[int, int, set[str]]]:
        """Create missing counter rows (their keys added to `created`), then lock and read them in key order.

        The counters travel as one JSON parameter, so this is one statement on PostgreSQL (an upsert
        whose conflict branch locks the existing row and `xmax = 0` tells a new one) and two on SQLite
        (whose writer already holds the database lock), whatever the number of counters.
        """
        ordered = sorted(ops, key=lambda o: o.key)
        rows = _dumps(
            [
                {
                    "key": op.key,
                    "ceiling_id": op.ceiling_id,
                    "scope": _dumps([list(item) for item in op.scope]),
                    "period": op.period.value,
                    "unit": op.unit.value,
                    "bucket": op.bucket,
                    "expires_at": op.expires_at,
                }
                for op in ordered
            ]
        )
        if not self.sqlite:
            result = conn.execute(self._statement("lock", self._pg_lock_sql), {"rows": rows})
            state = {}
            for row in result:
                state[row.key] = (int(row.committed), int(row.reserved), set(filter(None, row.fired.split(","))))
                if row.created and created is not None:
                    created.add(row.key)
            return state
        returned = conn.execute(self._statement("create", self._sqlite_create_sql), {"rows": rows})
        if created is not None and self._returning:
            created.update(row.key for row in returned)
        result = conn.execute(
            self._statement("read", self._sqlite_read_sql), {"keys": _dumps([op.key for op in ordered])}
        )
        state = {
            row.key: (int(row.committed), int(row.reserved), set(filter(None, row.fired.split(",")))) for row in result
        }
        if created is not None and not self._returning:
            # Without INSERT … RETURNING a counter untouched so far stands in for a new one.
            created.update(key for key, (done, held, fired) in state.items() if not (done or held or fired))
        return state

    def _pg_lock_sql(self) -> str:
        c = self.t["counters"].name
        return (
            f"INSERT INTO {c} AS c (key, ceiling_id, scope, period, unit, bucket, committed, reserved, fired, "
            "expires_at) SELECT v.key, v.ceiling_id, v.scope, v.period, v.unit, v.bucket, 0, 0, '', v.expires_at "
            "FROM json_to_recordset(CAST(:rows AS json)) AS v(key text, ceiling_id text, scope text, period text, "
            "unit text, bucket text, expires_at float8) "
            # the conflict branch writes nothing new; it is there to lock the row and return it
            "ON CONFLICT (key) DO UPDATE SET committed = c.committed "
            "RETURNING c.key, c.committed, c.reserved, c.fired, (c.xmax = 0) AS created"
        )

    def _sqlite_create_sql(self) -> str:
        c = self.t["counters"].name
        values = ", ".join(f"json_extract(value, '$.{name}')" for name in _COUNTER_FIELDS)
        sql = (
            f"INSERT INTO {c} (key, ceiling_id, scope, period, unit, bucket, expires_at, committed, reserved, fired) "
            f"SELECT {values}, 0, 0, '' FROM json_each(:rows) WHERE true ON CONFLICT (key) DO NOTHING"
        )
        return sql + " RETURNING key" if self._returning else sql

    def _sqlite_read_sql(self) -> str:
        c = self.t["counters"].name
        return (
            f"SELECT key, committed, reserved, fired FROM {c} "
            "WHERE key IN (SELECT value FROM json_each(:keys)) ORDER BY key"
        )

    def _write(
        self,
        conn: Connection,
        counters: Sequence[tuple[str, int, int, str, float | None]],
        records: Sequence[AuditRecord],
        reservation: dict[str, Any] | None = None,
    ) -> None:
        """New counter values, a new reservation row and audit records: one statement on PostgreSQL."""
        params: dict[str, Any] = {}
        parts = []
        if counters:
            params["counters"] = _dumps([dict(zip(_WRITE_FIELDS, row, strict=True)) for row in counters])
            parts.append("w")
        if reservation is not None:
            params.update(reservation)
            parts.append("r")
        if records:
            params["records"] = _dumps([_record_row(r) for r in records])
            parts.append("e")
        if not parts:
            return
        if not self.sqlite:
            name = "write:" + "".join(parts)
            conn.execute(self._statement(name, lambda: self._pg_write_sql(parts)), params)
            return
        if counters and _SQLITE_UPDATE_FROM:
            conn.execute(self._statement("write:w", lambda: self._sqlite_write_sql("w")), params)
        elif counters:  # SQLite before 3.33 has no UPDATE … FROM
            c = self.t["counters"].name
            update = self._statement(
                "write:w-each",
                lambda: (
                    f"UPDATE {c} SET committed = :committed, reserved = :reserved, fired = :fired, "
                    "expires_at = :expires_at WHERE key = :key"
                ),
            )
            conn.execute(update, [dict(zip(_WRITE_FIELDS, row, strict=True)) for row in counters])
        if reservation is not None:
            conn.execute(self._statement("write:r", lambda: self._sqlite_write_sql("r")), params)
        if records:
            conn.execute(self._statement("write:e", lambda: self._sqlite_write_sql("e")), params)

    def _pg_write_sql(self, parts: Sequence[str]) -> str:
        c, r, e = self.t["counters"].name, self.t["reservations"].name, self.t["events"].name
        statements = {
            "w": f"UPDATE {c} AS c SET committed = v.committed, reserved = v.reserved, fired = v.fired, "
            "expires_at = v.expires_at FROM json_to_recordset(CAST(:counters AS json)) "
            "AS v(key text, committed bigint, reserved bigint, fired text, expires_at float8) WHERE c.key = v.key",
            "r": f"INSERT INTO {r} (id, at, settled, counters) VALUES (:r_id, :r_at, false, :r_counters)",
            "e": f"INSERT INTO {e} (at, decision, feature, customer, reservation_id, labels, data) "
            "SELECT v.at, v.decision, v.feature, v.customer, v.reservation_id, v.labels, v.data "
            "FROM json_to_recordset(CAST(:records AS json)) AS v(at float8, decision text, feature text, "
            "customer text, reservation_id text, labels text, data text)",
        }
        *first, last = [statements[part] for part in parts]
        if not first:
            return last
        # Data-modifying WITH parts always run to completion, whether or not the main statement reads them.
        return "WITH " + ", ".join(f"s{i} AS ({sql} RETURNING 1)" for i, sql in enumerate(first)) + " " + last

    def _sqlite_write_sql(self, part: str) -> str:
        c, r, e = self.t["counters"].name, self.t["reservations"].name, self.t["events"].name
        if part == "w":
            field = "json_extract(v.value, '$.{}')".format
            return (
                f"UPDATE {c} SET committed = {field('committed')}, reserved = {field('reserved')}, "
                f"fired = {field('fired')}, expires_at = {field('expires_at')} "
                f"FROM json_each(:counters) AS v WHERE {c}.key = {field('key')}"
            )
        if part == "r":
            return f"INSERT INTO {r} (id, at, settled, counters) VALUES (:r_id, :r_at, 0, :r_counters)"
        values = ", ".join(
            f"json_extract(value, '$.{name}')"
            for name in ("at", "decision", "feature", "customer", "reservation_id", "labels", "data")
        )
        return (
            f"INSERT INTO {e} (at, decision, feature, customer, reservation_id, labels, data) "
            f"SELECT {values} FROM json_each(:records)"
        )

    def _clear_previous(self, conn: Connection, ops: Sequence[CounterOp]) -> list[Crossing]:
        """Counters this transaction created: clear a kill their previous period claimed (once)."""
        by_previous = {op.previous_key: op for op in ops if op.previous_key is not None}
        if not by_previous:
            return []
        c = self.t["counters"]
        rows = conn.execute(
            sa.select(c.c.key, c.c.committed, c.c.reserved, c.c.fired)
            .where(c.c.key.in_(sorted(by_previous)))
            .order_by(c.c.key)
            .with_for_update()
        )
        out: list[Crossing] = []
        for row in rows:
            fired = set(filter(None, row.fired.split(",")))
            claimed = clear_previous(by_previous[row.key], int(row.committed) + int(row.reserved), fired)
            if claimed:
                conn.execute(sa.update(c).where(c.c.key == row.key).values(fired=",".join(sorted(fired))))
                out.extend(claimed)
        return out

    @_mapped
    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        if not self.sqlite:
            return self._pg_reserve(plan, record)
        r = self.t["reservations"]
        with self._tx() as conn:
            if conn.execute(sa.select(r.c.id).where(r.c.id == plan.reservation_id)).first():
                # Asked again (a lost reply, a spooled cost written twice) or released before it came:
                # the first outcome stands and nothing changes.
                if plan.force:
                    return ReserveOutcome(True, ())
                return ReserveOutcome(True, tuple(self._totals(conn, [op.key for op in plan.counters])))
            writes: list[tuple[str, int, int, str, float | None]] = []
            if not plan.counters:
                outcome = ReserveOutcome(True, ())
            else:
                created: set[str] = set()
                state = self._lock_counters(conn, plan.counters, created)
                cleared = self._clear_previous(conn, [op for op in plan.counters if op.key in created])
                current = [state[op.key] for op in plan.counters]
                fired = [set(s[2]) for s in current]
                new = [op.key in created for op in plan.counters]
                outcome = evaluate_reserve(plan, [s[0] + s[1] for s in current], fired, new)
                if cleared:
                    outcome = replace(outcome, crossings=(*cleared, *outcome.crossings))
                added = outcome.amounts if outcome.allowed else (0,) * len(plan.counters)
                writes = [
                    (
                        op.key,
                        committed + (amount if op.counts_new >= 0 else 0),  # a registry counts for good
                        reserved + (amount if op.counts_new < 0 else 0),
                        ",".join(sorted(claimed)),
                        op.expires_at,
                    )
                    for op, (committed, reserved, before), claimed, amount in zip(
                        plan.counters, current, fired, added, strict=True
                    )
                    if outcome.allowed or claimed != before
                ]
                if not outcome.allowed:
                    # A refusal leaves no counter behind but the one that refused (its kill is claimed there).
                    self._drop_created(
                        conn, [op.key for i, op in enumerate(plan.counters) if new[i] and i != outcome.blocked]
                    )
            reservation = (
                {
                    "r_id": plan.reservation_id,
                    "r_at": plan.at,
                    "r_counters": _dumps([_op_row(op) for op in plan.settled_counters]),
                }
                if outcome.allowed
                else None
            )
            self._write(conn, writes, [reserve_record(plan, outcome, record)] if record else [], reservation)
            return outcome

    def _drop_created(self, conn: Connection, keys: Sequence[str]) -> None:
        if keys:
            c = self.t["counters"]
            conn.execute(sa.delete(c).where(c.c.key.in_(list(keys))))

    def _pg_reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        reply = self._call(
            "reserve",
            {
                "id": plan.reservation_id,
                "at": plan.at,
                "force": plan.force,
                "ops": _dumps([_op_row(op) for op in plan.settled_counters]),
                "record": None if record is None else _record_row(record),
                "counters": [_op_doc(op) for op in plan.counters],
            },
        )
        blocked = int(reply["blocked"])
        return ReserveOutcome(
            bool(reply["allowed"]),
            tuple(int(total) for total in reply["totals"]),
            blocked - 1 if blocked else None,
            crossings_from(plan.counters, reply["crossings"]),
        )

    def _pg_settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        reply = self._call(
            "settle",
            {
                "id": reservation_id,
                "at": at,
                "actual": None if actual is None else {unit.value: amount for unit, amount in actual.items()},
                "record": None if record is None else _record_row(record),
            },
        )
        if not reply["applied"]:
            return CommitOutcome(applied=False)
        ops = tuple(op_from_json(item) for item in reply["counters"])
        return CommitOutcome(
            True, ops, tuple(int(total) for total in reply["totals"]), crossings_from(ops, reply["crossings"])
        )

    @_mapped
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        if not self.sqlite:
            return self._pg_settle(reservation_id, actual, at, record)
        r = self.t["reservations"]
        with self._tx() as conn:
            if self._returning:
                # Claims the reservation (a second settle finds it settled and changes nothing) and locks it.
                claim = self._statement(
                    "claim",
                    lambda: (
                        f"UPDATE {r.name} SET settled = :yes, at = :at WHERE id = :id AND settled = :no "
                        "RETURNING counters"
                    ),
                )
                row = conn.execute(claim, {"id": reservation_id, "at": at, "yes": True, "no": False}).first()
                if row is None:
                    self._tombstone(conn, reservation_id, actual, at)
                    return CommitOutcome(applied=False)
            else:
                row = conn.execute(
                    sa.select(r.c.counters, r.c.settled).where(r.c.id == reservation_id).with_for_update()
                ).first()
                if row is None or row.settled:
                    if row is None:
                        self._tombstone(conn, reservation_id, actual, at)
                    return CommitOutcome(applied=False)
                conn.execute(sa.update(r).where(r.c.id == reservation_id).values(settled=True, at=at))
            ops = tuple(op_from_json(item) for item in json.loads(row.counters))
            totals: list[int] = []
            crossings: list[Crossing] = []
            writes = []
            if ops:
                state = self._lock_counters(conn, ops)
                for op, (d_reserved, d_committed) in zip(ops, settle_deltas(ops, actual), strict=True):
                    committed, reserved, fired = state[op.key]
                    committed += d_committed
                    reserved += d_reserved
                    totals.append(committed + reserved)
                    crossings.extend(claim_crossings(op, committed + reserved, fired))
                    writes.append((op.key, committed, reserved, ",".join(sorted(fired)), op.expires_at))
            self._write(conn, writes, [record] if record else [])
            return CommitOutcome(True, ops, tuple(totals), tuple(crossings))

    def settle_many(
        self, items: Sequence[tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]]
    ) -> list[CommitOutcome | StoreError]:
        """A batch of settles in one transaction: the reservations are claimed with one statement, the
        union of their counters locked in key order with one more, and everything written with a
        third (PostgreSQL) — the same totals and crossings as settling them one by one, in order."""
        if not items:
            return []
        if not self._returning:
            return super().settle_many(items)
        try:
            return list(self._settle_batch(items))
        except StoreError as exc:
            return [exc] * len(items)

    @_mapped
    def _settle_batch(
        self, items: Sequence[tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]]
    ) -> list[CommitOutcome]:
        r = self.t["reservations"]
        first: dict[str, int] = {}
        for index, (reservation_id, *_) in enumerate(items):
            first.setdefault(reservation_id, index)  # the same id twice settles once: the first wins
        claims = _dumps([{"id": items[index][0], "at": items[index][2]} for index in sorted(first.values())])
        out = [CommitOutcome(applied=False)] * len(items)
        with self._tx() as conn:
            if self.sqlite:
                claim_sql = (
                    f"UPDATE {r.name} SET settled = 1, at = json_extract(v.value, '$.at') FROM json_each(:claims) AS v "
                    f"WHERE {r.name}.id = json_extract(v.value, '$.id') AND {r.name}.settled = 0 "
                    f"RETURNING {r.name}.id, {r.name}.counters"
                )
            else:
                claim_sql = (
                    f"UPDATE {r.name} AS r SET settled = true, at = v.at "
                    "FROM json_to_recordset(CAST(:claims AS json)) AS v(id text, at float8) "
                    "WHERE r.id = v.id AND NOT r.settled RETURNING r.id, r.counters"
                )
            claimed = {
                row.id: tuple(op_from_json(item) for item in json.loads(row.counters))
                for row in conn.execute(self._statement("claim_many", lambda: claim_sql), {"claims": claims})
            }
            for reservation_id, actual, at, _ in items:
                if reservation_id not in claimed:
                    self._tombstone(conn, reservation_id, actual, at)
            if not claimed:
                return out
            union: dict[str, CounterOp] = {}
            for ops in claimed.values():
                for op in ops:
                    union[op.key] = op
            state = self._lock_counters(conn, list(union.values())) if union else {}
            expires: dict[str, float | None] = {}
            records: list[AuditRecord] = []
            for index, (reservation_id, actual, _at, record) in enumerate(items):
                if first[reservation_id] != index or reservation_id not in claimed:
                    continue
                ops = claimed[reservation_id]
                totals: list[int] = []
                crossings: list[Crossing] = []
                for op, (d_reserved, d_committed) in zip(ops, settle_deltas(ops, actual), strict=True):
                    committed, reserved, fired = state[op.key]
                    committed += d_committed
                    reserved += d_reserved
                    state[op.key] = (committed, reserved, fired)
                    expires[op.key] = op.expires_at
                    totals.append(committed + reserved)
                    crossings.extend(claim_crossings(op, committed + reserved, fired))
                out[index] = CommitOutcome(True, ops, tuple(totals), tuple(crossings))
                if record is not None:
                    records.append(record)
            writes = [
                (key, committed, reserved, ",".join(sorted(fired)), expires[key])
                for key, (committed, reserved, fired) in sorted(state.items())
                if key in expires
            ]
            self._write(conn, writes, records)
        return out

    def _tombstone(self, conn: Connection, reservation_id: str, actual: Mapping[Unit, int] | None, at: float) -> None:
        """A release of a reservation not stored: a settled row without counters, so a reserve arriving
        late (its outcome was unknown to the guard that gave up on it) changes nothing."""
        if actual is None:
            insert = self._insert(self.t["reservations"]).values(id=reservation_id, at=at, settled=True, counters="[]")
            conn.execute(insert.on_conflict_do_nothing(index_elements=["id"]))

    def _totals(self, conn: Connection, keys: Sequence[str]) -> list[int]:
        c = self.t["counters"]
        found = {
            row.key: int(row.committed) + int(row.reserved)
            for row in conn.execute(sa.select(c.c.key, c.c.committed, c.c.reserved).where(c.c.key.in_(list(keys))))
        }
        return [found.get(key, 0) for key in keys]

    @_mapped
    def totals(self, keys: Sequence[str]) -> list[int]:
        with self._read() as conn:
            return self._totals(conn, keys)

    @_mapped
    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        c = self.t["counters"]
        if not buckets:
            return []
        where = sa.or_(*[sa.and_(c.c.period == p.value, c.c.bucket == b) for p, b in buckets.items()])
        with self._read() as conn:
            return [
                CounterRow(
                    row.key,
                    row.ceiling_id,
                    tuple((str(a), str(b)) for a, b in json.loads(row.scope)),
                    Period(row.period),
                    Unit(row.unit),
                    row.bucket,
                    int(row.committed),
                    int(row.reserved),
                )
                for row in conn.execute(sa.select(c).where(where))
            ]

    @_mapped
    def control(self) -> Control:
        ctl = self.t["control"]
        with self._read() as conn:
            rows = conn.execute(sa.select(ctl.c.kind, ctl.c.value)).all()
        return Control.from_entries((row.kind, json.loads(row.value)) for row in rows)

    def _put_control(self, conn: Connection, key: str, kind: str, value: dict[str, Any] | None) -> bool:
        """Upsert (or with None, delete) a control row; returns whether it existed before."""
        ctl = self.t["control"]
        existed = conn.execute(sa.select(ctl.c.key).where(ctl.c.key == key).with_for_update()).first() is not None
        if value is None:
            conn.execute(sa.delete(ctl).where(ctl.c.key == key))
        elif existed:
            conn.execute(sa.update(ctl).where(ctl.c.key == key).values(value=_dumps(value)))
        else:
            conn.execute(sa.insert(ctl).values(key=key, kind=kind, value=_dumps(value)))
        return existed

    @_mapped
    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        key = "killswitch|" + encode_scope(dict(state.scope))
        value = {
            "scope": [list(item) for item in state.scope],
            "reason": state.reason,
            "actor": state.actor,
            "since": state.since,
        }
        ctl = self.t["control"]
        with self._tx() as conn:
            existed = conn.execute(sa.select(ctl.c.key).where(ctl.c.key == key).with_for_update()).first() is not None
            if existed == active:
                return False  # already in that state: the first activation's reason and time stand
            self._put_control(conn, key, "killswitch", value if active else None)
            self._write(conn, (), [record])
            return True

    @_mapped
    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        key = f"override|{override.scope_key}|{override.period.value}|{override.unit.value}"
        value = {
            "scope": [list(item) for item in override.scope],
            "period": override.period.value,
            "unit": override.unit.value,
            "amount": override.amount,
            "reason": override.reason,
            "actor": override.actor,
            "at": override.at,
        }
        with self._tx() as conn:
            self._put_control(conn, key, "override", None if clear else value)
            self._write(conn, (), [record])

    @_mapped
    def append(self, records: Sequence[AuditRecord]) -> None:
        with self._tx() as conn:
            self._write(conn, (), records)

    @_mapped
    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        e = self.t["events"]
        stmt = sa.select(e).order_by(e.c.id.desc()).limit(query.limit)
        for column, value in (
            (e.c.feature, query.feature),
            (e.c.customer, query.customer),
            (e.c.decision, query.decision),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if query.since is not None:
            stmt = stmt.where(e.c.at >= query.since)
        if query.until is not None:
            stmt = stmt.where(e.c.at < query.until)
        if query.before_id is not None:
            stmt = stmt.where(e.c.id < query.before_id)
        with self._read() as conn:
            return [
                AuditRecord(
                    at=row.at,
                    decision=row.decision,
                    labels=json.loads(row.labels),
                    reservation_id=row.reservation_id,
                    data=json.loads(row.data),
                    id=int(row.id),
                )
                for row in conn.execute(stmt)
            ]

    @_mapped
    def cache_get(self, key: str, now: float) -> bytes | None:
        cache = self.t["cache"]
        with self._read() as conn:
            row = conn.execute(sa.select(cache.c.value).where(cache.c.key == key, cache.c.expires_at > now)).first()
        return None if row is None else bytes(row.value)

    @_mapped
    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        cache = self.t["cache"]
        stmt = self._insert(cache).values(key=key, value=value, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"], set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at}
        )
        with self._tx() as conn:
            conn.execute(stmt)

    @_mapped
    def purge(self, now: float) -> int:
        c, r, cache = self.t["counters"], self.t["reservations"], self.t["cache"]
        with self._tx() as conn:
            removed = conn.execute(sa.delete(c).where(c.c.expires_at < now)).rowcount
            removed += conn.execute(sa.delete(r).where(r.c.settled.is_(True), r.c.at < now - _SETTLED_KEEP_S)).rowcount
            # One never settled (its process died) goes once every counter it touched has expired.
            open_rows = conn.execute(
                sa.select(r.c.id, r.c.counters).where(r.c.settled.is_(False), r.c.at < now - _OPEN_KEEP_S)
            )
            abandoned = [
                row.id
                for row in open_rows
                if all_expired((op_from_json(item) for item in json.loads(row.counters)), now)
            ]
            for start in range(0, len(abandoned), 500):
                removed += conn.execute(sa.delete(r).where(r.c.id.in_(abandoned[start : start + 500]))).rowcount
            removed += conn.execute(sa.delete(cache).where(cache.c.expires_at <= now)).rowcount
        return int(removed)

    def close(self) -> None:
        self.engine.dispose()

    def drop_schema(self) -> None:
        """Remove costguard's tables (and on PostgreSQL its functions) for this prefix: every counter,
        reservation, audit record and setting is gone. For tests and uninstalling."""
        with self.engine.begin() as conn:
            self.meta.drop_all(conn, checkfirst=True)
            if not self.sqlite:
                for signature in _FUNCTIONS:
                    conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {self.prefix}{signature}")
        self._schema_ready = False
