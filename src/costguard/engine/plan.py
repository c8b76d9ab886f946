"""Planning a call: labels → matching ceilings → the counters it touches (period buckets, history,
`max_instances` registries) in key order, and moving a plan to a ceiling's shared overflow instance."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timezone, tzinfo

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.crossings import threshold_levels
from costguard.engine.keys import HISTORY_PREFIX, INSTANCES_PREFIX, counter_key, history_key
from costguard.engine.overrides import effective_limits
from costguard.model import OVERFLOW, WILDCARD, Ceiling, Period, Unit, literal_scope
from costguard.periods import Bucket, bucket_for

UTC = timezone.utc

__all__ = [
    "EXPIRY_GRACE_S",
    "HISTORY_KEEP_S",
    "HISTORY_LIMIT",
    "current_bucket",
    "matching",
    "overflow_plan",
    "plan_reservation",
]

# Counters outlive their period by this much so late commits and status reads still find them.
EXPIRY_GRACE_S = 2 * 86400.0

# History counters (`keys.HISTORY_PREFIX`) are kept 8 days; they ride along in every reservation (no
# extra round trip) and never block.
HISTORY_KEEP_S = 8 * 86400.0
HISTORY_LIMIT = 2**62


# The current bucket of each (period, timezone), and the id of the bucket before it: a period
# changes at most hourly, so planning a call recomputes calendars only when one has rolled over.
_buckets: dict[tuple[Period, tzinfo], tuple[Bucket, str | None]] = {}


def current_bucket(period: Period, now: float, tz: tzinfo) -> tuple[Bucket, str | None]:
    """(the bucket containing `now`, the previous bucket's id or None for `total`)."""
    cached = _buckets.get((period, tz))
    if cached is not None:
        bucket = cached[0]
        if bucket.start is None or (bucket.start <= now < bucket.end):  # type: ignore[operator]
            return cached
    bucket = bucket_for(period, now, tz)
    previous = None if bucket.start is None else bucket_for(period, bucket.start - 1, tz).id
    _buckets[(period, tz)] = (bucket, previous)
    return bucket, previous


def matching(ceilings: Iterable[Ceiling], labels: Mapping[str, str]) -> list[tuple[Ceiling, dict[str, str]]]:
    """Every ceiling that applies to a call with these labels, with the values it binds."""
    out = []
    for ceiling in ceilings:
        bound = ceiling.bind(labels)
        if bound is not None:
            out.append((ceiling, bound))
    return out


def plan_reservation(
    *,
    reservation_id: str,
    ceilings: Iterable[Ceiling],
    overrides: Mapping[str, Mapping[tuple[Period, Unit], int]],
    labels: Mapping[str, str],
    amounts: Mapping[Unit, int],
    now: float,
    tz: tzinfo,
    thresholds: Sequence[float],
    force: bool = False,
    history: bool = True,
) -> ReservePlan:
    """The counters a call touches and what to add to each, in key order (a stable lock order).

    With `history`, each ceiling instance with a USD limit also gets its hourly history counter.
    """
    ops: list[CounterOp] = []
    registry: dict[str, tuple[str, CounterOp]] = {}  # registry key -> (the instance counter it watches, itself)
    hour, _ = current_bucket(Period.HOUR, now, UTC)
    assert hour.end is not None
    for ceiling, bound in matching(ceilings, labels):
        limits = effective_limits(ceiling, bound, overrides)
        if history and any(limit.unit is Unit.USD for limit in limits):
            ops.append(
                CounterOp(
                    key=history_key(ceiling.id, bound, hour.id),
                    ceiling_id=HISTORY_PREFIX + ceiling.id,
                    scope=tuple(sorted(bound.items())),
                    period=Period.HOUR,
                    unit=Unit.USD,
                    bucket=hour.id,
                    amount=amounts.get(Unit.USD, 0),
                    limit=HISTORY_LIMIT,
                    hard=False,
                    levels=(),
                    resets_at=None,
                    expires_at=hour.end + HISTORY_KEEP_S,
                )
            )
        for limit in limits:
            bucket, previous_id = current_bucket(limit.period, now, tz)
            previous: str | None = None
            if limit.period is Period.TOTAL:
                expires = now + ceiling.expire_after_s if ceiling.expire_after_s else None
            else:
                assert bucket.end is not None
                assert previous_id is not None
                expires = bucket.end + EXPIRY_GRACE_S
                previous = counter_key(ceiling, bound, limit, previous_id)
            ops.append(
                CounterOp(
                    key=counter_key(ceiling, bound, limit, bucket.id),
                    ceiling_id=ceiling.id,
                    scope=tuple(sorted(bound.items())),
                    period=limit.period,
                    unit=limit.unit,
                    bucket=bucket.id,
                    amount=amounts.get(limit.unit, 0),
                    limit=limit.amount,
                    hard=ceiling.enforcement == "hard",
                    levels=threshold_levels(ceiling.thresholds or thresholds, limit.amount),
                    resets_at=bucket.end,
                    expires_at=expires,
                    previous_key=previous,
                    ttl_s=ceiling.ttl_s if limit.period is Period.TOTAL else None,
                )
            )
            if ceiling.max_instances is not None and WILDCARD in ceiling.match_dict.values():
                key = f"{INSTANCES_PREFIX}{ceiling.id}|{limit.period.value}|{bucket.id}"
                if key not in registry:  # one per period: the first unit's counter says whether it is new
                    registry[key] = (ops[-1].key, _registry_op(key, ceiling, ops[-1], ceiling.max_instances))
    ops.extend(op for _, op in registry.values())
    return ReservePlan(
        reservation_id=reservation_id,
        at=now,
        labels=tuple(sorted(labels.items())),
        counters=_in_key_order(ops, {key: watched for key, (watched, _) in registry.items()}),
        estimate_usd=amounts.get(Unit.USD, 0),
        force=force,
    )


def _registry_op(key: str, ceiling: Ceiling, instance: CounterOp, max_instances: int) -> CounterOp:
    """The counter of distinct instances of `ceiling` in `instance`'s period bucket."""
    return CounterOp(
        key=key,
        ceiling_id=INSTANCES_PREFIX + ceiling.id,
        scope=(),
        period=instance.period,
        unit=Unit.CALLS,
        bucket=instance.bucket,
        amount=1,
        limit=max_instances,
        hard=True,
        levels=(),
        resets_at=instance.resets_at,
        expires_at=instance.expires_at,
    )


def _in_key_order(ops: Sequence[CounterOp], watching: Mapping[str, str]) -> tuple[CounterOp, ...]:
    """Counters sorted by key (a stable lock order), each registry counter pointed at the index of the
    instance counter it watches (`watching`: registry key → instance counter key)."""
    ordered = sorted(ops, key=lambda op: op.key)
    if not watching:
        return tuple(ordered)
    index = {op.key: i for i, op in enumerate(ordered)}
    return tuple(replace(op, counts_new=index[watching[op.key]]) if op.key in watching else op for op in ordered)


def overflow_plan(plan: ReservePlan, ceiling: Ceiling) -> ReservePlan:
    """`plan` with `ceiling`'s instance (and its history) moved to the ceiling's shared `OVERFLOW`
    instance, without its registry counters: for a new instance past `max_instances` with
    `overflow: share`."""
    shared = {name: OVERFLOW if wanted == WILDCARD else wanted for name, wanted in ceiling.match}
    scope = tuple(sorted(shared.items()))
    literal = literal_scope(shared)

    def moved(key: str) -> str:
        parts = key.split("|")  # `<ceiling>|<scope>|…` / `history|<ceiling>|<scope>|…`: values are encoded
        parts[2 if key.startswith(HISTORY_PREFIX) else 1] = literal
        return "|".join(parts)

    watching = {op.key: plan.counters[op.counts_new].key for op in plan.counters if op.counts_new >= 0}
    ops: list[CounterOp] = []
    for op in plan.counters:
        if op.ceiling_id == INSTANCES_PREFIX + ceiling.id:
            continue
        if op.ceiling_id in (ceiling.id, HISTORY_PREFIX + ceiling.id):
            previous = None if op.previous_key is None else moved(op.previous_key)
            ops.append(replace(op, key=moved(op.key), scope=scope, previous_key=previous))
        else:
            ops.append(op)
    kept = {registry: watched for registry, watched in watching.items() if any(o.key == registry for o in ops)}
    return replace(plan, counters=_in_key_order([replace(op, counts_new=-1) for op in ops], kept))
