"""A call served (partly) from slices: the plan left for the store, the outcome over the whole plan, and
its audit line's view of the leased counters (`engine.leases` keeps the books)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.decisions import ceilings_data
from costguard.engine.evaluate import ReserveOutcome
from costguard.engine.slices import Slice, Take

__all__ = ["LeasedView", "cold_plan", "leased_ceilings", "leased_view", "local_outcome"]


def cold_plan(plan: ReservePlan, take: Take) -> ReservePlan:
    """`plan` with only the counters the store reserves for this call (registry indexes re-pointed)."""
    cold = take.cold
    if not any(op.counts_new >= 0 for op in cold):
        return replace(plan, counters=cold)
    index = {op.key: i for i, op in enumerate(cold)}
    ops = tuple(
        replace(op, counts_new=index[plan.counters[op.counts_new].key]) if op.counts_new >= 0 else op for op in cold
    )
    return replace(plan, counters=ops)


def local_outcome(
    plan: ReservePlan, take: Take, cold_counters: Sequence[CounterOp] = (), cold: ReserveOutcome | None = None
) -> ReserveOutcome:
    """The outcome of a call served (partly) from slices, over the whole plan: the store's totals for
    its counters, this process's view (before the slice plus what it used) for the leased ones."""
    totals: dict[str, int] = {}
    for slice_, _ in take.parts:
        base, used = slice_.base, slice_.used
        for key, unit in slice_.slots:
            totals[key] = base.get(key, 0) + used[unit]
    if cold is not None:
        totals.update(zip((op.key for op in cold_counters), cold.totals, strict=True))
    get = totals.get
    return ReserveOutcome(
        True,
        tuple([get(op.key, 0) for op in plan.counters]),
        crossings=() if cold is None else cold.crossings,
    )


def leased_ceilings(take: Take) -> list[dict[str, object]]:
    """The audit `leased_ceilings` of a call served (partly) from slices: each covered counter with its
    total as this process sees it (the store's before the slice, plus what it used, this call included)."""
    return leased_view(take).ceilings()


class LeasedView:
    """What a call's slices stood at when it was admitted — the few numbers `leased_ceilings` is made
    from, kept so the audit line can be written out later, off the request thread."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[tuple[Slice, dict[str, int], tuple[int, ...]]]) -> None:
        self._parts = parts

    def ceilings(self) -> list[dict[str, object]]:
        """The audit `leased_ceilings` (see `leased_ceilings`)."""
        out: list[dict[str, object]] = []
        for slice_, base, used in self._parts:
            holder = ReservePlan(reservation_id="", at=0.0, labels=(), counters=slice_.ops, estimate_usd=0)
            out.extend(ceilings_data(holder, [base.get(key, 0) + used[unit] for key, unit in slice_.slots]))
        return out


def leased_view(take: Take) -> LeasedView:
    """The slices of `take` as they stand now (a slice's base is replaced, never changed; its use is copied)."""
    return LeasedView([(slice_, slice_.base, tuple(slice_.used)) for slice_, _ in take.parts])
