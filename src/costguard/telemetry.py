"""What metrics read from a guard when scraped: each USD ceiling's spend, limit and reserve, with bounded series.

One `guard.status()` per scrape, kept `cache_s` seconds, so several scrapers (or an OpenTelemetry
reader and Prometheus) share a read. A ceiling with a `"*"` label (per customer, per run, ...) has
one counter per value; only its `top_n` by spend get their own series, the others are summed into
one whose `"*"` labels and `scope` read `__other__` — a million customers are `top_n + 1` series.
Shared by `costguard.metrics` (Prometheus) and `costguard.otel` (OpenTelemetry).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from costguard.errors import StoreError
from costguard.model import encode_scope
from costguard.status import CeilingStatus

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["DEFAULT_CACHE_S", "DEFAULT_TOP_N", "OTHER", "Series", "Snapshot", "Snapshots", "bounded_series"]

log = logging.getLogger("costguard")

OTHER = "__other__"
DEFAULT_TOP_N = 20
DEFAULT_CACHE_S = 5.0
# Labels every series has (empty when the ceiling does not bind them): `scope` tells the series apart,
# `feature` and `customer` are what dashboards filter on.
SERIES_LABELS = ("ceiling", "period", "feature", "customer", "scope")


@dataclass(frozen=True)
class Series:
    """One USD counter (or the sum of a ceiling's smaller ones) in its current period."""

    ceiling: str
    period: str
    feature: str
    customer: str
    scope: str
    spent_usd: float
    limit_usd: float
    reserved_usd: float
    leased_usd: float = 0.0  # the part of reserved_usd held by leased slices

    @property
    def labels(self) -> tuple[str, str, str, str, str]:
        """The label values, in `SERIES_LABELS` order."""
        return (self.ceiling, self.period, self.feature, self.customer, self.scope)


@dataclass(frozen=True)
class Snapshot:
    """A guard's numbers at one scrape. `store_up` False: the store did not answer (no series then)."""

    series: tuple[Series, ...]
    counters: dict[tuple[str, str], int]  # (ceiling, period) -> counters it has, before the top N cut
    store_up: bool
    unrecorded_usd: float
    pending: int
    spool_items: int
    dropped_records: int


def _common(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else OTHER


def bounded_series(rows: Iterable[CeilingStatus], top_n: int) -> tuple[list[Series], dict[tuple[str, str], int]]:
    """USD rows as series: per ceiling and period the `top_n` by spend, the rest summed into `__other__`."""
    groups: dict[tuple[str, str], list[CeilingStatus]] = defaultdict(list)
    for row in rows:
        if row.unit == "usd":
            groups[(row.ceiling, row.period)].append(row)
    out: list[Series] = []
    for (ceiling, period), members in groups.items():
        # The most spent first; ties keep status order (sorted by labels), so a scrape is stable.
        top = heapq.nlargest(top_n, members, key=attrgetter("spent"))
        for row in top:
            labels = row.labels
            scope = encode_scope(labels)
            out.append(
                Series(
                    ceiling,
                    period,
                    labels.get("feature", ""),
                    labels.get("customer", ""),
                    scope,
                    row.spent,
                    row.limit,
                    row.reserved,
                    row.leased,
                )
            )
        if len(members) > len(top):
            shown = {id(row) for row in top}
            rest = [row for row in members if id(row) not in shown]
            out.append(
                Series(
                    ceiling,
                    period,
                    _common(r.labels.get("feature", "") for r in rest),
                    _common(r.labels.get("customer", "") for r in rest),
                    OTHER,
                    round(sum(r.spent for r in rest), 6),
                    round(sum(r.limit for r in rest), 6),
                    round(sum(r.reserved for r in rest), 6),
                    round(sum(r.leased for r in rest), 6),
                )
            )
    return out, {key: len(members) for key, members in groups.items()}


class Snapshots:
    """A guard's snapshot, read from the store at most once per `cache_s` (one reader at a time)."""

    def __init__(
        self,
        guard: Guard,
        *,
        top_n: int = DEFAULT_TOP_N,
        cache_s: float = DEFAULT_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if top_n < 0:
            raise ValueError(f"top_n must be 0 or more, got {top_n!r}")
        if cache_s < 0:
            raise ValueError(f"cache_s must be 0 or more, got {cache_s!r}")
        self.guard = guard
        self.top_n = top_n
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Snapshot] | None = None

    def get(self) -> Snapshot:
        """The snapshot, fresh when the last one is older than `cache_s`."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last[0] < self.cache_s:
                return self._last[1]
            snapshot = self._read()
            self._last = (now, snapshot)
            return snapshot

    def _read(self) -> Snapshot:
        guard = self.guard
        spool = guard.spool
        try:
            rows = guard.status().ceilings
            up = True
        except StoreError as exc:
            log.warning("costguard metrics: the store did not answer, no spend series this scrape: %s", exc)
            rows, up = (), False
        series, counters = bounded_series(rows, self.top_n)
        return Snapshot(
            series=tuple(series),
            counters=counters,
            store_up=up,
            unrecorded_usd=guard.unrecorded_usd,
            pending=guard.pending,
            spool_items=0 if spool is None else spool.outstanding,
            dropped_records=guard.dropped_records,
        )
