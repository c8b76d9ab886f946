"""The outage spool's entries and their JSON lines (`costguard.spool` keeps them on disk).

Lines are read back as data and validated: nothing in a spool is ever executed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from costguard.engine import ReservePlan, op_from_json, op_to_json
from costguard.events import AuditRecord
from costguard.model import Unit

__all__ = ["Entry", "decode", "encode"]


@dataclass(frozen=True)
class Entry:
    """One write the store still owes: record `plan` first (without checking limits, idempotent by
    id), then, with `settle`, commit `actual` (or release when it is None).

    A `mark` is a slice's write-ahead record (`costguard.slicemarks`): its holder may have used up to
    `actual` of it. Nobody writes it while the holder lives; a holder that died has its slice committed
    at its last mark, unless a later entry of the same id says what it really cost."""

    seq: int
    reservation_id: str
    at: float
    plan: ReservePlan | None = None
    settle: bool = False
    actual: Mapping[Unit, int] | None = None
    record: AuditRecord | None = None
    feature: str = ""
    unreserved: int = 0  # micro-dollars admitted without a reservation, back in the allowance once written
    mark: bool = False


def encode(entry: Entry) -> str:
    """An entry as one JSON line."""
    if entry.mark:
        return _mark_line(entry)
    data: dict[str, Any] = {"seq": entry.seq, "id": entry.reservation_id, "at": entry.at}
    if entry.plan is not None:
        plan = entry.plan
        data["plan"] = {
            "at": plan.at,
            "labels": [list(item) for item in plan.labels],
            "counters": [op_to_json(op) for op in plan.counters],
            "estimate": plan.estimate_usd,
        }
    if entry.settle:
        data["settle"] = None if entry.actual is None else {unit.value: int(v) for unit, v in entry.actual.items()}
    if entry.record is not None:
        record = entry.record
        data["record"] = [record.at, record.decision, dict(record.labels), record.reservation_id, dict(record.data)]
    if entry.feature:
        data["feature"] = entry.feature
        data["unreserved"] = entry.unreserved
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def _mark_line(entry: Entry) -> str:
    """A mark's line, formatted directly (it is written on a call's path, under the leases' lock). Its
    amounts are a `mark`, not a `settle`: a version before marks skips the line (the slice then counts
    whole) rather than committing the slice at an early mark."""
    get = (entry.actual or {}).get
    return (
        f'{{"seq":{int(entry.seq)},"id":{json.dumps(entry.reservation_id)},"at":{float(entry.at)!r},"mark":'
        f'{{"usd":{int(get(Unit.USD, 0))},"calls":{int(get(Unit.CALLS, 0))},"tokens":{int(get(Unit.TOKENS, 0))}}}}}\n'
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number")
    return float(value)


def _pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is not a list")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"{what} holds something other than pairs")
        out.append((_text(item[0], what), _text(item[1], what)))
    return tuple(out)


def decode(line: str) -> Entry:
    """An entry from its line; `ValueError` for anything malformed."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError("seq is not an integer")
    reservation_id = _text(data.get("id"), "id")
    at = _number(data.get("at"), "at")
    plan = None
    if "plan" in data:
        raw = data["plan"]
        if not isinstance(raw, dict) or not isinstance(raw.get("counters"), list):
            raise ValueError("plan is malformed")
        try:
            counters = tuple(op_from_json(item) for item in raw["counters"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"plan counters are malformed: {exc}") from None
        estimate = raw.get("estimate")
        if isinstance(estimate, bool) or not isinstance(estimate, int):
            raise ValueError("plan estimate is not an integer")
        plan = ReservePlan(
            reservation_id=reservation_id,
            at=_number(raw.get("at"), "plan at"),
            labels=_pairs(raw.get("labels"), "plan labels"),
            counters=counters,
            estimate_usd=estimate,
            force=True,
        )
    mark = "mark" in data
    settle = mark or "settle" in data
    actual: dict[Unit, int] | None = None
    amounts = data["mark" if mark else "settle"] if settle else None
    if mark and not isinstance(amounts, dict):
        raise ValueError("mark is malformed")
    if amounts is not None:
        if not isinstance(amounts, dict):
            raise ValueError("settle is malformed")
        actual = {}
        for unit, amount in amounts.items():
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise ValueError("settle amounts are not integers")
            actual[Unit(unit)] = amount
    record = None
    if data.get("record") is not None:
        raw_record = data["record"]
        if not isinstance(raw_record, list) or len(raw_record) != 5:
            raise ValueError("record is malformed")
        rec_at, decision, labels, rid, extra = raw_record
        if not isinstance(labels, dict) or not isinstance(extra, dict):
            raise ValueError("record is malformed")
        record = AuditRecord(
            at=_number(rec_at, "record at"),
            decision=_text(decision, "record decision"),
            labels={_text(k, "label"): _text(v, "label") for k, v in labels.items()},
            reservation_id=None if rid is None else _text(rid, "record id"),
            data=extra,
        )
    if plan is None and not settle:
        raise ValueError("an entry neither records nor settles anything")
    return Entry(seq, reservation_id, at, plan, settle, actual, record, mark=mark)
