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

The parts: `_sql_conn` (URL options, engine, error mapping), `_sql_schema` (tables, server
functions), `_sql_session` (connections within the deadline), `_sql_rows` (row steps in a
transaction), `_sql_pg` (the server-function path) and `_sql_tx` (the engine's steps in Python).
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from costguard.engine import (
    EXPIRY_GRACE_S,
    CommitOutcome,
    CounterOp,
    LimitOverride,
    ReserveOutcome,
    ReservePlan,
    all_expired,
    op_from_json,
)
from costguard.errors import StoreError
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope
from costguard.stores._probe import Probe
from costguard.stores._sql_conn import connect_within, map_error, mapped, open_engine
from costguard.stores._sql_pg import ServerFunctions
from costguard.stores._sql_rows import Rows, counter_row, dumps
from costguard.stores._sql_schema import Schema
from costguard.stores._sql_session import Sessions
from costguard.stores._sql_tx import SettleItem, Transactions
from costguard.stores._watchdog import watch
from costguard.stores.base import (
    Control,
    CounterRow,
    KillSwitchState,
    RunKeyState,
    Store,
    killswitch_entry,
    override_entry,
    redacted,
    run_key_entry,
)

__all__ = ["SQLStore", "map_error"]

_SETTLED_KEEP_S = 86400.0
_OPEN_KEEP_S = EXPIRY_GRACE_S  # as on Redis: an open reservation lives max(2 days, its longest counter)


class SQLStore(Store):
    """The SQL store. `timeout_ms`: how long one attempt may take — a statement, SQLite's lock wait, the
    wait for a pooled connection (default: the guard's `store_deadline_ms`, else 2 s). `pool_size` and
    `max_overflow` bound this process's connections (4 + 4 by default; processes x both <= the server's
    `max_connections`)."""

    def __init__(self, url: str, *, timeout_ms: float | None = None, prefix: str | None = None) -> None:
        self.url = redacted(url)  # shown in reprs and messages: never the password
        options, self.engine = open_engine(url, timeout_ms=timeout_ms, prefix=prefix)
        self.prefix = options.prefix
        self.sqlite = options.sqlite
        self.leases = not self.sqlite
        self.timeout_ms = options.timeout_ms
        self.pool_size = options.pool_size
        self.max_overflow = options.max_overflow
        self._identity = options.identity
        schema = Schema(self.prefix, postgres=not self.sqlite)
        self.meta, self.t = schema.meta, schema.t
        self._sessions = Sessions(options, self.engine, schema)
        self._rows = Rows(self._sessions, self.t)
        self._server = ServerFunctions(self._sessions)
        self._txs = Transactions(self._sessions, self._rows)
        self._probe = None if self.sqlite else Probe(self._probe_connect, _probe_ask, _probe_drop, self._noted)
        if self._probe is not None:  # its connection is closed with a store nobody closed, too
            weakref.finalize(self, self._probe.closer())

    def _noted(self) -> None:
        self.answered_at = time.monotonic()

    def _probe_connect(self, timeout_s: float) -> Any:
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.engine.url)
        cparams.update(autocommit=True, connect_timeout=2)
        return connect_within(lambda: dialect.loaded_dbapi.connect(*cargs, **cparams), timeout_s)

    def ping(self, timeout_s: float) -> bool:
        if self._probe is None:  # SQLite: a file that opens answers (a locked one is overload, not an outage)
            try:
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            except sa.exc.DBAPIError:
                return False
            self._noted()
            return True
        return self._probe.check(timeout_s)

    @property
    def identity(self) -> str:
        return self._identity

    # ----------------------------------------------------------------- reserve / settle
    @mapped
    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        if self.sqlite:
            return self._txs.reserve(plan, record)
        return self._server.reserve(plan, record)

    @mapped
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        if self.sqlite:
            return self._txs.settle(reservation_id, actual, at, record)
        return self._server.settle(reservation_id, actual, at, record)

    def settle_many(self, items: Sequence[SettleItem]) -> list[CommitOutcome | StoreError]:
        """A batch of settles in one transaction: the reservations are claimed with one statement, the
        union of their counters locked in key order with one more, and everything written with a
        third (PostgreSQL) — the same totals and crossings as settling them one by one, in order."""
        if not items:
            return []
        if not self._rows.returning:
            return super().settle_many(items)
        try:
            return list(self._settle_batch(items))
        except StoreError as exc:
            return [exc] * len(items)

    @mapped
    def _settle_batch(self, items: Sequence[SettleItem]) -> list[CommitOutcome]:
        return self._txs.settle_batch(items)

    # ----------------------------------------------------------------- counters
    @mapped
    def totals(self, keys: Sequence[str]) -> list[int]:
        with self._sessions.read() as conn:
            return self._rows.totals(conn, keys)

    @mapped
    def start_counter(self, op: CounterOp, committed: int, at: float) -> bool:
        c = self.t["counters"]
        row = {**counter_row(op), "committed": committed, "reserved": 0, "fired": ""}
        insert = self._rows.insert(c).values(**row).on_conflict_do_nothing(index_elements=["key"])
        with self._sessions.tx() as conn:
            if self._rows.returning:
                return conn.execute(insert.returning(c.c.key)).first() is not None
            return conn.execute(insert).rowcount == 1

    @mapped
    def spent_since(self, scope: Mapping[str, str], unit: Unit, since: float | None) -> int | None:
        e = self.t["events"]
        where = [e.c.decision == "commit"] + ([] if since is None else [e.c.at >= since])
        for name, value in sorted(scope.items()):
            column = getattr(e.c, name) if name in ("feature", "customer") else self._json(e.c.labels, name)
            where.append(column == value)
        if unit is Unit.CALLS:
            amount: Any = sa.func.count()
        else:
            # Each commit's USD as whole micro-dollars, so that the sum is exact.
            member = sa.cast(self._json(e.c.data, "actual_usd" if unit is Unit.USD else "tokens"), sa.Float)
            amount = sa.func.sum(sa.func.round(member * 1_000_000) if unit is Unit.USD else member)
        with self._sessions.read() as conn:
            total = conn.execute(sa.select(amount).where(*where)).scalar()
        return int(total or 0)

    def _json(self, column: Any, name: str) -> Any:
        """A JSON text column's top-level member `name` as text (label names need no quoting but `"`)."""
        if self.sqlite:
            return sa.func.json_extract(column, f'$."{name}"')
        return sa.func.jsonb_extract_path_text(sa.cast(column, JSONB), name)

    @mapped
    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        c = self.t["counters"]
        if not buckets:
            return []
        where = sa.or_(*[sa.and_(c.c.period == p.value, c.c.bucket == b) for p, b in buckets.items()])
        with self._sessions.read() as conn:
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
                    int(row.leased or 0),
                    int(row.holders or 0),
                )
                for row in conn.execute(sa.select(c).where(where))
            ]

    @mapped
    def purge(self, now: float) -> int:
        c, r, cache = self.t["counters"], self.t["reservations"], self.t["cache"]
        with self._sessions.tx() as conn:
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

    # ----------------------------------------------------------------- control (kill switches, overrides)
    @mapped
    def control(self) -> Control:
        ctl = self.t["control"]
        with self._sessions.read() as conn:
            rows = conn.execute(sa.select(ctl.c.kind, ctl.c.value)).all()
        return Control.from_entries((row.kind, json.loads(row.value)) for row in rows)

    def _put_control(self, conn: Connection, key: str, kind: str, value: dict[str, Any] | None) -> bool:
        """Upsert (or with None, delete) a control row; returns whether it existed before."""
        ctl = self.t["control"]
        existed = conn.execute(sa.select(ctl.c.key).where(ctl.c.key == key).with_for_update()).first() is not None
        if value is None:
            conn.execute(sa.delete(ctl).where(ctl.c.key == key))
        elif existed:
            conn.execute(sa.update(ctl).where(ctl.c.key == key).values(value=dumps(value)))
        else:
            conn.execute(sa.insert(ctl).values(key=key, kind=kind, value=dumps(value)))
        return existed

    @mapped
    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        key = "killswitch|" + encode_scope(dict(state.scope))
        ctl = self.t["control"]
        with self._sessions.tx() as conn:
            existed = conn.execute(sa.select(ctl.c.key).where(ctl.c.key == key).with_for_update()).first() is not None
            if existed == active:
                return False  # already in that state: the first activation's reason and time stand
            self._put_control(conn, key, "killswitch", killswitch_entry(state) if active else None)
            self._rows.write(conn, (), [record])
            return True

    @mapped
    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        key = f"override|{override.scope_key}|{override.period.value}|{override.unit.value}"
        with self._sessions.tx() as conn:
            self._put_control(conn, key, "override", None if clear else override_entry(override))
            self._rows.write(conn, (), [record])

    @mapped
    def set_run_key(self, state: RunKeyState, record: AuditRecord, remove: bool = False) -> None:
        with self._sessions.tx() as conn:
            self._put_control(conn, f"key|{state.id}", "key", None if remove else run_key_entry(state))
            self._rows.write(conn, (), [record])

    # ----------------------------------------------------------------- audit log
    @mapped
    def append(self, records: Sequence[AuditRecord]) -> None:
        with self._sessions.tx() as conn:
            self._rows.write(conn, (), records)

    @mapped
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
        with self._sessions.read() as conn:
            return [
                AuditRecord.from_stored(row.id, row.at, row.decision, row.labels, row.reservation_id, row.data)
                for row in conn.execute(stmt)
            ]

    # ----------------------------------------------------------------- fallback cache
    @mapped
    def cache_get(self, key: str, now: float) -> bytes | None:
        cache = self.t["cache"]
        with self._sessions.read() as conn:
            row = conn.execute(sa.select(cache.c.value).where(cache.c.key == key, cache.c.expires_at > now)).first()
        return None if row is None else bytes(row.value)

    @mapped
    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        cache = self.t["cache"]
        stmt = self._rows.insert(cache).values(key=key, value=value, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"], set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at}
        )
        with self._sessions.tx() as conn:
            conn.execute(stmt)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self.engine.dispose()

    def drop_schema(self) -> None:
        """Remove costguard's tables (and on PostgreSQL its functions) for this prefix: every counter,
        reservation, audit record and setting is gone. For tests and uninstalling."""
        self._sessions.drop_schema()


def _probe_ask(conn: Any, timeout_s: float) -> None:
    with watch(conn.pgconn.socket, timeout_s):
        conn.execute("SELECT 1").fetchone()


def _probe_drop(conn: Any) -> None:
    conn.close()
