"""`memory://`: everything in this process, under one lock. For tests and single-process apps."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from costguard.engine import (
    EXPIRY_GRACE_S,
    CommitOutcome,
    CounterOp,
    Crossing,
    LimitOverride,
    ReserveOutcome,
    ReservePlan,
    all_expired,
    claim_crossings,
    clear_previous,
    evaluate_reserve,
    is_lease,
    may_cross,
    reserve_record,
    settle_deltas,
)
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit, encode_scope
from costguard.stores.base import Control, CounterRow, KillSwitchState, RunKeyState, Store

__all__ = ["MemoryStore"]


@dataclass
class _Counter:
    op: CounterOp
    committed: int = 0
    reserved: int = 0
    leased: int = 0  # the part of `reserved` live slices hold (engine.leases)
    holders: int = 0  # how many live slices hold it
    fired: set[str] = field(default_factory=set)
    first: float | None = None  # its first admitted call, for a counter with a ttl

    @property
    def total(self) -> int:
        return self.committed + self.reserved


@dataclass
class _Reservation:
    counters: tuple[CounterOp, ...]
    settled: bool = False
    at: float = 0.0
    held: list[_Counter] = field(default_factory=list)
    lease: bool = False  # a slice's: its counters count it in `leased` and `holders` until it is settled


class MemoryStore(Store):
    """In-process store; `max_audit` bounds the audit log kept in memory, `max_settled` the settled
    reservations kept so that a commit asked again stays a no-op (the newest; a remote store keeps them a
    day, for a retry after a lost reply — in process no reply is lost, and a day of a busy process's
    calls would be millions of objects for the collector to walk)."""

    remote = False
    leases = False

    def __init__(self, url: str = "memory://", *, max_audit: int = 100_000, max_settled: int = 10_000) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._settled: deque[str] = deque()  # settled reservation ids, oldest first
        self._max_settled = max_settled
        self._killswitches: dict[str, KillSwitchState] = {}
        self._overrides: dict[tuple[str, Period, Unit], LimitOverride] = {}
        self._keys: dict[str, RunKeyState] = {}
        # (id, record) pairs: the id is attached when a record is read, not on the call path.
        self._audit: deque[tuple[int, AuditRecord | _Allowed]] = deque(maxlen=max_audit)
        self._cache: dict[str, tuple[bytes, float]] = {}
        self._ids = itertools.count(1)

    def _append(self, record: AuditRecord | None) -> None:
        if record is not None:
            self._audit.append((next(self._ids), record))

    def _counter(self, op: CounterOp) -> _Counter:
        counter = self._counters.get(op.key)
        if counter is None:
            counter = self._counters[op.key] = _Counter(op)
        return counter

    def _clear_previous(self, ops: Sequence[CounterOp]) -> list[Crossing]:
        out: list[Crossing] = []
        for op in ops:
            if op.key not in self._counters and op.previous_key is not None:
                previous = self._counters.get(op.previous_key)
                if previous is not None:
                    out.extend(clear_previous(op, previous.total, previous.fired))
        return out

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        with self._lock:
            if plan.reservation_id in self._reservations:
                # Asked again (a lost reply, a spooled cost written twice): the first outcome stands.
                if plan.force:
                    return ReserveOutcome(True, ())
                return ReserveOutcome(True, tuple(self._total(op.key) for op in plan.counters))
            known = self._counters
            new = [op.key not in known for op in plan.counters]
            cleared = self._clear_previous(plan.counters) if any(new) else None
            counters = [known.get(op.key) or self._counter(op) for op in plan.counters]
            # The fired sets are claimed in place: this store is where they live.
            first = [c.first for c in counters] if plan.has_ttl else None
            outcome = evaluate_reserve(
                plan, [c.committed + c.reserved for c in counters], [c.fired for c in counters], new, first
            )
            if cleared:
                outcome = replace(outcome, crossings=(*cleared, *outcome.crossings))
            if outcome.allowed:
                lease = is_lease(plan.reservation_id)
                held = []
                for counter, op, amount in zip(counters, plan.counters, outcome.amounts, strict=True):
                    counter.op = op
                    if op.ttl_s is not None and counter.first is None:
                        counter.first = plan.at
                    if op.counts_new >= 0:
                        counter.committed += amount  # a registry counts instances for good
                    else:
                        counter.reserved += amount
                        held.append(counter)
                        if lease:
                            counter.leased += amount
                            counter.holders += 1
                self._reservations[plan.reservation_id] = _Reservation(
                    plan.settled_counters, at=plan.at, held=held, lease=lease
                )
                if lease:
                    outcome = replace(outcome, holders=tuple(c.holders for c in counters))
            else:
                # A refusal leaves no counter behind but the one that refused (its kill is claimed there):
                # ids minted for each request add nothing to the store.
                for op, created, index in zip(plan.counters, new, range(len(new)), strict=True):
                    if created and index != outcome.blocked:
                        del known[op.key]
            if record is not None:
                # An allowed call's line (its ceilings' spend and limit) is written out when it is read:
                # the plan and the totals it is made from never change.
                self._audit.append(
                    (next(self._ids), _Allowed(plan, outcome.totals, record))
                    if outcome.allowed
                    else (next(self._ids), reserve_record(plan, outcome, record))
                )
            return outcome

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None and actual is None:
                # A release of a reserve whose outcome was never known: a tombstone, so that reserve
                # arriving late changes nothing.
                self._reservations[reservation_id] = _Reservation((), settled=True, at=at)
                self._keep_settled(reservation_id)
            if reservation is None or reservation.settled:
                return CommitOutcome(applied=False)
            reservation.settled = True
            reservation.at = at
            self._keep_settled(reservation_id)
            totals: list[int] = []
            crossings: list[Crossing] = []
            held = reservation.held or [self._counter(op) for op in reservation.counters]
            reservation.held = []
            known = self._counters
            for op, kept, (d_reserved, d_committed) in zip(
                reservation.counters, held, settle_deltas(reservation.counters, actual), strict=True
            ):
                # A counter purged meanwhile (a settle long after its period) is created again.
                counter = kept if known.get(op.key) is kept else self._counter(op)
                counter.reserved += d_reserved
                counter.committed += d_committed
                if reservation.lease:  # never below 0: a counter purged meanwhile starts again from 0
                    counter.leased = max(0, counter.leased + d_reserved)
                    counter.holders = max(0, counter.holders - 1)
                total = counter.committed + counter.reserved
                totals.append(total)
                if may_cross(op, total, counter.fired):
                    crossings.extend(claim_crossings(op, total, counter.fired))
            self._append(record)
            return CommitOutcome(True, reservation.counters, tuple(totals), tuple(crossings))

    def _keep_settled(self, reservation_id: str) -> None:
        """Remember a settled reservation among the newest `max_settled` (under the lock)."""
        settled = self._settled
        settled.append(reservation_id)
        while len(settled) > self._max_settled:
            oldest = settled.popleft()
            kept = self._reservations.get(oldest)
            if kept is not None and kept.settled:  # (purged already, or asked again: nothing to drop)
                del self._reservations[oldest]

    def start_counter(self, op: CounterOp, committed: int, at: float) -> bool:
        with self._lock:
            if op.key in self._counters:
                return False
            self._counters[op.key] = _Counter(op, committed=committed)
            return True

    def _total(self, key: str) -> int:
        counter = self._counters.get(key)
        return 0 if counter is None else counter.total

    def totals(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            return [self._total(k) for k in keys]

    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        with self._lock:
            return [
                CounterRow(
                    c.op.key,
                    c.op.ceiling_id,
                    c.op.scope,
                    c.op.period,
                    c.op.unit,
                    c.op.bucket,
                    c.committed,
                    c.reserved,
                    c.leased,
                    c.holders,
                )
                for c in self._counters.values()
                if buckets.get(c.op.period) == c.op.bucket
            ]

    def control(self) -> Control:
        with self._lock:
            return Control(
                tuple(self._killswitches.values()), tuple(self._overrides.values()), tuple(self._keys.values())
            )

    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        key = encode_scope(dict(state.scope))
        with self._lock:
            changed = (key in self._killswitches) != active
            if active and changed:
                self._killswitches[key] = state
            elif not active:
                self._killswitches.pop(key, None)
            if changed:
                self._append(record)
            return changed

    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        key = (override.scope_key, override.period, override.unit)
        with self._lock:
            if clear:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = override
            self._append(record)

    def set_run_key(self, state: RunKeyState, record: AuditRecord, remove: bool = False) -> None:
        with self._lock:
            if remove:
                self._keys.pop(state.id, None)
            else:
                self._keys[state.id] = state
            self._append(record)

    def append(self, records: Sequence[AuditRecord]) -> None:
        with self._lock:
            for record in records:
                self._append(record)

    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        with self._lock:
            out = []
            unpaged = replace(query, before_id=None)  # stored records carry no id; paged here
            for record_id, kept in reversed(self._audit):
                if query.before_id is not None and record_id >= query.before_id:
                    continue
                stored = kept.record() if isinstance(kept, _Allowed) else kept
                if unpaged.matches(stored):
                    out.append(replace(stored, id=record_id))
                    if len(out) >= query.limit:
                        break
            return out

    def cache_get(self, key: str, now: float) -> bytes | None:
        with self._lock:
            entry = self._cache.get(key)
            return entry[0] if entry is not None and entry[1] > now else None

    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        with self._lock:
            self._cache[key] = (value, expires_at)

    def purge(self, now: float) -> int:
        with self._lock:
            dead = [k for k, c in self._counters.items() if c.op.expires_at is not None and c.op.expires_at < now]
            for key in dead:
                del self._counters[key]
            # A settled reservation is kept a day so a retried commit still finds it and stays a no-op.
            old = [
                k
                for k, r in self._reservations.items()
                if (r.settled and r.at < now - 86400)
                # one never settled (its process died) goes once every counter it touched has expired
                or (not r.settled and r.at < now - EXPIRY_GRACE_S and all_expired(r.counters, now))
            ]
            for key in old:
                del self._reservations[key]
            stale = [k for k, (_, expires) in self._cache.items() if expires <= now]
            for key in stale:
                del self._cache[key]
            return len(dead) + len(old) + len(stale)


class _Allowed:
    """An allowed reserve's audit line, kept as what it is made from until it is read."""

    __slots__ = ("_plan", "_record", "_totals")

    def __init__(self, plan: ReservePlan, totals: tuple[int, ...], record: AuditRecord) -> None:
        self._plan = plan
        self._totals = totals
        self._record = record

    def record(self) -> AuditRecord:
        return reserve_record(self._plan, ReserveOutcome(True, self._totals), self._record)
