"""PostgreSQL's reserve and settle: one statement each, in autocommit, a call of a server function
installed with the schema (`pg/functions.sql`) that locks the counter rows in key order, checks them
exactly as the engine's pure `evaluate_reserve` does, and writes the totals, the reservation and the
audit record — so a hot counter row is locked for the microseconds the function runs, never across
the client's round trips. Concurrent calls of this process on the same counters go as one statement
(`_combine`): a hot row is taken once per batch, not once per thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from costguard.engine import CommitOutcome, ReserveOutcome, ReservePlan, crossings_from, op_from_json
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores._combine import Combiner
from costguard.stores._sql_rows import dumps, op_doc, op_row, record_row
from costguard.stores._sql_session import Sessions

__all__ = ["ServerFunctions"]


class ServerFunctions:
    """Reserve and settle as calls of the server functions (one round trip each, or one per batch)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self._reserves: Combiner[str, dict[str, Any]] = Combiner(self._batch("reserve"))
        self._settles: Combiner[str, dict[str, Any]] = Combiner(self._batch("settle"))
        # Each reservation's lane (its counter keys) until it is settled, so that settles of the same
        # counters combine too; a reservation settled elsewhere (a spooled batch) is forgotten in bulk.
        self._lanes: dict[str, tuple[str, ...]] = {}
        self._lanes_lock = threading.Lock()

    def _batch(self, function: str) -> Any:
        sessions = self._sessions

        def send(docs: Sequence[str]) -> list[dict[str, Any]]:
            if len(docs) == 1:
                return [sessions.call(function, docs[0])]
            replies = sessions.call(f"{function}_many", "[" + ",".join(docs) + "]")
            return [reply if isinstance(reply, dict) else json.loads(reply) for reply in replies]

        return send

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        doc = {
            "id": plan.reservation_id,
            "at": plan.at,
            "force": plan.force,
            "ops": dumps([op_row(op) for op in plan.settled_counters]),
            "record": None if record is None else record_row(record),
            "counters": [op_doc(op) for op in plan.counters],
        }
        lane = tuple(op.key for op in plan.counters)
        reply = self._reserves.run(lane, dumps(doc), self._sessions.options.attempt_s())
        if reply["allowed"] and not reply.get("repeat"):
            with self._lanes_lock:
                if len(self._lanes) > 100_000:
                    self._lanes.clear()
                self._lanes[plan.reservation_id] = lane
        blocked = int(reply["blocked"])
        return ReserveOutcome(
            bool(reply["allowed"]),
            tuple(int(total) for total in reply["totals"]),
            blocked - 1 if blocked else None,
            crossings_from(plan.counters, reply["crossings"]),
            expired=bool(reply.get("expired")),
            holders=tuple(int(count) for count in reply.get("holders") or ()),
        )

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        doc = {
            "id": reservation_id,
            "at": at,
            "actual": None if actual is None else {unit.value: amount for unit, amount in actual.items()},
            "record": None if record is None else record_row(record),
        }
        with self._lanes_lock:
            lane: tuple[str, ...] | None = self._lanes.pop(reservation_id, None)
        # A reservation of unknown counters settles alone: a batch must lock the same rows in one order.
        reply = self._settles.run(lane or (reservation_id,), dumps(doc), self._sessions.options.attempt_s())
        if not reply["applied"]:
            return CommitOutcome(applied=False)
        ops = tuple(op_from_json(item) for item in reply["counters"])
        return CommitOutcome(
            True, ops, tuple(int(total) for total in reply["totals"]), crossings_from(ops, reply["crossings"])
        )
