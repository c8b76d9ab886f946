"""A slice of a hot counter group's headroom, what one call took from slices, and a slice to reserve.

`engine.leases` keeps the books of which slice serves which group; this is one slice's arithmetic:
whether a call fits, when the next one is due, what its calls cost, and its write-ahead *mark* — how
much this process may have used of it as far as a crash can tell. Before a call takes a slice past its
last mark (or its actual cost does, when it ends), the holder records the next mark durably, a step
ahead (`MARK_STEPS`): a process killed with slices is settled at its marks by the next process, which
never counts less than the slice's calls used and at most about one step more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.model import Unit

__all__ = ["LEASE_PREFIX", "MARK_STEPS", "UNITS", "Grant", "GroupKey", "Slice", "Take", "is_lease"]

# Reservation ids of slices start with this.
LEASE_PREFIX = "lease-"
# A mark moves a slice's recorded use ahead in steps of this fraction (1/n) of the slice: one record per
# step, not per call, and a crashed holder's slice counts at most one step more than its calls used.
MARK_STEPS = 8

UNITS = (Unit.USD, Unit.CALLS, Unit.TOKENS)
INDEX = {unit: i for i, unit in enumerate(UNITS)}
GroupKey = tuple[str, tuple[tuple[str, str], ...]]


def is_lease(reservation_id: str) -> bool:
    """Whether a reservation id is a slice's."""
    return reservation_id.startswith(LEASE_PREFIX)


@dataclass(eq=False)
class Slice:
    """One slice: what was reserved in the store, and what this process has used of it."""

    lease_id: str
    group: GroupKey
    keys: tuple[str, ...]  # the group's counter keys (a new period bucket is a new slice)
    ops: tuple[CounterOp, ...]  # as reserved: `amount` is the slice in the counter's unit
    granted: list[int]  # per unit (USD, calls, tokens)
    base: dict[str, int]  # each counter's total in the store beside the slice (for decisions); replaced, never changed
    expires: float
    used: list[int] = field(default_factory=lambda: [0, 0, 0])  # in-flight estimates + finished actuals
    spent: list[int] = field(default_factory=lambda: [0, 0, 0])  # finished actuals
    # What a crash can tell it used, per unit: the last mark recorded durably (by `costguard.slicemarks`).
    marked: list[int] = field(default_factory=lambda: [0, 0, 0])
    inflight: int = 0
    retired: bool = False
    slots: tuple[tuple[str, int], ...] = field(init=False)  # each counter's key and its unit's place in `used`

    def __post_init__(self) -> None:
        self.slots = tuple((op.key, INDEX[op.unit]) for op in self.ops)

    def fits(self, amounts: Sequence[int]) -> bool:
        """Whether a call needing `amounts` (per unit) fits in what is left."""
        used, granted = self.used, self.granted
        return (
            used[0] + amounts[0] <= granted[0]
            and used[1] + amounts[1] <= granted[1]
            and (used[2] + amounts[2] <= granted[2])
        )

    def nearly_spent(self, amounts: Sequence[int], now: float, period_s: float) -> bool:
        """Three quarters used (with this call) or three quarters of its life gone: time for the next."""
        if now >= self.expires - period_s / 4:
            return True
        used, granted = self.used, self.granted
        return bool(
            (granted[0] and 4 * (used[0] + amounts[0]) > 3 * granted[0])
            or (granted[1] and 4 * (used[1] + amounts[1]) > 3 * granted[1])
            or (granted[2] and 4 * (used[2] + amounts[2]) > 3 * granted[2])
        )

    def total(self, op: CounterOp) -> int:
        """A counter's total as far as this process knows (before the slice, plus what it used of it)."""
        return self.base.get(op.key, 0) + self.used[INDEX[op.unit]]

    def settlement(self) -> dict[Unit, int]:
        """What the slice's calls cost, per unit: the slice's commit (the rest of it goes back)."""
        return {unit: self.spent[i] for i, unit in enumerate(UNITS)}

    def unmarked(self) -> bool:
        """Whether it has used more than its last mark (in any unit): a new mark is due before going on."""
        used, marked = self.used, self.marked
        return used[0] > marked[0] or used[1] > marked[1] or used[2] > marked[2]

    def next_mark(self) -> list[int]:
        """The next mark: a step (1/`MARK_STEPS` of the slice) beyond what it has used, never past the
        slice — unless actual costs above their estimates took it past already — and never below the last."""
        return [
            max(marked, used, min(granted, used + -(-granted // MARK_STEPS)))
            for marked, used, granted in zip(self.marked, self.used, self.granted, strict=True)
        ]


@dataclass(eq=False)
class Take:
    """What one call took from slices (given back on release, settled locally on commit)."""

    parts: list[tuple[Slice, tuple[int, int, int]]]
    cold: tuple[CounterOp, ...]  # the counters the store reserves for this call, one by one


@dataclass(frozen=True)
class Grant:
    """A slice to reserve for a hot group: one ordinary reservation of `calls` calls' worth."""

    group: GroupKey
    plan: ReservePlan
    per_call: tuple[int, int, int]
    calls: int
    epoch: int = 0  # the control state it was planned under (a change since: given back, not used)
