"""The atomic step every store runs under its lock: check the hard counters of a plan, add to all or
none, claim the crossings; and what a commit or release changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.crossings import Crossing, claim_crossings, may_cross
from costguard.model import Unit

__all__ = [
    "CommitOutcome",
    "ReserveOutcome",
    "effective_amounts",
    "evaluate_reserve",
    "fits",
    "settle_deltas",
    "ttl_ran_out",
]


@dataclass(frozen=True)
class ReserveOutcome:
    """What the store did: all counters incremented (`allowed`) or none, and why."""

    allowed: bool
    totals: tuple[int, ...]
    blocked: int | None = None
    crossings: tuple[Crossing, ...] = ()
    amounts: tuple[int, ...] = ()  # what was added to each counter (registry counters: 1 or 0)
    expired: bool = False  # refused because the `blocked` counter's ttl ran out, not for want of room
    # A slice's reserve (`engine.leases.is_lease`): each counter's live slices after it, this one included
    # (empty for an ordinary reservation, which never reads them).
    holders: tuple[int, ...] = ()


@dataclass(frozen=True)
class CommitOutcome:
    """Result of a commit or release; `applied` is False when the id was already settled or unknown."""

    applied: bool
    counters: tuple[CounterOp, ...] = ()
    totals: tuple[int, ...] = ()
    crossings: tuple[Crossing, ...] = ()


def fits(total: int, amount: int, limit: int) -> bool:
    """A hard counter admits `amount` only while it has room; a full counter admits nothing."""
    return total + amount <= limit and total < limit


def effective_amounts(counters: Sequence[CounterOp], new: Sequence[bool] | None) -> tuple[int, ...]:
    """What a reservation adds to each counter: its amount, and for a registry counter 1 when the
    instance counter it watches is new (`new[i]`: counter i is created by this reservation), else 0."""
    return tuple(op.amount if op.counts_new < 0 else int(new is not None and new[op.counts_new]) for op in counters)


def ttl_ran_out(op: CounterOp, first: float | None, now: float) -> bool:
    """Whether a counter's `ttl` has run out: `first` is its first admitted call (None: none yet)."""
    return op.ttl_s is not None and first is not None and now >= first + op.ttl_s


def evaluate_reserve(
    plan: ReservePlan,
    current: Sequence[int],
    fired: Sequence[set[str]],
    new: Sequence[bool] | None = None,
    first: Sequence[float | None] | None = None,
) -> ReserveOutcome:
    """The atomic step every store runs under its lock: check all hard counters, then add to all or none.

    `current` holds each counter's committed + reserved total; `fired` sets are updated in place with
    the thresholds this reservation claims, and the store persists them with the new totals. `new`
    says which counters this reservation creates (registry counters count those); `amounts` in the
    outcome is what to add to each (to `committed` for a registry counter, `reserved` for the rest).
    `first` holds each counter's first admitted call (kept for counters with a `ttl_s`): one whose
    ttl ran out refuses the call before any limit is checked, claiming no threshold. When the call is
    allowed the store records `plan.at` as the first call of every ttl counter that has none.
    """
    counters = plan.counters
    amounts = effective_amounts(counters, new) if plan.has_registry else tuple(op.amount for op in counters)
    if not plan.force:
        if first is not None:
            for index, op in enumerate(counters):
                if ttl_ran_out(op, first[index], plan.at):
                    return ReserveOutcome(False, tuple(current), index, (), amounts, expired=True)
        for index, op in enumerate(counters):
            # A registry counter checks only a new instance: known instances pass a full registry.
            if op.hard and (op.counts_new < 0 or amounts[index]) and not fits(current[index], amounts[index], op.limit):
                claimed = claim_crossings(op, current[index], fired[index], blocked=True)
                return ReserveOutcome(False, tuple(current), index, tuple(claimed), amounts)
    totals = tuple([total + amount for total, amount in zip(current, amounts, strict=True)])
    crossings: list[Crossing] = []
    for op, total, marks in zip(counters, totals, fired, strict=True):
        if may_cross(op, total, marks):
            crossings.extend(claim_crossings(op, total, marks))
    return ReserveOutcome(True, totals, None, tuple(crossings), amounts)


def settle_deltas(counters: Sequence[CounterOp], actual: Mapping[Unit, int] | None) -> list[tuple[int, int]]:
    """Per counter, (change to reserved, change to committed) for a commit (`actual`) or a release (None)."""
    if actual is None:
        return [(-op.amount, 0) for op in counters]
    return [(-op.amount, actual.get(op.unit, op.amount)) for op in counters]
