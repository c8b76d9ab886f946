"""Thresholds: the counter levels at which they fire, and claiming each crossing once per counter and
period (`fired` sets), including clearing a kill when the limit is raised or a new period begins."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from costguard.engine.counters import CounterOp
from costguard.events import NEW_PERIOD

__all__ = [
    "CLEARED",
    "Crossing",
    "claim_crossings",
    "clear_previous",
    "crossings_from",
    "fired_name",
    "may_cross",
    "threshold_levels",
]


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


def threshold_levels(thresholds: Iterable[float], limit: int) -> tuple[tuple[float, int], ...]:
    """Absolute counter levels at which each threshold fires. 1.0 is always one of them, listed or not:
    a hard ceiling's `kill` fires when it first blocks, a soft one's `warn` at 100 %."""
    return _levels(tuple(thresholds), limit)


@functools.lru_cache(maxsize=4096)
def _levels(thresholds: tuple[float, ...], limit: int) -> tuple[tuple[float, int], ...]:
    return tuple((t, math.ceil(t * limit - 1e-9)) for t in sorted({*thresholds, 1.0}))


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


def may_cross(op: CounterOp, total: int, fired: set[str]) -> bool:
    """False when `claim_crossings` surely finds nothing (no thresholds, none claimed, none reached)."""
    return bool(op.levels) and (bool(fired) or (total > 0 and total >= op.levels[0][1]))
