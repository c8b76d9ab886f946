"""Reserve and settle as one transaction that runs the engine's steps in Python: SQLite's every
reserve and settle (one `BEGIN IMMEDIATE` each; the file lock serializes writers across processes),
and `settle_many`'s batch on both databases (three statements on PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import sqlalchemy as sa

from costguard.engine import (
    CommitOutcome,
    CounterOp,
    Crossing,
    ReserveOutcome,
    ReservePlan,
    claim_crossings,
    evaluate_reserve,
    is_lease,
    op_from_json,
    reserve_record,
    settle_deltas,
)
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores._sql_rows import CounterState, Rows, Write, dumps, op_row
from costguard.stores._sql_session import Sessions

__all__ = ["SettleItem", "Transactions"]

SettleItem = tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]  # id, actual, at, record


class Transactions:
    """The engine's reserve and settle steps on locked rows, in a transaction of `sessions`."""

    def __init__(self, sessions: Sessions, rows: Rows) -> None:
        self._sessions = sessions
        self._rows = rows
        self._t = rows.t

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        r, rows = self._t["reservations"], self._rows
        with self._sessions.tx() as conn:
            if conn.execute(sa.select(r.c.id).where(r.c.id == plan.reservation_id)).first():
                # Asked again (a lost reply, a spooled cost written twice) or released before it came:
                # the first outcome stands and nothing changes.
                if plan.force:
                    return ReserveOutcome(True, ())
                return ReserveOutcome(True, tuple(rows.totals(conn, [op.key for op in plan.counters])))
            writes: list[Write] = []
            if not plan.counters:
                outcome = ReserveOutcome(True, ())
            else:
                created: set[str] = set()
                state = rows.lock_counters(conn, plan.counters, created)
                cleared = rows.clear_previous(conn, [op for op in plan.counters if op.key in created])
                current = [state[op.key] for op in plan.counters]
                fired = [set(s[2]) for s in current]
                new = [op.key in created for op in plan.counters]
                first = rows.first_calls(conn, plan.counters) if plan.has_ttl else None
                outcome = evaluate_reserve(plan, [s[0] + s[1] for s in current], fired, new, first)
                if outcome.allowed and first is not None:
                    rows.mark_first_calls(conn, plan.counters, plan.at)
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
                    rows.drop_counters(
                        conn, [op.key for i, op in enumerate(plan.counters) if new[i] and i != outcome.blocked]
                    )
            reservation = (
                {
                    "r_id": plan.reservation_id,
                    "r_at": plan.at,
                    "r_counters": dumps([op_row(op) for op in plan.settled_counters]),
                }
                if outcome.allowed
                else None
            )
            rows.write(conn, writes, [reserve_record(plan, outcome, record)] if record else [], reservation)
            if outcome.allowed and is_lease(plan.reservation_id):
                holders = rows.lease(conn, _lease_changes(plan.settled_counters, 1))
                outcome = replace(outcome, holders=tuple(holders.get(op.key, 0) for op in plan.counters))
            return outcome

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        r, rows = self._t["reservations"], self._rows
        with self._sessions.tx() as conn:
            if rows.returning:
                # Claims the reservation (a second settle finds it settled and changes nothing) and locks it.
                claim = self._sessions.statement(
                    "claim",
                    lambda: (
                        f"UPDATE {r.name} SET settled = :yes, at = :at WHERE id = :id AND settled = :no "
                        "RETURNING counters"
                    ),
                )
                row = conn.execute(claim, {"id": reservation_id, "at": at, "yes": True, "no": False}).first()
                if row is None:
                    rows.tombstone(conn, reservation_id, actual, at)
                    return CommitOutcome(applied=False)
            else:
                row = conn.execute(
                    sa.select(r.c.counters, r.c.settled).where(r.c.id == reservation_id).with_for_update()
                ).first()
                if row is None or row.settled:
                    if row is None:
                        rows.tombstone(conn, reservation_id, actual, at)
                    return CommitOutcome(applied=False)
                conn.execute(sa.update(r).where(r.c.id == reservation_id).values(settled=True, at=at))
            ops = tuple(op_from_json(item) for item in json.loads(row.counters))
            state = rows.lock_counters(conn, ops) if ops else {}
            outcome = _settled(ops, actual, state)
            rows.write(conn, _writes(state, {op.key: op.expires_at for op in ops}), [record] if record else [])
            if is_lease(reservation_id):
                rows.lease(conn, _lease_changes(ops, -1))
            return outcome

    def settle_batch(self, items: Sequence[SettleItem]) -> list[CommitOutcome]:
        """A batch of settles in one transaction: the reservations are claimed with one statement, the
        union of their counters locked in key order with one more, and everything written with a
        third (PostgreSQL) — the same totals and crossings as settling them one by one, in order.
        Needs INSERT … RETURNING (on SQLite, 3.35)."""
        r, rows = self._t["reservations"], self._rows
        first: dict[str, int] = {}
        for index, (reservation_id, *_) in enumerate(items):
            first.setdefault(reservation_id, index)  # the same id twice settles once: the first wins
        claims = dumps([{"id": items[index][0], "at": items[index][2]} for index in sorted(first.values())])
        out = [CommitOutcome(applied=False)] * len(items)
        with self._sessions.tx() as conn:
            if rows.sqlite:
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
            claim = self._sessions.statement("claim_many", lambda: claim_sql)
            claimed = {
                row.id: tuple(op_from_json(item) for item in json.loads(row.counters))
                for row in conn.execute(claim, {"claims": claims})
            }
            late = [
                {"id": reservation_id, "at": at}
                for reservation_id, actual, at, _ in items
                if reservation_id not in claimed and not rows.tombstone(conn, reservation_id, actual, at)
            ]
            if late:  # a reserve in flight committed while its release's tombstone waited: release what it stored
                for row in conn.execute(claim, {"claims": dumps(late)}):
                    claimed[row.id] = tuple(op_from_json(item) for item in json.loads(row.counters))
            if not claimed:
                return out
            union: dict[str, CounterOp] = {}
            for ops in claimed.values():
                for op in ops:
                    union[op.key] = op
            state = rows.lock_counters(conn, list(union.values())) if union else {}
            expires: dict[str, float | None] = {}
            records: list[AuditRecord] = []
            leases: dict[str, tuple[int, int]] = {}
            for index, (reservation_id, actual, _at, record) in enumerate(items):
                if first[reservation_id] != index or reservation_id not in claimed:
                    continue
                ops = claimed[reservation_id]
                out[index] = _settled(ops, actual, state)
                expires.update((op.key, op.expires_at) for op in ops)
                if record is not None:
                    records.append(record)
                if is_lease(reservation_id):
                    for key, (d_leased, d_holders) in _lease_changes(ops, -1).items():
                        before = leases.get(key, (0, 0))
                        leases[key] = (before[0] + d_leased, before[1] + d_holders)
            rows.write(conn, _writes(state, expires), records)
            rows.lease(conn, leases)
        return out


def _settled(
    ops: tuple[CounterOp, ...], actual: Mapping[Unit, int] | None, state: dict[str, CounterState]
) -> CommitOutcome:
    """Apply one reservation's `engine.settle_deltas` to the locked counters in `state` (updated in
    place, thresholds claimed), in the reservation's counter order."""
    totals: list[int] = []
    crossings: list[Crossing] = []
    for op, (d_reserved, d_committed) in zip(ops, settle_deltas(ops, actual), strict=True):
        committed, reserved, fired = state[op.key]
        committed += d_committed
        reserved += d_reserved
        state[op.key] = (committed, reserved, fired)
        totals.append(committed + reserved)
        crossings.extend(claim_crossings(op, committed + reserved, fired))
    return CommitOutcome(True, ops, tuple(totals), tuple(crossings))


def _lease_changes(ops: Sequence[CounterOp], sign: int) -> dict[str, tuple[int, int]]:
    """A slice reserved (`sign` 1) or settled (-1): per counter, the change to `leased` and to `holders`."""
    return {op.key: (sign * op.amount, sign) for op in ops}


def _writes(state: Mapping[str, CounterState], expires: Mapping[str, float | None]) -> list[Write]:
    """The new values of the counters settled (those in `expires`), in key order."""
    return [
        (key, committed, reserved, ",".join(sorted(fired)), expires[key])
        for key, (committed, reserved, fired) in sorted(state.items())
        if key in expires
    ]
