"""Pure planning: labels → matching ceilings → counters → one reservation → threshold crossings.

Nothing here does I/O or reads a clock; the guard passes `now` in and carries out the plan.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timezone, tzinfo

from costguard.decision import Decision
from costguard.events import NEW_PERIOD, AuditRecord
from costguard.model import (
    OVERFLOW,
    WILDCARD,
    Ceiling,
    Limit,
    Period,
    Unit,
    encode_scope,
    literal_scope,
    make_match,
    micros_to_usd,
)
from costguard.periods import Bucket, bucket_for

UTC = timezone.utc

__all__ = [
    "CommitOutcome",
    "CounterOp",
    "Crossing",
    "LimitOverride",
    "ReserveOutcome",
    "ReservePlan",
    "all_expired",
    "apply_overrides",
    "claim_crossings",
    "clear_previous",
    "crossings_from",
    "fits",
    "plan_reservation",
]

# Counters outlive their period by this much so late commits and status reads still find them.
EXPIRY_GRACE_S = 2 * 86400.0

# Distinct instances of a wildcard ceiling with `max_instances`, one registry counter per period bucket.
INSTANCES_PREFIX = "instances|"

# Spend history for forecasts: per ceiling instance, one USD counter per UTC hour, kept 8 days.
# History counters ride along in every reservation (no extra round trip) and never block.
HISTORY_PREFIX = "history|"
HISTORY_KEEP_S = 8 * 86400.0
HISTORY_LIMIT = 2**62


def history_key(ceiling_id: str, bound: Mapping[str, str], hour_id: str) -> str:
    """The history counter of one ceiling instance in one UTC hour."""
    return f"{HISTORY_PREFIX}{ceiling_id}|{literal_scope(bound)}|usd|{hour_id}"


@dataclass(frozen=True)
class CounterOp:
    """One counter a reservation touches, with everything a store needs to check and update it."""

    key: str
    ceiling_id: str
    scope: tuple[tuple[str, str], ...]
    period: Period
    unit: Unit
    bucket: str
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
    def settled_counters(self) -> tuple[CounterOp, ...]:
        """The counters a commit or release adjusts: all but the registry counters, which are final."""
        if not self.has_registry:
            return self.counters
        return tuple(op for op in self.counters if op.counts_new < 0)


@dataclass(frozen=True)
class Crossing:
    """A threshold that a counter crossed, claimed once per counter and period across processes.

    `cleared` marks the opposite: a claimed limit threshold (the kill) that no longer holds because
    the limit was raised above the spend or a new period began; it is claimed once as well.
    """

    threshold: float
    counter: CounterOp
    total: int
    cleared: bool = False
    reason: str = ""


@dataclass(frozen=True)
class ReserveOutcome:
    """What the store did: all counters incremented (`allowed`) or none, and why."""

    allowed: bool
    totals: tuple[int, ...]
    blocked: int | None = None
    crossings: tuple[Crossing, ...] = ()
    amounts: tuple[int, ...] = ()  # what was added to each counter (registry counters: 1 or 0)


@dataclass(frozen=True)
class CommitOutcome:
    """Result of a commit or release; `applied` is False when the id was already settled or unknown."""

    applied: bool
    counters: tuple[CounterOp, ...] = ()
    totals: tuple[int, ...] = ()
    crossings: tuple[Crossing, ...] = ()


@dataclass(frozen=True)
class LimitOverride:
    """A limit set at run time; it wins over the config."""

    scope: tuple[tuple[str, str], ...]
    period: Period
    unit: Unit
    amount: int
    reason: str = ""
    actor: str | None = None
    at: float = 0.0

    @property
    def scope_key(self) -> str:
        return encode_scope(dict(self.scope))


def fits(total: int, amount: int, limit: int) -> bool:
    """A hard counter admits `amount` only while it has room; a full counter admits nothing."""
    return total + amount <= limit and total < limit


def threshold_levels(thresholds: Iterable[float], limit: int) -> tuple[tuple[float, int], ...]:
    """Absolute counter levels at which each threshold fires."""
    return _levels(tuple(thresholds), limit)


@functools.lru_cache(maxsize=4096)
def _levels(thresholds: tuple[float, ...], limit: int) -> tuple[tuple[float, int], ...]:
    return tuple((t, math.ceil(t * limit - 1e-9)) for t in sorted(set(thresholds)))


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


@functools.lru_cache(maxsize=256)
def fired_name(threshold: float) -> str:
    return format(threshold, "g")


# A counter's `fired` set holds `<threshold>@<limit when it fired>` entries, plus CLEARED once the
# kill claimed in its period has been cleared by the next period's first call.
CLEARED = "cleared"


def _fired_entries(fired: set[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for entry in fired:
        if entry == CLEARED:
            continue
        name, _, limit = entry.partition("@")
        out[name] = (entry, int(limit) if limit else 2**62)
    return out


def claim_crossings(counter: CounterOp, total: int, fired: set[str], *, blocked: bool = False) -> list[Crossing]:
    """Thresholds newly reached at `total` (a block claims the limit's own), marking them in `fired`.

    A threshold claimed under a lower limit is re-armed when the limit has since been raised above the
    spend; re-arming the limit threshold is reported as a `cleared` crossing (the kill is over).
    """
    if not counter.levels or (not fired and not blocked and (total <= 0 or total < counter.levels[0][1])):
        return []  # the common case: nothing claimed yet and the lowest threshold not reached
    out: list[Crossing] = []
    entries = _fired_entries(fired)
    for threshold, level in counter.levels:
        name = fired_name(threshold)
        claimed = entries.get(name)
        at_limit = threshold >= 1.0
        if claimed is not None:
            entry, fired_limit = claimed
            if counter.limit > fired_limit and total < level and not (blocked and at_limit):
                fired.discard(entry)
                if at_limit:
                    out.append(Crossing(threshold, counter, total, cleared=True, reason="limit raised"))
            continue
        reached = total > 0 and total >= level
        if reached or (blocked and at_limit):
            fired.add(f"{name}@{counter.limit}")
            out.append(Crossing(threshold, counter, total))
    return out


def clear_previous(counter: CounterOp, previous_total: int, previous_fired: set[str]) -> list[Crossing]:
    """The first call of a new period clears a kill claimed in the previous one, once (marked in the set)."""
    if CLEARED in previous_fired:
        return []
    limit_levels = [t for t, _ in counter.levels if t >= 1.0]
    entries = _fired_entries(previous_fired)
    hit = [t for t in limit_levels if fired_name(t) in entries]
    if not hit:
        return []
    previous_fired.add(CLEARED)
    return [Crossing(hit[0], counter, previous_total, cleared=True, reason=NEW_PERIOD)]


_CROSSING_KINDS = {0: (False, ""), 1: (True, "limit raised"), 2: (True, NEW_PERIOD)}


def crossings_from(ops: Sequence[CounterOp], flat: Sequence[int]) -> tuple[Crossing, ...]:
    """Crossings a store script reported as flat quadruples: counter index and level index (both from
    1), the total, and the kind (0 crossed, 1 cleared because the limit was raised, 2 cleared because a
    new period began)."""
    out = []
    for at in range(0, len(flat), 4):
        op = ops[int(flat[at]) - 1]
        cleared, reason = _CROSSING_KINDS[int(flat[at + 3])]
        out.append(Crossing(op.levels[int(flat[at + 1]) - 1][0], op, int(flat[at + 2]), cleared, reason))
    return tuple(out)


def all_expired(counters: Iterable[CounterOp], now: float) -> bool:
    """Whether every counter has expired (a counter without expiry never does)."""
    return all(op.expires_at is not None and op.expires_at < now for op in counters)


def effective_amounts(counters: Sequence[CounterOp], new: Sequence[bool] | None) -> tuple[int, ...]:
    """What a reservation adds to each counter: its amount, and for a registry counter 1 when the
    instance counter it watches is new (`new[i]`: counter i is created by this reservation), else 0."""
    return tuple(op.amount if op.counts_new < 0 else int(new is not None and new[op.counts_new]) for op in counters)


def evaluate_reserve(
    plan: ReservePlan, current: Sequence[int], fired: Sequence[set[str]], new: Sequence[bool] | None = None
) -> ReserveOutcome:
    """The atomic step every store runs under its lock: check all hard counters, then add to all or none.

    `current` holds each counter's committed + reserved total; `fired` sets are updated in place with
    the thresholds this reservation claims, and the store persists them with the new totals. `new`
    says which counters this reservation creates (registry counters count those); `amounts` in the
    outcome is what to add to each (to `committed` for a registry counter, `reserved` for the rest).
    """
    counters = plan.counters
    amounts = effective_amounts(counters, new) if plan.has_registry else tuple(op.amount for op in counters)
    if not plan.force:
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


def may_cross(op: CounterOp, total: int, fired: set[str]) -> bool:
    """False when `claim_crossings` surely finds nothing (no thresholds, none claimed, none reached)."""
    return bool(op.levels) and (bool(fired) or (total > 0 and total >= op.levels[0][1]))


def settle_deltas(counters: Sequence[CounterOp], actual: Mapping[Unit, int] | None) -> list[tuple[int, int]]:
    """Per counter, (change to reserved, change to committed) for a commit (`actual`) or a release (None)."""
    if actual is None:
        return [(-op.amount, 0) for op in counters]
    return [(-op.amount, actual.get(op.unit, op.amount)) for op in counters]


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


def index_overrides(overrides: Iterable[LimitOverride]) -> dict[str, dict[tuple[Period, Unit], int]]:
    """Overrides grouped by scope key."""
    index: dict[str, dict[tuple[Period, Unit], int]] = {}
    for item in overrides:
        index.setdefault(item.scope_key, {})[(item.period, item.unit)] = item.amount
    return index


def _instance_of(ceiling: Ceiling, scope: Mapping[str, str]) -> bool:
    return set(scope) == {name for name, _ in ceiling.match} and ceiling.bind(scope) is not None


def apply_overrides(ceilings: Sequence[Ceiling], overrides: Iterable[LimitOverride]) -> tuple[Ceiling, ...]:
    """Config ceilings plus a new ceiling for every override whose scope no ceiling covers."""
    ids = {c.id for c in ceilings}
    extra: dict[tuple[tuple[str, str], ...], list[Limit]] = {}
    for item in overrides:
        scope = dict(item.scope)
        if item.scope_key in ids or any(WILDCARD not in scope.values() and _instance_of(c, scope) for c in ceilings):
            continue
        extra.setdefault(make_match(scope), []).append(Limit(item.period, item.unit, item.amount))
    return tuple(ceilings) + tuple(
        Ceiling(match=match, limits=tuple(limits), name="runtime") for match, limits in extra.items()
    )


def effective_limits(
    ceiling: Ceiling, bound: Mapping[str, str], overrides: Mapping[str, Mapping[tuple[Period, Unit], int]]
) -> list[Limit]:
    """The ceiling's limits for these bound labels: config, then ceiling-wide, then per-instance overrides."""
    amounts = {(limit.period, limit.unit): limit.amount for limit in ceiling.limits}
    amounts.update(overrides.get(ceiling.id, {}))
    instance = encode_scope(bound)
    if instance != ceiling.id:
        amounts.update(overrides.get(instance, {}))
    return [Limit(period, unit, amount) for (period, unit), amount in amounts.items()]


def matching(ceilings: Iterable[Ceiling], labels: Mapping[str, str]) -> list[tuple[Ceiling, dict[str, str]]]:
    """Every ceiling that applies to a call with these labels, with the values it binds."""
    out = []
    for ceiling in ceilings:
        bound = ceiling.bind(labels)
        if bound is not None:
            out.append((ceiling, bound))
    return out


def counter_key(ceiling: Ceiling, bound: Mapping[str, str], limit: Limit, bucket: str) -> str:
    """One counter per (ceiling, bound label values, unit, period bucket); every part is encoded."""
    return f"{ceiling.id}|{literal_scope(bound)}|{limit.unit.value}|{limit.period.value}|{bucket}"


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


def _ratio(total: int, limit: int) -> float:
    if limit <= 0:
        return math.inf if total > 0 else 1.0
    return total / limit


def decide(plan: ReservePlan, outcome: ReserveOutcome, *, now: float, degrade_at: float | None) -> Decision:
    """Turn a store's outcome into the decision the caller, the fallback and the audit log see."""
    labels = dict(plan.labels)
    if not outcome.allowed:
        assert outcome.blocked is not None
        op = plan.counters[outcome.blocked]
        total = outcome.totals[outcome.blocked]
        if op.counts_new >= 0:
            return _too_many_instances(plan, op, total, labels, now)
        scope = dict(op.scope)
        retry = max(0.0, op.resets_at - now) if op.resets_at is not None else None
        unit = "USD" if op.unit is Unit.USD else op.unit.value
        return Decision(
            allowed=False,
            reason="budget_exceeded",
            labels=labels,
            scope=scope,
            period=op.period.value,
            unit=op.unit.value,
            spent=op.display(total),
            limit=op.display(op.limit),
            retry_after_s=round(retry, 3) if retry is not None else None,
            ratio=_ratio(total, op.limit),
            reservation_id=None,
            message=(
                f"{op.period.value} {unit} ceiling of {encode_scope(scope) or 'everything'} is "
                f"exhausted: {op.display(total):g} of {op.display(op.limit):g} spent, this call needs "
                f"{op.display(op.amount):g}"
            ),
        )
    ratio = 0.0
    soft_over = False
    for op, total in zip(plan.counters, outcome.totals, strict=True):
        value = _ratio(total, op.limit)
        if op.hard:
            ratio = max(ratio, value)
        elif value >= 1.0:
            soft_over = True
    degraded = soft_over or (degrade_at is not None and ratio >= degrade_at)
    return Decision(
        allowed=True,
        reason="allowed",
        labels=labels,
        ratio=ratio,
        degraded=degraded,
        reservation_id=plan.reservation_id,
        message="allowed (degraded)" if degraded else "allowed",
    )


def _too_many_instances(plan: ReservePlan, op: CounterOp, total: int, labels: dict[str, str], now: float) -> Decision:
    instance = plan.counters[op.counts_new]
    ceiling = op.ceiling_id.removeprefix(INSTANCES_PREFIX)
    retry = max(0.0, op.resets_at - now) if op.resets_at is not None else None
    return Decision(
        allowed=False,
        reason="max_instances",
        labels=labels,
        scope=dict(instance.scope),
        period=op.period.value,
        unit=Unit.CALLS.value,
        spent=float(total),
        limit=float(op.limit),
        retry_after_s=round(retry, 3) if retry is not None else None,
        ratio=_ratio(total, op.limit),
        message=(
            f"ceiling {ceiling} already has {total} distinct instances this {op.period.value} (max_instances "
            f"{op.limit}); new ones are refused (overflow: refuse)"
        ),
    )


def force(plan: ReservePlan) -> ReservePlan:
    """The same plan, recorded without checking limits (a cost incurred while the store was down)."""
    return replace(plan, force=True)


def reserve_record(plan: ReservePlan, outcome: ReserveOutcome, record: AuditRecord) -> AuditRecord:
    """The audit line of a reserve: a refusal is written as `blocked` with the ceiling that refused it."""
    if outcome.allowed or outcome.blocked is None:
        return record
    op = plan.counters[outcome.blocked]
    data = {
        **dict(record.data),
        "reason": "budget_exceeded",
        "scope": dict(op.scope),
        "period": op.period.value,
        "unit": op.unit.value,
        "spent": op.display(outcome.totals[outcome.blocked]),
        "limit": op.display(op.limit),
    }
    return replace(record, decision="blocked", data=data)
