"""`sqlite:///…` and `postgresql+psycopg://…` on SQLAlchemy Core.

Each reserve or settle is one transaction that locks its counter rows in key order (SQLite:
`BEGIN IMMEDIATE`; PostgreSQL: an upsert whose conflict branch locks the row), checks them with the
engine's pure `evaluate_reserve`, and writes the new totals, the reservation and the audit record
together. Counters travel as one JSON parameter, so the number of statements does not grow with
the number of counters: on PostgreSQL a reserve is one locking read and one write, a settle one
claim more; `settle_many` settles a whole batch in one transaction of three statements.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

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
    evaluate_reserve,
    op_from_json,
    op_to_json,
    reserve_record,
    settle_deltas,
)
from costguard.errors import ConfigError, StoreError, StoreUnavailable
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope
from costguard.stores.base import Control, CounterRow, KillSwitchState, Store

__all__ = ["SQLStore"]

# INSERT … ON CONFLICT DO NOTHING RETURNING arrived in SQLite 3.35.
_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

P = ParamSpec("P")
T = TypeVar("T")

_SETTLED_KEEP_S = 86400.0
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


def _mapped(method: Callable[P, T]) -> Callable[P, T]:
    """The one boundary where driver errors become costguard's own."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise StoreUnavailable(f"SQL store unavailable: {exc}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"SQL store connection lost: {exc}") from exc
            raise StoreError(f"SQL store error: {exc}") from exc

    return wrapper


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
    """The SQL store. `timeout_ms`: how long a statement (or SQLite's lock wait) may take."""

    def __init__(self, url: str, *, timeout_ms: float | None = None, prefix: str | None = None) -> None:
        self.url = url
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
            self._write_lock: threading.RLock | None = threading.RLock() if self.sqlite else None
            # SQLite serializes writers on a file lock: a wait is contention, not an outage, so its
            # default wait is long; a network database gets a short statement timeout.
            default_ms = 5000.0 if self.sqlite else 2000.0
            self.timeout_ms = float(timeout_ms if timeout_ms is not None else opts.get("timeout_ms", default_ms))
            # Connections per process: `pool_size` kept open, up to `max_overflow` more under load.
            self.pool_size = int(opts.get("pool_size", 8))
            self.max_overflow = int(opts.get("max_overflow", 64))
            self.engine = self._create_engine(sa_url)
        except (sa_exc.ArgumentError, ValueError, ImportError) as exc:
            hint = ' (pip install "costguard-ai[postgres]")' if isinstance(exc, ImportError) else ""
            raise ConfigError(f"cannot open SQL store {url!r}: {exc}{hint}", path="store") from exc
        self.meta, self.t = _tables(self.prefix)
        self._statements: dict[str, sa.TextClause] = {}
        self._create_schema()

    def _create_engine(self, sa_url: sa.URL) -> Engine:
        if self.sqlite:
            engine = sa.create_engine(
                sa_url,
                connect_args={"timeout": self.timeout_ms / 1000, "check_same_thread": False},
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
            )

            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={int(self.timeout_ms)}")
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
                read_only = conn.get_execution_options().get("costguard_read", False)
                conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

            return engine
        return sa.create_engine(
            sa_url,
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
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

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        # SQLite's busy handler polls with growing sleeps and is not fair: with many threads of one
        # process waiting on the file lock some starve past the timeout. Threads of a process queue
        # on this lock instead, so only one connection per process contends for the file.
        if not self._write_lock.acquire(timeout=self.timeout_ms / 1000):
            raise StoreUnavailable(f"SQL store busy: no write slot within {self.timeout_ms:g} ms")
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            self._write_lock.release()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as raw:
            conn = raw.execution_options(costguard_read=True)
            with conn.begin():
                yield conn

    @_mapped
    def _create_schema(self) -> None:
        with self._tx() as conn:
            if not self.sqlite:
                # Several processes may start at once; one creates, the others wait here.
                lock_id = zlib.crc32(self.prefix.encode()) & 0x7FFFFFFF
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            self.meta.create_all(conn, checkfirst=True)

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
        r = self.t["reservations"]
        with self._tx() as conn:
            if plan.force and conn.execute(sa.select(r.c.id).where(r.c.id == plan.reservation_id)).first():
                return ReserveOutcome(True, ())  # a buffered record written twice counts once
            writes: list[tuple[str, int, int, str, float | None]] = []
            if not plan.counters:
                outcome = ReserveOutcome(True, ())
            else:
                created: set[str] = set()
                state = self._lock_counters(conn, plan.counters, created)
                cleared = self._clear_previous(conn, [op for op in plan.counters if op.key in created])
                current = [state[op.key] for op in plan.counters]
                fired = [set(s[2]) for s in current]
                outcome = evaluate_reserve(plan, [s[0] + s[1] for s in current], fired)
                if cleared:
                    outcome = replace(outcome, crossings=(*cleared, *outcome.crossings))
                writes = [
                    (
                        op.key,
                        committed,
                        reserved + (op.amount if outcome.allowed else 0),
                        ",".join(sorted(claimed)),
                        op.expires_at,
                    )
                    for op, (committed, reserved, before), claimed in zip(plan.counters, current, fired, strict=True)
                    if outcome.allowed or claimed != before
                ]
            reservation = (
                {
                    "r_id": plan.reservation_id,
                    "r_at": plan.at,
                    "r_counters": _dumps([op_to_json(op) for op in plan.counters]),
                }
                if outcome.allowed
                else None
            )
            self._write(conn, writes, [reserve_record(plan, outcome, record)] if record else [], reservation)
            return outcome

    @_mapped
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
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
                    return CommitOutcome(applied=False)
            else:
                row = conn.execute(
                    sa.select(r.c.counters, r.c.settled).where(r.c.id == reservation_id).with_for_update()
                ).first()
                if row is None or row.settled:
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

    @_mapped
    def totals(self, keys: Sequence[str]) -> list[int]:
        c = self.t["counters"]
        with self._read() as conn:
            found = {
                row.key: int(row.committed) + int(row.reserved)
                for row in conn.execute(sa.select(c.c.key, c.c.committed, c.c.reserved).where(c.c.key.in_(list(keys))))
            }
        return [found.get(key, 0) for key in keys]

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
