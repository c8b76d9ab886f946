"""Where a limit set at run time starts counting: the counter it counts with in the current period
bucket, whether the change makes that counter new (no ceiling counted that scope, period and unit so
far), and the spend history of the same scope that can tell what it spent before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import tzinfo

from costguard.engine.counters import CounterOp
from costguard.engine.keys import HISTORY_PREFIX, history_key
from costguard.engine.overrides import effective_limits
from costguard.engine.plan import HISTORY_KEEP_S, UTC, current_bucket, plan_reservation
from costguard.model import WILDCARD, Ceiling, Limit, Period, Unit, encode_scope, make_match
from costguard.periods import bucket_for

__all__ = ["LimitCounter", "limit_counter"]


@dataclass(frozen=True)
class LimitCounter:
    """The counter a run-time limit counts with this period, as `limit_counter` finds it."""

    # The scope's counter in the current bucket; None for a scope with '*' (one counter per instance).
    op: CounterOp | None
    # Whether the change makes the counter new: no ceiling counted this scope, period and unit before.
    new: bool
    # When the current bucket began (None: a `total` limit, which never starts over).
    since: float | None
    # The scope's hourly USD spend history since `since`, when it has one that covers the whole bucket.
    history: tuple[str, ...] = ()


def _instance(ceilings: Sequence[Ceiling], scope: Mapping[str, str]) -> Ceiling | None:
    """The ceiling a concrete scope is an instance of (as the guard applies an override to it)."""
    for ceiling in ceilings:
        if ceiling.id == encode_scope(scope) or (
            set(ceiling.match_dict) == set(scope) and ceiling.bind(scope) is not None
        ):
            return ceiling
    return None


def limit_counter(
    ceilings: Sequence[Ceiling],
    overrides: Mapping[str, Mapping[tuple[Period, Unit], int]],
    scope: Mapping[str, str],
    limit: Limit,
    now: float,
    tz: tzinfo,
) -> LimitCounter:
    """The counter that `limit` set on `scope` counts with at `now`, given the ceilings and overrides in
    force before the change (the guard's control state)."""
    bucket = bucket_for(limit.period, now, tz)
    if WILDCARD in scope.values():
        ceiling = next((c for c in ceilings if c.id == encode_scope(scope)), None)
        counted = ceiling is not None and any(
            (known.period, known.unit) == (limit.period, limit.unit)
            for known in effective_limits(ceiling, {}, overrides)
        )
        return LimitCounter(None, not counted, bucket.start)
    found = _instance(ceilings, scope)
    known = effective_limits(found, scope, overrides) if found is not None else []
    new = all((item.period, item.unit) != (limit.period, limit.unit) for item in known)
    if found is None:
        ceiling = Ceiling(make_match(scope), (limit,), name="runtime")
    else:
        ceiling = replace(found, limits=(*known, limit) if new else tuple(known))
    plan = plan_reservation(
        reservation_id="",
        ceilings=[ceiling],
        overrides={},
        labels=dict(scope),
        amounts={},
        now=now,
        tz=tz,
        thresholds=(),
        history=False,
    )
    (op,) = [
        op
        for op in plan.counters
        if (op.period, op.unit) == (limit.period, limit.unit) and not op.ceiling_id.startswith(HISTORY_PREFIX)
    ]
    history: tuple[str, ...] = ()
    # An instance with a USD limit keeps hourly history; it covers a bucket of whole UTC hours whose start
    # is still kept (not one that starts mid-hour, in a half-hour timezone, nor one that began long ago).
    tracked = found is not None and any(item.unit is Unit.USD for item in known)
    start = bucket.start
    if tracked and limit.unit is Unit.USD and start is not None and start % 3600 == 0 and now - start < HISTORY_KEEP_S:
        assert found is not None
        hours = range(int(start), int(now) + 1, 3600)
        history = tuple(history_key(found.id, scope, current_bucket(Period.HOUR, t, UTC)[0].id) for t in hours)
    return LimitCounter(op, new, bucket.start, history)
