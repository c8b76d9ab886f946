"""What a reservation touches: one `CounterOp` per counter, the `ReservePlan` that carries them, and
the compact JSON form a reservation keeps for its commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from costguard.model import Period, Unit, micros_to_usd

__all__ = ["CounterId", "CounterOp", "ReservePlan", "all_expired", "force", "op_from_json", "op_to_json"]


@dataclass(frozen=True)
class CounterId:
    """Which counter: its store key, and the ceiling, scope, period, unit and bucket it counts."""

    key: str
    ceiling_id: str
    scope: tuple[tuple[str, str], ...]
    period: Period
    unit: Unit
    bucket: str


@dataclass(frozen=True)
class CounterOp(CounterId):
    """One counter a reservation touches, with everything a store needs to check and update it."""

    amount: int
    limit: int
    hard: bool
    levels: tuple[tuple[float, int], ...]
    resets_at: float | None
    expires_at: float | None
    previous_key: str | None = None
    # A registry counter of `max_instances`: it adds 1 (committed at once, never settled) when the
    # counter at this index of the plan is created by the reservation — a new instance — else 0.
    counts_new: int = -1
    # A `total` counter of a ceiling with `ttl`: it refuses every call from its first admitted one + ttl_s.
    ttl_s: float | None = None

    def display(self, value: int) -> float:
        """A raw counter value in the unit's user-facing form."""
        return micros_to_usd(value) if self.unit is Unit.USD else float(value)


@dataclass(frozen=True)
class ReservePlan:
    """Everything one atomic reserve needs; `force` records without checking (buffered costs)."""

    reservation_id: str
    at: float
    labels: tuple[tuple[str, str], ...]
    counters: tuple[CounterOp, ...]
    estimate_usd: int
    force: bool = False

    @property
    def has_registry(self) -> bool:
        """Whether a counter counts new instances (`max_instances`)."""
        return any(op.counts_new >= 0 for op in self.counters)

    @property
    def has_ttl(self) -> bool:
        """Whether a counter has a `ttl` (the store then reads and keeps its first admitted call)."""
        return any(op.ttl_s is not None for op in self.counters)

    @property
    def settled_counters(self) -> tuple[CounterOp, ...]:
        """The counters a commit or release adjusts: all but the registry counters, which are final."""
        if not self.has_registry:
            return self.counters
        return tuple(op for op in self.counters if op.counts_new < 0)


def force(plan: ReservePlan) -> ReservePlan:
    """The same plan, recorded without checking limits (a cost incurred while the store was down)."""
    return replace(plan, force=True)


def all_expired(counters: Iterable[CounterOp], now: float) -> bool:
    """Whether every counter has expired (a counter without expiry never does)."""
    return all(op.expires_at is not None and op.expires_at < now for op in counters)


def op_to_json(op: CounterOp) -> list[object]:
    """A compact JSON form of a counter op, kept with a reservation for its commit."""
    return [
        op.key,
        op.ceiling_id,
        [list(item) for item in op.scope],
        op.period.value,
        op.unit.value,
        op.bucket,
        op.amount,
        op.limit,
        op.hard,
        [list(level) for level in op.levels],
        op.resets_at,
        op.expires_at,
        op.previous_key,
    ]


def op_from_json(data: Sequence[object]) -> CounterOp:
    """Inverse of `op_to_json`."""
    (key, ceiling_id, scope, period, unit, bucket, amount, limit, hard, levels, resets, expires) = data[:12]
    previous = data[12] if len(data) > 12 else None
    return CounterOp(
        key=str(key),
        ceiling_id=str(ceiling_id),
        scope=tuple((str(a), str(b)) for a, b in scope),  # type: ignore[attr-defined]
        period=Period(period),
        unit=Unit(unit),
        bucket=str(bucket),
        amount=int(amount),  # type: ignore[call-overload]
        limit=int(limit),  # type: ignore[call-overload]
        hard=bool(hard),
        levels=tuple((float(t), int(v)) for t, v in levels),  # type: ignore[attr-defined]
        resets_at=None if resets is None else float(resets),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        previous_key=None if previous is None else str(previous),
    )
