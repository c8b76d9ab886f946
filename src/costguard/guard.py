"""`Guard`: the facade — it wires its parts and delegates to them.

    calls       callpath.CallPath     labels → plan → reserve → decision (reserve, check)
    settler     settler.Settler       commit and release of a reservation → settlement.Settlement
    control     control.ControlView   kill switches and overrides, cached, fail-closed
    killswitch  killswitch.KillSwitch the operator's switch
    limits      limits.Limits         run-time limits with reasons
    queries     queries.Queries       status, forecast, audit
    reporter    reporting.Reporter    alerts, background audit writes, store-error reports
(docs/architecture.md: the layers, and one guarded call's path through these files)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from typing_extensions import Unpack

from costguard import deadline as dl
from costguard._config import load_settings
from costguard.decision import Decision
from costguard.events import AuditRecord
from costguard.forecast import Forecast
from costguard.guarded import Decorated, GuardOptions, decorate
from costguard.limits import LimitStart, limit_amount
from costguard.model import DEFAULT_MAX_LABEL_LENGTH, Ceiling, Money, Period, Unit, micros_to_usd, to_micros
from costguard.notify.dispatcher import DEFAULT_GROUP_S, LaneStats, Notifier
from costguard.observe import Observer
from costguard.pricing import Pricing
from costguard.reservation import AsyncReserveContext, Reservation
from costguard.settings import CallErrorPolicy, CommitMode, FeatureSettings, GuardSettings, StoreErrorPolicy
from costguard.spool import Spool
from costguard.status import Status
from costguard.steps import run
from costguard.stores import Store
from costguard.wiring import check_ceilings, check_options, close_at_exit, open_store_within, wire

__all__ = ["FeatureSettings", "Guard"]

log = logging.getLogger("costguard")

_NOT_OPTIONS = ("store", "notifiers", "admin", "proxy_upstreams")  # GuardSettings fields that are not keyword options


class Guard:
    """Cost ceilings in front of paid calls; see `costguard.Guard.from_yaml` for the config route."""

    def __init__(
        self,
        store: str | Store = "memory://",
        *,
        ceilings: Iterable[Ceiling] = (),
        features: Mapping[str, FeatureSettings] | None = None,
        timezone: str | tzinfo = "UTC",
        thresholds: Sequence[float] = (0.8, 1.0),
        on_store_error: StoreErrorPolicy = "open",
        on_call_error: CallErrorPolicy = "release",
        commit: CommitMode = "sync",
        commit_batch: int = 256,
        pricing: Pricing | None = None,
        notifiers: Iterable[Notifier] = (),
        alert_queue_size: int = 1000,
        alert_group_s: float | None = DEFAULT_GROUP_S,
        killswitch_cache_ms: float = 500.0,
        exempt_features: Iterable[str] = (),
        exempt_paths: Iterable[str] = (),
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        buffer_size: int = 10_000,
        clock: Callable[[], float] | None = None,
        store_options: Mapping[str, Any] | None = None,
        store_deadline_ms: float = dl.DEFAULT_DEADLINE_MS,
        outage_allowance_usd: Money | None = None,
        spool_dir: str | Path | Literal[False] | None = None,
        labels: Iterable[str] = (),
        leases: bool = True,
        lease_period_ms: float = 1000.0,
    ) -> None:
        self.ceilings: tuple[Ceiling, ...] = tuple(ceilings)
        check_options(on_store_error, on_call_error, commit, commit_batch, store_deadline_ms, lease_period_ms)
        check_ceilings(self.ceilings, names := tuple(labels), thresholds)
        self.lease_period_s = lease_period_ms / 1000.0 if leases else None
        self.declared_labels = frozenset(names)
        self.clock: Callable[[], float] = clock or time.time
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self.features: dict[str, FeatureSettings] = dict(features or {})
        self.thresholds = tuple(sorted(set(thresholds)))
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.on_call_error: CallErrorPolicy = on_call_error
        self.commit_mode: CommitMode = commit
        self.commit_batch = commit_batch
        self.pricing: Pricing = pricing or Pricing()
        self.admin: Any = None  # the config's `admin:` block (AdminConfig) when built from YAML
        self.proxy_upstreams: tuple[str, ...] | None = None  # the config's proxy upstreams (run keys name them)
        self.killswitch_cache_s = killswitch_cache_ms / 1000.0
        self.exempt_features, self.exempt_paths = frozenset(exempt_features), tuple(exempt_paths)
        self.max_label_length = max_label_length
        self.deadline_s = store_deadline_ms / 1000.0
        allowance = outage_allowance_usd
        self.outage_allowance = None if allowance is None else to_micros(allowance, what="outage_allowance_usd")
        self.store = store if isinstance(store, Store) else open_store_within(store, store_deadline_ms, store_options)
        self.notifiers: list[Notifier] = list(notifiers)
        self._closed = False
        parts = wire(
            self, queue_size=alert_queue_size, group_s=alert_group_s, buffer_size=buffer_size, spool_dir=spool_dir
        )
        self._parts, self._settlement, self._reporter = parts, parts.settlement, parts.reporter
        self.calls, self.killswitch = parts.calls, parts.killswitch
        self.control, self.settler = parts.control, parts.settler
        close_at_exit(self)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_yaml(
        cls, path: str | Path, *, notifiers: Iterable[Notifier] = (), clock: Callable[[], float] | None = None
    ) -> Guard:
        """Build a guard from a YAML file; a bad file raises `ConfigError` naming the key path."""
        return cls.from_settings(load_settings(path), notifiers=notifiers, clock=clock)

    @classmethod
    def from_settings(
        cls, settings: GuardSettings, *, notifiers: Iterable[Notifier] = (), clock: Callable[[], float] | None = None
    ) -> Guard:
        """Build a guard from `GuardSettings` (a config file's content); `notifiers` go before its own."""
        options = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in _NOT_OPTIONS}
        guard = cls(settings.store, notifiers=[*notifiers, *settings.notifiers], clock=clock, **options)
        guard.admin, guard.proxy_upstreams = settings.admin, settings.proxy_upstreams
        return guard

    def feature(self, name: str) -> FeatureSettings:
        """The settings of a feature (defaults from `"*"`, else built-in defaults)."""
        return self.calls.feature(name)

    def known_labels(self) -> list[str]:
        """Label names a switch or limit may use: standard, matched by a ceiling, or declared in `labels:`."""
        return self.control.known_labels()

    def require_known_labels(self, scope: Mapping[str, object], what: str) -> None:
        """Raise `ValueError` for a scope naming a label nothing knows (a typo would match no call)."""
        self.control.require_known_labels(scope, what)

    # ----------------------------------------------------------------- guarded calls
    def reserve(
        self, feature: str, *, estimate_usd: Money | None = None, estimate_tokens: int | None = None, **labels: object
    ) -> Reservation:
        """Reserve the estimate against every matching ceiling now; raises `Blocked` when it doesn't fit.

        Use as a context manager: the block's exit commits (the estimate, or `r.commit(actual)`), or
        releases when the block raised.
        """
        return run(self.calls.reserve(feature, labels, estimate_usd, estimate_tokens))

    def areserve(
        self, feature: str, *, estimate_usd: Money | None = None, estimate_tokens: int | None = None, **labels: object
    ) -> AsyncReserveContext:
        """Async `reserve`: `async with guard.areserve("f", customer="acme") as r: ...; await r.acommit(0.01)`."""
        return AsyncReserveContext(lambda: self.calls.reserve(feature, labels, estimate_usd, estimate_tokens))

    def check(
        self, feature: str, *, estimate_usd: Money | None = None, estimate_tokens: int | None = None, **labels: object
    ) -> Decision:
        """Would a call be allowed now? Reads only; reserves nothing."""
        return run(self.calls.check(feature, labels, estimate_usd, estimate_tokens))

    def with_kill_switch(
        self, feature: str, **options: Unpack[GuardOptions]
    ) -> Callable[[Callable[..., Any]], Decorated]:
        """Guard a function (sync or async) as `feature`; see `costguard.with_kill_switch`."""
        return decorate(feature, lambda: self.calls, **options)

    def commit(self, reservation_id: str, usd: Money | None = None, *, tokens: int | None = None) -> bool:
        """Commit a reservation made elsewhere (by id); idempotent — a repeat returns False."""
        return run(self.settler.commit_id(reservation_id, usd, tokens))

    def release(self, reservation_id: str) -> bool:
        """Release a reservation made elsewhere (by id); idempotent — a repeat returns False."""
        return run(self.settler.release_id(reservation_id))

    def learned_estimate(self, feature: str) -> float | None:
        """The learned estimate of a feature in USD (None while it has too little history)."""
        return self._parts.estimates.learned(feature)

    # ----------------------------------------------------------------- queries
    def status(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Status:
        """Spend against every ceiling in its current period; filter by feature, customer or any label."""
        return self._parts.queries.status({"feature": feature, "customer": customer, **labels})

    def forecast(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Forecast:
        """Projected spend at each USD ceiling's period end, `on_track`, `depletion_at`, `confidence`."""
        return self._parts.queries.forecast(self.status(feature, customer, **labels))

    def audit(
        self,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        *,
        feature: str | None = None,
        customer: str | None = None,
        decision: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AuditRecord]:
        """Audit records, newest first. Page with `before_id=` the last record's `id`."""
        return self._parts.queries.audit(since, until, feature, customer, decision, limit, before_id)

    def append_audit(self, record: AuditRecord) -> None:
        """Log `record` (in the background, batched): a refusal made before any reservation (proxy 401s)."""
        self._reporter.audit_later(record)

    # ----------------------------------------------------------------- limits
    def set_limit(
        self,
        scope: Mapping[str, str],
        *,
        period: str | Period = "month",
        usd: Money | None = None,
        calls: int | None = None,
        tokens: int | None = None,
        reason: str,
        actor: str | None = None,
        notify: bool = True,
    ) -> LimitStart:
        """Set a ceiling's limit at run time (persisted, wins over the config, needs a reason; `notify=False`: no
        alert or warning); what it counts from."""
        return self._parts.limits.set_limit(scope, period, *limit_amount(usd, calls, tokens), reason, actor, notify)

    def clear_limit(
        self,
        scope: Mapping[str, str],
        *,
        period: str | Period = "month",
        unit: str | Unit = "usd",
        reason: str,
        actor: str | None = None,
    ) -> None:
        """Remove a run-time limit so the config's value applies again."""
        self._parts.limits.change(scope, period, Unit(unit), None, reason, actor)

    def current_limit(self, scope: Mapping[str, str], period: str | Period, unit: str | Unit = "usd") -> float | None:
        """The limit in force for a ceiling scope (run-time override, else config), fresh from the store;
        USD as a float, calls and tokens as counts; None when no ceiling has that scope and period."""
        return self._parts.limits.current(scope, Period(period), Unit(unit))

    @property
    def pending(self) -> int:
        """Costs not yet written to the store (queued for a background batch, or spooled in an outage)."""
        return self._settlement.pending

    @property
    def dropped_records(self) -> int:
        """Writes the spool had no room for (each one an error event; the store keeps those estimates reserved)."""
        return self._settlement.refused

    @property
    def unrecorded_usd(self) -> float:
        """USD admitted without a reservation while the store was unreachable, not yet recorded (this process)."""
        return micros_to_usd(self._settlement.unrecorded())

    @property
    def spool(self) -> Spool | None:
        """The durable spool of writes the store does not have yet (None for `memory://`)."""
        return self._settlement.spool

    def observe(self, observer: Observer) -> None:
        """Report every decision, settle, store call, store error and alert to `observer` (metrics, traces)."""
        self._parts.observe(observer)

    def alert_stats(self) -> list[LaneStats]:
        """Per notifier in this process: delivered, given up after retries, dropped, queued, rate-limited."""
        return self._reporter.stats()

    def flush(self, timeout: float = 5.0) -> bool:
        """Give slices of leased counters back, write queued costs and wait for background work (alerts,
        audit): the store then has every cost this process knows; False if some remain."""
        return self._parts.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write queued costs and deliver queued alerts (up to `timeout` each), then release the store.
        Costs the store did not take stay spooled for the next process; undelivered alerts are logged."""
        if self._closed:
            return
        self._closed = True
        self._parts.close(timeout)
        self.store.close()
        close_at_exit(self, done=True)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(store={self.store.url!r}, ceilings={len(self.ceilings)})"
