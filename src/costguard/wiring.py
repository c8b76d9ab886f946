"""Wiring: a guard's parts, built from its options and connected (the `Guard` facade only holds them).

Reporter ← Settlement ← Settler ← CallPath
    ↖ ControlView ← KillSwitch, Limits, Queries
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from costguard.cache import StoreCache
from costguard.callpath import CallPath
from costguard.control import ControlView
from costguard.estimates import Estimates
from costguard.killswitch import KillSwitch
from costguard.leasing import Leases
from costguard.limits import Limits
from costguard.model import WILDCARD, Ceiling, pattern_message
from costguard.notify.dispatcher import Notifier
from costguard.observe import Fanout, Observer
from costguard.pricing import Pricing
from costguard.queries import Queries
from costguard.reporting import Reporter
from costguard.settings import CallErrorPolicy, CommitMode, FeatureSettings, StoreErrorPolicy
from costguard.settlement import Settlement
from costguard.settler import Settler
from costguard.spool import Spool, default_spool_dir
from costguard.stores import Store, open_store

__all__ = ["Options", "Parts", "check_ceilings", "check_options", "close_at_exit", "open_store_within", "wire"]

log = logging.getLogger("costguard")


class Options(Protocol):
    """The guard options the parts are built from (the `Guard`'s public attributes)."""

    store: Store
    clock: Callable[[], float]
    tz: tzinfo
    ceilings: tuple[Ceiling, ...]
    features: dict[str, FeatureSettings]
    declared_labels: frozenset[str]
    thresholds: tuple[float, ...]
    on_store_error: StoreErrorPolicy
    on_call_error: CallErrorPolicy
    commit_mode: CommitMode
    commit_batch: int
    pricing: Pricing
    notifiers: list[Notifier]
    killswitch_cache_s: float
    exempt_features: frozenset[str]
    max_label_length: int
    deadline_s: float
    outage_allowance: int | None
    lease_period_s: float | None


@dataclass(frozen=True)
class Parts:
    """A guard's parts, connected."""

    reporter: Reporter
    settlement: Settlement
    control: ControlView
    estimates: Estimates
    settler: Settler
    calls: CallPath
    killswitch: KillSwitch
    limits: Limits
    queries: Queries
    leases: Leases | None

    def observe(self, observer: Observer) -> None:
        """Report calls, settles, store calls and errors, and alerts to `observer` too."""
        current = self.reporter.observer
        fanout = Fanout((observer,)) if current is None else current.with_(observer)
        self.reporter.observer = self.calls.observer = self.settler.observer = fanout

    def flush(self, timeout: float) -> bool:
        """Give slices back, write queued costs, wait for background work; False if some remain."""
        if self.leases is not None:
            self.leases.revoke(now=True)
        self.settlement.flush()
        done = self.reporter.flush(timeout)
        return done and not self.settlement.pending

    def close(self, timeout: float) -> None:
        """Give slices back, write queued costs, deliver queued alerts (up to `timeout` each)."""
        if self.leases is not None:
            self.leases.close()
        self.settlement.close(timeout)
        self.reporter.close(timeout)


def wire(
    o: Options,
    *,
    queue_size: int,
    group_s: float | None,
    buffer_size: int,
    spool_dir: str | Path | Literal[False] | None,
) -> Parts:
    """Build and connect the parts of a guard with options `o`."""
    store, clock, deadline_s = o.store, o.clock, o.deadline_s
    reporter = Reporter(store, o.notifiers, clock=clock, queue_size=queue_size, group_s=group_s)
    settlement = Settlement(
        store,
        _spool_for(store, spool_dir),
        deadline_s=deadline_s,
        batch=o.commit_batch,
        max_items=buffer_size,
        on_written=reporter.settled,
        on_error=reporter.write_error,
    )
    reporter.unrecorded = settlement.unrecorded
    control = ControlView(
        store,
        o.ceilings,
        reporter,
        ttl_s=o.killswitch_cache_s,
        deadline_s=deadline_s,
        declared_labels=o.declared_labels,
        exempt_features=o.exempt_features,
    )
    estimates = Estimates(store, reporter, clock)
    leases = (
        Leases(store, settlement, reporter, period_s=o.lease_period_s, deadline_s=deadline_s, clock=clock)
        if o.lease_period_s and store.leases
        else None
    )
    settler = Settler(
        settlement=settlement,
        estimates=estimates,
        reporter=reporter,
        pricing=o.pricing,
        clock=clock,
        commit_mode=o.commit_mode,
        on_call_error=o.on_call_error,
        deadline_s=deadline_s,
        leases=leases,
    )
    calls = CallPath(
        store=store,
        control=control,
        estimates=estimates,
        settler=settler,
        settlement=settlement,
        reporter=reporter,
        cache=StoreCache(store, reporter, clock),
        features=o.features,
        tz=o.tz,
        thresholds=o.thresholds,
        on_store_error=o.on_store_error,
        max_label_length=o.max_label_length,
        deadline_s=deadline_s,
        outage_allowance=o.outage_allowance,
        clock=clock,
        leases=leases,
    )
    return Parts(
        reporter,
        settlement,
        control,
        estimates,
        settler,
        calls,
        KillSwitch(store, control, reporter, clock),
        Limits(
            store=store, control=control, reporter=reporter, clock=clock, max_label_length=o.max_label_length, tz=o.tz
        ),
        Queries(
            store=store,
            control=control,
            settlement=settlement,
            reporter=reporter,
            tz=o.tz,
            clock=clock,
            deadline_s=deadline_s,
        ),
        leases,
    )


def check_ceilings(ceilings: Sequence[Ceiling], labels: Iterable[object], thresholds: Iterable[float] = ()) -> None:
    """Raise `ValueError` for ceilings, thresholds or declared label names a guard can't use."""
    for ceiling in ceilings:  # a run-time override may name a value with `*` in it (an id); a configured ceiling not
        for name, value in ceiling.match:
            if WILDCARD in value and value != WILDCARD:
                raise ValueError(pattern_message(name, value))
    ids = [c.id for c in ceilings]
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"two ceilings have the same match: {', '.join(dupes)}; merge their limits")
    for threshold in (*thresholds, *(t for c in ceilings for t in c.thresholds or ())):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"a threshold is a fraction of the limit in (0, 1], such as 0.8, got {threshold!r}")
    declared = [name for name in labels if not isinstance(name, str) or not name]
    if declared:
        raise ValueError(f"labels must be label names, got {declared!r}")


def check_options(
    on_store_error: str, on_call_error: str, commit: str, commit_batch: int, deadline_ms: float, lease_period_ms: float
) -> None:
    """Raise `ValueError` for a policy, commit mode, batch size, deadline or lease period a guard can't use."""
    if on_store_error not in ("open", "closed"):
        raise ValueError(f"on_store_error must be 'open' or 'closed', got {on_store_error!r}")
    if on_call_error not in ("release", "keep"):
        raise ValueError(f"on_call_error must be 'release' or 'keep', got {on_call_error!r}")
    if commit not in ("sync", "background"):
        raise ValueError(f"commit must be 'sync' or 'background', got {commit!r}")
    if commit_batch < 1:
        raise ValueError(f"commit_batch must be at least 1, got {commit_batch!r}")
    if not deadline_ms > 0:
        raise ValueError(f"store_deadline_ms must be more than 0, got {deadline_ms!r}")
    if not 10 <= lease_period_ms <= 60_000:
        raise ValueError(f"lease_period_ms must be between 10 and 60000, got {lease_period_ms!r}")


def open_store_within(url: str, deadline_ms: float, options: Mapping[str, Any] | None) -> Store:
    """The store for `url`; each attempt's timeout defaults to the deadline unless the URL or options set one."""
    given = dict(options or {})
    if "timeout_ms" not in given and "timeout_ms" not in parse_qs(urlsplit(url).query):
        given["timeout_ms"] = deadline_ms
    return open_store(url, **given)


def _spool_for(store: Store, spool_dir: str | Path | Literal[False] | None) -> Spool | None:
    """The spool of a store that outlives this process (none for `memory://` or `spool_dir=False`)."""
    if spool_dir is False or not store.identity:
        return None
    return Spool(spool_dir if spool_dir is not None else default_spool_dir(store.identity))


class _Closable(Protocol):
    def close(self, timeout: float = 5.0) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def close_at_exit(guard: _Closable, *, done: bool = False) -> None:
    """Close `guard` when the interpreter exits (`done=True`: it was closed, forget it)."""
    if done:
        _live.discard(guard)
    else:
        _live.add(guard)


@atexit.register
def _close_all() -> None:
    for guard in list(_live):
        try:
            guard.close()
        except Exception:
            log.exception("costguard: closing a guard at exit failed")
