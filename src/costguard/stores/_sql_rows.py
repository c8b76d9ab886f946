"""The SQL store's rows inside one transaction: counter rows created, locked and read in key order,
new counter values written with the reservation and audit rows, a previous period's kill cleared,
tombstones and totals — each step one statement whatever the number of counters, with its own text
for PostgreSQL and for SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from costguard.engine import CounterOp, Crossing, clear_previous, fired_name, op_to_json, reported
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores._sql_session import Sessions

__all__ = ["CounterState", "Rows", "Write", "counter_row", "dumps", "op_doc", "op_row", "record_row"]

# INSERT … ON CONFLICT DO NOTHING RETURNING arrived in SQLite 3.35.
_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

_COUNTER_FIELDS = ("key", "ceiling_id", "scope", "period", "unit", "bucket", "expires_at")
_WRITE_FIELDS = ("key", "committed", "reserved", "fired", "expires_at")

CounterState = tuple[int, int, set[str]]  # committed, reserved, thresholds fired
Write = tuple[str, int, int, str, float | None]  # key, committed, reserved, fired (comma-joined), expires_at


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _fired(text: str) -> set[str]:
    """A counter's `fired` column as the set of thresholds it names."""
    return set(filter(None, text.split(",")))


def counter_row(op: CounterOp) -> dict[str, Any]:
    """A counter's descriptive columns, as the statements that create its row take them (values start at 0)."""
    return {
        "key": op.key,
        "ceiling_id": op.ceiling_id,
        "scope": dumps([list(item) for item in op.scope]),
        "period": op.period.value,
        "unit": op.unit.value,
        "bucket": op.bucket,
        "expires_at": op.expires_at,
    }


def op_doc(op: CounterOp) -> dict[str, Any]:
    """A counter as the PostgreSQL server's reserve function takes it."""
    return {
        **counter_row(op),
        "amount": op.amount,
        "limit": op.limit,
        "hard": op.hard,
        "levels": [[fired_name(t), level, t >= 1.0] for t, level in op.levels],
        "previous_key": op.previous_key,
        "counts_new": op.counts_new + 1,  # from 1, as the function counts; 0: an ordinary counter
        "reported": reported(op),  # shown in an allowed reserve's audit record (engine.ceilings_data)
        "ttl": op.ttl_s,
    }


def op_row(op: CounterOp) -> list[object]:
    """A counter as a reservation row keeps it: `engine.op_to_json` plus its threshold names (the
    server's settle function claims thresholds by the names the engine gives them)."""
    return [*op_to_json(op), [fired_name(t) for t, _ in op.levels]]


def record_row(record: AuditRecord) -> dict[str, Any]:
    """An audit record as a row of the events table."""
    return {
        "at": record.at,
        "decision": record.decision,
        "feature": record.labels.get("feature"),
        "customer": record.labels.get("customer"),
        "reservation_id": record.reservation_id,
        "labels": dumps(dict(record.labels)),
        "data": dumps(dict(record.data)),
    }


class Rows:
    """Row steps on a connection in a transaction of `sessions` (its statements cached there)."""

    def __init__(self, sessions: Sessions, t: dict[str, sa.Table]) -> None:
        self.sqlite = sessions.sqlite
        self.returning = not self.sqlite or _SQLITE_RETURNING
        self.t = t
        self._statement = sessions.statement

    def insert(self, table: sa.Table) -> Any:
        """An INSERT of the dialect (for its ON CONFLICT clauses)."""
        if self.sqlite:
            return sqlite_insert(table)
        return postgresql_insert(table)

    def lock_counters(
        self, conn: Connection, ops: Sequence[CounterOp], created: set[str] | None = None
    ) -> dict[str, CounterState]:
        """Create missing counter rows (their keys added to `created`), then lock and read them in key order.

        The counters travel as one JSON parameter, so this is one statement on PostgreSQL (an upsert
        whose conflict branch locks the existing row and `xmax = 0` tells a new one) and two on SQLite
        (whose writer already holds the database lock), whatever the number of counters.
        """
        ordered = sorted(ops, key=lambda o: o.key)
        rows = dumps([counter_row(op) for op in ordered])
        if not self.sqlite:
            result = conn.execute(self._statement("lock", self._pg_lock_sql), {"rows": rows})
            state = {}
            for row in result:
                state[row.key] = (int(row.committed), int(row.reserved), _fired(row.fired))
                if row.created and created is not None:
                    created.add(row.key)
            return state
        returned = conn.execute(self._statement("create", self._sqlite_create_sql), {"rows": rows})
        if created is not None and self.returning:
            created.update(row.key for row in returned)
        result = conn.execute(
            self._statement("read", self._sqlite_read_sql), {"keys": dumps([op.key for op in ordered])}
        )
        state = {row.key: (int(row.committed), int(row.reserved), _fired(row.fired)) for row in result}
        if created is not None and not self.returning:
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
        return sql + " RETURNING key" if self.returning else sql

    def _sqlite_read_sql(self) -> str:
        c = self.t["counters"].name
        return (
            f"SELECT key, committed, reserved, fired FROM {c} "
            "WHERE key IN (SELECT value FROM json_each(:keys)) ORDER BY key"
        )

    def write(
        self,
        conn: Connection,
        counters: Sequence[Write],
        records: Sequence[AuditRecord],
        reservation: dict[str, Any] | None = None,
    ) -> None:
        """New counter values, a new reservation row and audit records: one statement on PostgreSQL."""
        params: dict[str, Any] = {}
        parts = []
        if counters:
            params["counters"] = dumps([dict(zip(_WRITE_FIELDS, row, strict=True)) for row in counters])
            parts.append("w")
        if reservation is not None:
            params.update(reservation)
            parts.append("r")
        if records:
            params["records"] = dumps([record_row(r) for r in records])
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

    def clear_previous(self, conn: Connection, ops: Sequence[CounterOp]) -> list[Crossing]:
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
            fired = _fired(row.fired)
            claimed = clear_previous(by_previous[row.key], int(row.committed) + int(row.reserved), fired)
            if claimed:
                conn.execute(sa.update(c).where(c.c.key == row.key).values(fired=",".join(sorted(fired))))
                out.extend(claimed)
        return out

    def first_calls(self, conn: Connection, ops: Sequence[CounterOp]) -> list[float | None]:
        """Each counter's first call admitted under a ttl (`first_at`; None: none yet, or no ttl)."""
        c = self.t["counters"]
        keys = [op.key for op in ops if op.ttl_s is not None]
        found = {
            row.key: row.first_at for row in conn.execute(sa.select(c.c.key, c.c.first_at).where(c.c.key.in_(keys)))
        }
        return [None if op.ttl_s is None else found.get(op.key) for op in ops]

    def mark_first_calls(self, conn: Connection, ops: Sequence[CounterOp], at: float) -> None:
        """An admitted call is the first of every ttl counter that has none yet."""
        c = self.t["counters"]
        keys = [op.key for op in ops if op.ttl_s is not None]
        conn.execute(sa.update(c).where(c.c.key.in_(keys), c.c.first_at.is_(None)).values(first_at=at))

    def drop_counters(self, conn: Connection, keys: Sequence[str]) -> None:
        if keys:
            c = self.t["counters"]
            conn.execute(sa.delete(c).where(c.c.key.in_(list(keys))))

    def tombstone(self, conn: Connection, reservation_id: str, actual: Mapping[Unit, int] | None, at: float) -> bool:
        """A release of a reservation not stored: a settled row without counters, so a reserve arriving
        late (its outcome was unknown to the guard that gave up on it) changes nothing. False when a row
        with that id was there after all: a reserve in flight committed it while the insert waited on it
        (the caller claims it again), or a settle did."""
        if actual is not None:
            return True
        r = self.t["reservations"]
        insert = self.insert(r).values(id=reservation_id, at=at, settled=True, counters="[]")
        if not self.returning:  # SQLite before 3.35: one writer at a time, so no reserve is in flight beside it
            conn.execute(insert.on_conflict_do_nothing(index_elements=["id"]))
            return True
        return conn.execute(insert.on_conflict_do_nothing(index_elements=["id"]).returning(r.c.id)).first() is not None

    def lease(self, conn: Connection, changes: Mapping[str, tuple[int, int]]) -> dict[str, int]:
        """Slices reserved or settled: per counter key, (change to `leased`, change to `holders`), never
        below 0 (a counter purged meanwhile starts again from 0); each counter's holders after it."""
        c = self.t["counters"]
        if not changes:
            return {}
        leased = sa.func.coalesce(c.c.leased, 0) + sa.bindparam("d_leased")
        holders = sa.func.coalesce(c.c.holders, 0) + sa.bindparam("d_holders")
        update = (
            sa.update(c)
            .where(c.c.key == sa.bindparam("k"))
            .values(leased=sa.case((leased < 0, 0), else_=leased), holders=sa.case((holders < 0, 0), else_=holders))
        )
        conn.execute(update, [{"k": key, "d_leased": dl, "d_holders": dh} for key, (dl, dh) in changes.items()])
        found = conn.execute(sa.select(c.c.key, c.c.holders).where(c.c.key.in_(list(changes))))
        return {row.key: int(row.holders or 0) for row in found}

    def totals(self, conn: Connection, keys: Sequence[str]) -> list[int]:
        c = self.t["counters"]
        found = {
            row.key: int(row.committed) + int(row.reserved)
            for row in conn.execute(sa.select(c.c.key, c.c.committed, c.c.reserved).where(c.c.key.in_(list(keys))))
        }
        return [found.get(key, 0) for key in keys]
