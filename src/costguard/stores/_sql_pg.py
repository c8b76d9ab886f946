"""PostgreSQL's reserve and settle: one statement each, in autocommit, a call of a server function
installed with the schema (`pg/functions.sql`) that locks the counter rows in key order, checks them
exactly as the engine's pure `evaluate_reserve` does, and writes the totals, the reservation and the
audit record — so a hot counter row is locked for the microseconds the function runs, never across
the client's round trips.
"""

from __future__ import annotations

from collections.abc import Mapping

from costguard.engine import CommitOutcome, ReserveOutcome, ReservePlan, crossings_from, op_from_json
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores._sql_rows import dumps, op_doc, op_row, record_row
from costguard.stores._sql_session import Sessions

__all__ = ["ServerFunctions"]


class ServerFunctions:
    """Reserve and settle as calls of the server functions (one round trip each)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        doc = {
            "id": plan.reservation_id,
            "at": plan.at,
            "force": plan.force,
            "ops": dumps([op_row(op) for op in plan.settled_counters]),
            "record": None if record is None else record_row(record),
            "counters": [op_doc(op) for op in plan.counters],
        }
        reply = self._sessions.call("reserve", dumps(doc))
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
        reply = self._sessions.call("settle", dumps(doc))
        if not reply["applied"]:
            return CommitOutcome(applied=False)
        ops = tuple(op_from_json(item) for item in reply["counters"])
        return CommitOutcome(
            True, ops, tuple(int(total) for total in reply["totals"]), crossings_from(ops, reply["crossings"])
        )
