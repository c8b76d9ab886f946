"""`PlanCache`: a call's planned counters reused until a period bucket rolls over, on the hot path of
every guarded call (a hit is a dictionary lookup and one small object per counter)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.keys import HISTORY_PREFIX
from costguard.engine.plan import UTC, current_bucket, plan_reservation
from costguard.model import Ceiling, Period, Unit

__all__ = ["PlanCache"]


class PlanCache:
    """Planned counters per (labels, timezone, thresholds), reused until a bucket rolls over.

    A call's counters depend on the ceilings and overrides in force (the guard's control view, a
    new object at each refresh), its labels and the current period buckets; only the amounts and
    the sliding expiry of `total` ceilings with `expire_after` change from call to call. A hit
    costs a dictionary lookup and one small object per counter instead of matching, bucket and
    key computation.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple[object, ...], _Planned] = OrderedDict()
        self._lock = threading.Lock()

    def plan(
        self,
        *,
        reservation_id: str,
        ceilings: Sequence[Ceiling],
        overrides: Mapping[str, Mapping[tuple[Period, Unit], int]],
        labels: Mapping[str, str],
        amounts: Mapping[Unit, int],
        now: float,
        tz: tzinfo,
        thresholds: Sequence[float],
    ) -> ReservePlan:
        """Same result as `plan_reservation`."""
        label_key = tuple(sorted(labels.items()))
        key = (label_key, tz, tuple(thresholds))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if (
            entry is None
            or entry.ceilings is not ceilings
            or entry.overrides is not overrides
            or not entry.valid_from <= now < entry.valid_until
        ):
            template = plan_reservation(
                reservation_id="",
                ceilings=ceilings,
                overrides=overrides,
                labels=labels,
                amounts={},
                now=now,
                tz=tz,
                thresholds=thresholds,
            )
            starts = [bucket_start for bucket_start in (_start_of(op, tz) for op in template.counters) if bucket_start]
            ends = [op.resets_at for op in template.counters if op.resets_at is not None]
            hour, _ = current_bucket(Period.HOUR, now, UTC)  # history counters roll over hourly
            assert hour.start is not None
            assert hour.end is not None
            slides = tuple(_expire_after(op, ceilings) for op in template.counters)
            entry = _Planned(
                ceilings,
                overrides,
                max([hour.start, *starts]),
                min([hour.end, *ends]),
                template.counters,
                slides,
                any(slides),
            )
            with self._lock:
                self._entries[key] = entry
                if len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        if entry.sliding:
            ops = tuple(
                _with_amount(op, amounts.get(op.unit, 0), now + slide if slide else op.expires_at)
                for op, slide in zip(entry.ops, entry.slides, strict=True)
            )
        else:
            # A decorator reserves the same amounts call after call: reuse the counters built for them.
            amount_key = tuple(amounts.get(unit, 0) for unit in _UNITS)
            ops = entry.by_amount.get(amount_key)  # type: ignore[assignment]
            if ops is None:
                ops = tuple(_with_amount(op, amounts.get(op.unit, 0), op.expires_at) for op in entry.ops)
                if len(entry.by_amount) >= _AMOUNTS_KEPT:
                    entry.by_amount.clear()
                entry.by_amount[amount_key] = ops
        return ReservePlan(
            reservation_id=reservation_id,
            at=now,
            labels=label_key,
            counters=ops,
            estimate_usd=amounts.get(Unit.USD, 0),
        )


def _with_amount(op: CounterOp, amount: int, expires_at: float | None) -> CounterOp:
    """A copy of a planned counter with this call's amount (what `dataclasses.replace` does, minus
    its per-call introspection: this runs for every counter of every call)."""
    new = object.__new__(CounterOp)
    new.__dict__.update(op.__dict__)
    new.__dict__["amount"] = amount
    new.__dict__["expires_at"] = expires_at
    return new


# Distinct amounts whose counters one planned entry keeps (a learned or per-call estimate varies).
_AMOUNTS_KEPT = 16
_UNITS = tuple(Unit)


@dataclass(frozen=True)
class _Planned:
    ceilings: Sequence[Ceiling]
    overrides: Mapping[str, Mapping[tuple[Period, Unit], int]]
    valid_from: float
    valid_until: float
    ops: tuple[CounterOp, ...]
    slides: tuple[float | None, ...]
    sliding: bool
    by_amount: dict[tuple[int, ...], tuple[CounterOp, ...]] = field(default_factory=dict)


def _start_of(op: CounterOp, tz: tzinfo) -> float | None:
    if op.period is Period.TOTAL or op.key.startswith(HISTORY_PREFIX):
        return None
    bucket, _ = current_bucket(op.period, op.resets_at - 1 if op.resets_at else 0.0, tz)
    return bucket.start


def _expire_after(op: CounterOp, ceilings: Sequence[Ceiling]) -> float | None:
    """A `total` counter with `expire_after` expires that long after its latest call."""
    if op.period is not Period.TOTAL:
        return None
    for ceiling in ceilings:
        if ceiling.id == op.ceiling_id:
            return ceiling.expire_after_s
    return None
