"""Leases: slices of a hot counter group's headroom, reserved in the store and spent in this process.

A *group* is the counters of one ceiling instance (a ceiling and the label values it binds: its
periods, units and its history counter): every call that touches one of them touches all of them,
with the same amounts. When this process calls a group often, it reserves a *slice* — an ordinary
atomic reservation of about `period_s` of its own recent use, never more than `HEADROOM_SHARE`-th
of the headroom the store last reported nor more than a fair share of it among the slices that
hold the counter (headroom / (holders + 1), holders as the store counted them at this process's
last slice) — and admits the group's next calls from the slice without a round trip. The store
counts the whole slice as reserved (and apart, as leased by one more holder), so committed +
reserved never passes a limit however the fleet's slices are spent: the cap stays exact. A slice is
retired when it is used up, older than `period_s`, revoked (a control change) or closed, and
settled (what its calls really cost; the rest goes back) once its last call in flight has finished.

Pure bookkeeping: no I/O and no locks (`costguard.leasing` holds its lock around every method). One
slice's own arithmetic, its write-ahead marks included, is `engine.slices`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.evaluate import ReserveOutcome
from costguard.engine.keys import HISTORY_PREFIX
from costguard.engine.slices import INDEX, LEASE_PREFIX, Grant, GroupKey, Slice, Take, is_lease
from costguard.model import Unit

__all__ = [
    "HEADROOM_SHARE",
    "HOT_CALLS",
    "LEASE_PREFIX",
    "MIN_SLICE_CALLS",
    "Grant",
    "LeaseBook",
    "Slice",
    "Take",
    "is_lease",
]

# Calls of a group within one lease period that make it hot (worth a slice).
HOT_CALLS = 8
# A slice is at least this many calls' worth (smaller ones cost the store more than they save); with less
# headroom than that share, calls are reserved one by one, exactly as without leases.
MIN_SLICE_CALLS = 16
# A slice takes at most this fraction (1/n) of the headroom the store last reported for its counters, so
# a fleet of processes leasing the same counter holds a small part of it at any time (32 processes:
# at most 40 %), and near the cap — under MIN_SLICE_CALLS x HEADROOM_SHARE (1 024) calls' worth — nobody
# leases: headroom a slice holds is never what another process is refused for long.
HEADROOM_SHARE = 64
# A slice is also at most a fair share of that headroom among the slices holding the counter: headroom /
# (holders + 1), the holders as the store counted them (`ReserveOutcome.holders`) — it binds past
# HEADROOM_SHARE - 1 other holders.
# ... and at most this many calls' worth (bounds what a crashed holder leaves counted).
MAX_SLICE_CALLS = 10_000
_Part = tuple[GroupKey, tuple[int, ...], tuple[str, ...]]  # a group of a call: its key, counter indexes and keys


def _group_of(op: CounterOp) -> GroupKey:
    return (op.ceiling_id.removeprefix(HISTORY_PREFIX), op.scope)


@dataclass(eq=False)
class _Group:
    window_start: float
    calls: int = 0
    rate: int = 0  # calls in the last full window
    slice: Slice | None = None
    tight_until: float = float("-inf")  # the store refused a slice: calls go one by one until then
    granting: bool = False  # a slice is being reserved (one at a time per group)
    totals: dict[str, int] = field(default_factory=dict)  # last totals the store reported, per counter key
    # Live slices holding each counter, as the store counted them after this process's last slice (its own included).
    holders: dict[str, int] = field(default_factory=dict)


_NOT_LEASED: GroupKey = ("", ())


class LeaseBook:
    """Every group this process has called lately, its slice, and the retired slices to settle."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._groups: dict[GroupKey, _Group] = {}
        self._control: object = None
        self._epoch = 0  # bumped at every control change
        self._split: dict[int, tuple[tuple[CounterOp, ...], list[_Part]]] = {}
        self._done: list[Slice] = []  # retired, no call in flight: to settle in the store

    # ----------------------------------------------------------------- admission
    def take(
        self, plan: ReservePlan, amounts: Mapping[Unit, int], now: float, *, count: bool = True
    ) -> tuple[Take | None, list[Grant]]:
        """Admit the call from slices where they cover its groups.

        Returns what was taken (None when no slice covered anything) with the counters left for the
        store, and the slices worth reserving for hot groups that no slice covers. Those groups are left
        to the store for now; after `install`, `give_back` and `take(count=False)` cover them.
        """
        per_call = (amounts.get(Unit.USD, 0), amounts.get(Unit.CALLS, 0), amounts.get(Unit.TOKENS, 0))
        counters = plan.counters
        covered: list[tuple[Slice, tuple[int, int, int]]] = []
        cold: list[int] = []
        grants: list[Grant] = []
        for key, indexes, keys in self._groups_of(counters):
            if key is _NOT_LEASED:  # a `max_instances` registry and what it counts, a run with a ttl
                cold.extend(indexes)
                continue
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(window_start=now)
            if count:
                if now - group.window_start >= self.period_s:
                    group.rate = group.calls if now - group.window_start < 2 * self.period_s else 0
                    group.calls, group.window_start = 0, now
                group.calls += 1
            current = group.slice
            if current is not None:
                fresh = now < current.expires and current.keys == keys
                if fresh and current.fits(per_call):
                    covered.append((current, per_call))
                    if not group.granting and current.nearly_spent(per_call, now, self.period_s):
                        # The next slice is reserved while this one still serves: no call waits for it.
                        grant = self._grant(key, group, [counters[i] for i in indexes], per_call, now)
                        if grant is not None:
                            grants.append(grant)
                    continue
                self._retire(group)  # used up, old, or of a bucket gone by
            cold.extend(indexes)
            grant = self._grant(key, group, [counters[i] for i in indexes], per_call, now)
            if grant is not None:
                grants.append(grant)
        if not covered:
            return None, grants
        for slice_, part in covered:
            used = slice_.used
            used[0] += part[0]
            used[1] += part[1]
            used[2] += part[2]
            slice_.inflight += 1
        cold.sort()
        return Take(covered, tuple(counters[i] for i in cold)), grants

    def _groups_of(self, counters: tuple[CounterOp, ...]) -> list[_Part]:
        """The call's counters by group, in plan order: the group, its counters' indexes and keys
        (cached per planned tuple of counters)."""
        cached = self._split.get(id(counters))
        if cached is not None and cached[0] is counters:
            return cached[1]
        # Never leased: a `max_instances` registry and the instances it counts, and a run with a `ttl`
        # (the store refuses it the moment the ttl runs out; a slice would not).
        registered = {counters[op.counts_new].ceiling_id for op in counters if op.counts_new >= 0}
        registered.update(op.ceiling_id for op in counters if op.ttl_s is not None)
        groups: dict[GroupKey, list[int]] = {}
        for i, op in enumerate(counters):
            key = _group_of(op)
            if op.counts_new >= 0 or key[0] in registered:
                key = _NOT_LEASED
            groups.setdefault(key, []).append(i)
        split = [(key, tuple(indexes), tuple(counters[i].key for i in indexes)) for key, indexes in groups.items()]
        if len(self._split) > 4096:
            self._split.clear()
        self._split[id(counters)] = (counters, split)
        return split

    def _grant(
        self, key: GroupKey, group: _Group, ops: list[CounterOp], per_call: tuple[int, int, int], now: float
    ) -> Grant | None:
        """A slice for a hot group, sized to its recent use and the headroom last reported; None if none."""
        if group.granting or now < group.tight_until or max(group.rate, group.calls) < HOT_CALLS:
            return None
        # About one period of this process's use: the last full window, or this one's pace so far.
        elapsed = max(now - group.window_start, self.period_s / 20)
        calls = min(max(group.rate, int(group.calls * self.period_s / elapsed)), MAX_SLICE_CALLS)
        own = 1 if group.slice is not None else 0  # this process's live slice, counted among the holders
        for op in ops:
            if not op.hard or op.amount <= 0:
                continue
            total = group.totals.get(op.key)
            if total is None:
                return None  # the store hasn't said where this counter stands: one more call one by one
            # A fair share among the other slices holding the counter and this one, never more than 1/HEADROOM_SHARE.
            share = max(HEADROOM_SHARE, max(0, group.holders.get(op.key, 0) - own) + 1)
            calls = min(calls, (op.limit - total) // (op.amount * share))
        if calls < MIN_SLICE_CALLS:
            return None
        lease = ReservePlan(
            reservation_id=LEASE_PREFIX + os.urandom(12).hex(),
            at=now,
            labels=ops[0].scope,
            counters=tuple(_with_amount(op, calls * per_call[INDEX[op.unit]]) for op in ops),
            estimate_usd=calls * per_call[0],
        )
        group.granting = True
        return Grant(key, lease, per_call, calls, self._epoch)

    def install(self, grant: Grant, outcome: ReserveOutcome, now: float) -> bool:
        """The store's answer to a grant: the group's slice, or (refused) calls one by one for a period."""
        group = self._groups.get(grant.group)
        if group is None:
            group = self._groups[grant.group] = _Group(window_start=now)
        group.granting = False
        self.observe(grant.plan.counters, outcome.totals)
        if not outcome.allowed:
            group.tight_until = now + self.period_s
            return False
        counters = grant.plan.counters
        group.holders.update(zip((op.key for op in counters), outcome.holders))  # noqa: B905 - none from a repeat
        slice_ = Slice(
            lease_id=grant.plan.reservation_id,
            group=grant.group,
            keys=tuple(op.key for op in counters),
            ops=counters,
            granted=[grant.calls * grant.per_call[i] for i in range(3)],
            base={op.key: total - op.amount for op, total in zip(counters, outcome.totals, strict=True)},
            expires=now + self.period_s,
        )
        if grant.epoch != self._epoch:  # planned under limits or switches that changed since: given back
            slice_.retired = True
            self._done.append(slice_)
            return False
        self._retire(group)
        group.slice = slice_
        return True

    def observe(self, counters: Sequence[CounterOp], totals: Sequence[int]) -> None:
        """Remember where the store said counters stand (after any reserve this process made)."""
        groups = self._groups
        for op, total in zip(counters, totals):  # noqa: B905 - a repeated reserve may answer no totals
            group = groups.get(_group_of(op))
            if group is not None:
                group.totals[op.key] = total
                current = group.slice
                if current is not None and op.key in current.base:
                    # A reserve the store applied after the slice (its total holds the whole slice) also
                    # counts in what stands beside it: a call that went to the store while the slice was
                    # being reserved is then in the totals the slice's calls see.
                    beside = total - current.granted[INDEX[op.unit]]
                    if beside > current.base[op.key]:
                        current.base = {**current.base, op.key: beside}  # a new dict: views keep the old one

    # ----------------------------------------------------------------- a call ends
    def finish(self, take: Take, actual: Mapping[Unit, int] | None) -> None:
        """A call served from slices ended: its actual cost (None: released) replaces its estimate."""
        costs: tuple[int, int, int] | None = None
        for slice_, amounts in take.parts:
            slice_.inflight -= 1
            used = slice_.used
            if actual is None:
                used[0] -= amounts[0]
                used[1] -= amounts[1]
                used[2] -= amounts[2]
            else:
                if costs is None:  # every slice of a call takes the same amounts: priced once
                    costs = (
                        actual.get(Unit.USD, amounts[0]),
                        actual.get(Unit.CALLS, amounts[1]),
                        actual.get(Unit.TOKENS, amounts[2]),
                    )
                spent = slice_.spent
                for i in range(3):
                    used[i] += costs[i] - amounts[i]
                    spent[i] += costs[i]
            if not slice_.retired and not slice_.fits((0, 0, 0)):
                self._retire_slice(slice_)  # overdrawn: actual costs above their estimates
            elif slice_.retired and slice_.inflight == 0:
                self._done.append(slice_)

    # ----------------------------------------------------------------- retiring
    def _retire(self, group: _Group) -> None:
        if group.slice is not None:
            self._retire_slice(group.slice)

    def _retire_slice(self, slice_: Slice) -> None:
        if slice_.retired:
            return
        slice_.retired = True
        group = self._groups.get(slice_.group)
        if group is not None and group.slice is slice_:
            group.slice = None
        if slice_.inflight == 0:
            self._done.append(slice_)

    def retire(self, slice_: Slice) -> None:
        """Retire one slice (its spool refused a mark): no more calls from it, settled once they end."""
        self._retire_slice(slice_)

    def revoke_if_changed(self, control: object) -> None:
        """Retire every slice when the control state (kill switches, limits) differs from the one last seen."""
        if control is self._control:
            return
        if self._control is not None and control != self._control:
            self._epoch += 1
            self.retire_all()
        self._control = control

    def expire(self, now: float) -> None:
        """Retire slices older than their period; forget groups idle for a while."""
        for key, group in list(self._groups.items()):
            current = group.slice
            if current is not None and now >= current.expires:
                self._retire_slice(current)
            if group.slice is None and now - group.window_start > 4 * self.period_s:
                del self._groups[key]

    def retire_all(self) -> None:
        """Retire every slice (close, revocation)."""
        for group in self._groups.values():
            self._retire(group)

    def done(self) -> list[Slice]:
        """Retired slices with no call in flight, each handed out once: settle them in the store."""
        out, self._done = self._done, []
        return out

    def slices(self) -> list[Slice]:
        """The live slices."""
        return [g.slice for g in self._groups.values() if g.slice is not None]


def _with_amount(op: CounterOp, amount: int) -> CounterOp:
    new = object.__new__(CounterOp)
    new.__dict__.update(op.__dict__)
    new.__dict__["amount"] = amount
    return new
