"""`Guard`: carries out the engine's plans against a store — reserve, commit, release, check, status, limits."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from costguard import deadline as dl
from costguard import engine
from costguard.current import current_labels
from costguard.decision import Decision
from costguard.errors import Blocked, BudgetExceeded, KillSwitchActive, StoreError
from costguard.estimators import LearnedEstimator
from costguard.events import NEW_PERIOD, AuditQuery, AuditRecord, Event, EventKind
from costguard.forecast import Forecast
from costguard.killswitch import KillSwitch, blocking_switch
from costguard.model import (
    DEFAULT_MAX_LABEL_LENGTH,
    STANDARD_LABELS,
    Ceiling,
    Money,
    Period,
    Unit,
    check_count,
    encode_scope,
    micros_to_usd,
    normalize_labels,
    to_micros,
)
from costguard.notify.dispatcher import DEFAULT_GROUP_S, Background, Dispatcher, LaneStats, Notifier
from costguard.periods import bucket_for
from costguard.pricing import Pricing
from costguard.reservation import AsyncReserveContext, Reservation
from costguard.settings import (
    DEFAULT_FEATURE,
    CallErrorPolicy,
    CommitMode,
    FeatureSettings,
    GuardSettings,
    StoreErrorPolicy,
)
from costguard.settlement import Settlement
from costguard.spool import Spool, default_spool_dir
from costguard.status import CeilingStatus, Status
from costguard.stores import Store, open_store
from costguard.stores.base import Control

if TYPE_CHECKING:
    from costguard.decorator import Decorated

__all__ = ["FeatureSettings", "Guard"]

log = logging.getLogger("costguard")

_PURGE_EVERY_S = 600.0
_ORPHANS_EVERY_S = 30.0
_STORE_ERROR_EVENT_EVERY_S = 60.0
# While the store can't be reached, `on_store_error: open` admits at most this much per process and
# feature without a reservation (unless `outage_allowance_usd` says otherwise): the smaller of $1 and
# 1 % of the tightest hard USD ceiling the call falls under.
_ALLOWANCE_CAP = 1_000_000
_ALLOWANCE_SHARE = 100


@dataclass
class _ControlView:
    control: Control | None = None
    ceilings: tuple[Ceiling, ...] = ()
    overrides: dict[str, dict[tuple[Period, Unit], int]] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    ok: bool = False


def _bucket_of(crossing: engine.Crossing) -> str:
    """The period bucket a crossing is about: for a kill cleared by a new period, the one that ended."""
    op = crossing.counter
    if crossing.cleared and crossing.reason == NEW_PERIOD and op.previous_key:
        return op.previous_key.rpartition("|")[2]
    return op.bucket


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
    ) -> None:
        if on_store_error not in ("open", "closed"):
            raise ValueError(f"on_store_error must be 'open' or 'closed', got {on_store_error!r}")
        if on_call_error not in ("release", "keep"):
            raise ValueError(f"on_call_error must be 'release' or 'keep', got {on_call_error!r}")
        if commit not in ("sync", "background"):
            raise ValueError(f"commit must be 'sync' or 'background', got {commit!r}")
        if commit_batch < 1:
            raise ValueError(f"commit_batch must be at least 1, got {commit_batch!r}")
        if not store_deadline_ms > 0:
            raise ValueError(f"store_deadline_ms must be more than 0, got {store_deadline_ms!r}")
        self.clock: Callable[[], float] = clock or time.time
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self.ceilings: tuple[Ceiling, ...] = tuple(ceilings)
        ids = [c.id for c in self.ceilings]
        if len(ids) != len(set(ids)):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"two ceilings have the same match: {', '.join(dupes)}; merge their limits")
        self.features: dict[str, FeatureSettings] = dict(features or {})
        declared = [name for name in labels if not isinstance(name, str) or not name]
        if declared:
            raise ValueError(f"labels must be label names, got {declared!r}")
        self.declared_labels = frozenset(labels)
        self.thresholds = tuple(sorted(set(thresholds)))
        self.on_store_error: StoreErrorPolicy = on_store_error
        self.on_call_error: CallErrorPolicy = on_call_error
        self.commit_mode: CommitMode = commit
        self.pricing: Pricing = pricing or Pricing()
        self.admin: Any = None  # the config's `admin:` block (AdminConfig) when built from YAML
        self._plans = engine.PlanCache()
        self._learners: dict[str, LearnedEstimator] = {}
        self._learners_lock = threading.Lock()
        self.commit_batch = commit_batch
        self.notifiers: list[Notifier] = list(notifiers)
        self._alerts = Dispatcher(self.notifiers, queue_size=alert_queue_size, group_s=alert_group_s)
        self.killswitch_cache_s = killswitch_cache_ms / 1000.0
        self.exempt_features = frozenset(exempt_features)
        self.exempt_paths = tuple(exempt_paths)
        self.max_label_length = max_label_length
        self.deadline_s = store_deadline_ms / 1000.0
        self.outage_allowance: int | None = (
            None if outage_allowance_usd is None else to_micros(outage_allowance_usd, what="outage_allowance_usd")
        )
        self.store: Store = store if isinstance(store, Store) else _open(store, store_deadline_ms, store_options)
        self.killswitch = KillSwitch(self)
        self._view = _ControlView()
        self._view_lock = threading.Lock()
        self._background = Background()
        self._settlement = Settlement(
            self.store,
            _spool_for(self.store, spool_dir),
            deadline_s=self.deadline_s,
            batch=commit_batch,
            max_items=buffer_size,
            on_written=self._settled,
            on_error=self._write_error,
        )
        self._last_purge = self.clock()
        self._next_orphan_scan = 0.0
        self._error_lock = threading.Lock()
        self._error_reports: dict[str, tuple[float, int]] = {}  # topic -> (last report, reports held back)
        self._outage_logged = False
        self._closed = False
        _live_guards.add(self)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_yaml(
        cls, path: str | Path, *, notifiers: Iterable[Notifier] = (), clock: Callable[[], float] | None = None
    ) -> Guard:
        """Build a guard from a YAML file; a bad file raises `ConfigError` naming the key path."""
        from costguard.config import load_config

        return load_config(path).build(notifiers=notifiers, clock=clock)

    @classmethod
    def from_settings(
        cls,
        settings: GuardSettings,
        *,
        notifiers: Iterable[Notifier] = (),
        clock: Callable[[], float] | None = None,
    ) -> Guard:
        """Build a guard from `GuardSettings` (what `costguard.config` makes of a YAML file); `notifiers`
        are added before the settings' own."""
        guard = cls(
            settings.store,
            ceilings=settings.ceilings,
            features=settings.features,
            timezone=settings.timezone,
            thresholds=settings.thresholds,
            on_store_error=settings.on_store_error,
            on_call_error=settings.on_call_error,
            commit=settings.commit,
            pricing=settings.pricing,
            notifiers=[*notifiers, *settings.notifiers],
            alert_group_s=settings.alert_group_s,
            killswitch_cache_ms=settings.killswitch_cache_ms,
            exempt_features=settings.exempt_features,
            exempt_paths=settings.exempt_paths,
            max_label_length=settings.max_label_length,
            clock=clock,
            store_options=settings.store_options,
            store_deadline_ms=settings.store_deadline_ms,
            outage_allowance_usd=settings.outage_allowance_usd,
            spool_dir=settings.spool_dir,
            labels=settings.labels,
        )
        guard.admin = settings.admin
        return guard

    def feature(self, name: str) -> FeatureSettings:
        """The settings of a feature (defaults from `"*"`, else built-in defaults)."""
        return self.features.get(name) or self.features.get("*") or DEFAULT_FEATURE

    # ----------------------------------------------------------------- labels and amounts
    def known_labels(self) -> list[str]:
        """Label names a kill switch or limit scope may use: the standard ones, every name a ceiling
        matches on (config and run time), and the config's declared `labels:`."""
        names = set(STANDARD_LABELS) | self.declared_labels
        for ceiling in self._view.ceilings or self.ceilings:
            names.update(name for name, _ in ceiling.match)
        return sorted(names)

    def require_known_labels(self, scope: Mapping[str, object], what: str) -> None:
        """Raise `ValueError` for a scope naming a label nothing knows (a typo would make a kill switch
        or a limit that matches no call, and answer as if it had worked)."""
        known = self.known_labels()
        unknown = sorted(name for name in scope if name not in known)
        if unknown:
            raise ValueError(
                f"unknown label {', '.join(map(repr, unknown))} in the scope of {what}: no ceiling, standard "
                f"label or declared `labels:` entry has it, so it would match no call. Known labels: "
                f"{', '.join(known)} (declare others under `labels:` in costguard.yaml)"
            )

    def _labels(self, feature: str, labels: Mapping[str, object]) -> dict[str, str]:
        merged: dict[str, object] = {**current_labels(), **labels, "feature": feature}
        return normalize_labels(merged, max_length=self.max_label_length)

    def _amounts(
        self,
        feature: str,
        settings: FeatureSettings,
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        *,
        audit: bool = True,
    ) -> dict[Unit, int]:
        if estimate_usd is not None:
            usd = to_micros(estimate_usd, what="estimate_usd")
        else:
            learned = self._learner(feature, settings).estimate() if settings.estimator == "learned" else None
            usd = settings.estimate_usd if learned is None else learned
        tokens = (
            settings.estimate_tokens
            if estimate_tokens is None
            else check_count(estimate_tokens, what="estimate_tokens")
        )
        if settings.max_call_usd is not None and usd > settings.max_call_usd:
            self._too_expensive(feature, usd, settings.max_call_usd, audit=audit)
        return {Unit.USD: usd, Unit.CALLS: 1, Unit.TOKENS: tokens}

    def _too_expensive(self, feature: str, usd: int, cap: int, *, audit: bool) -> None:
        labels = self._labels(feature, {})
        decision = Decision(
            allowed=False,
            reason="max_call_usd",
            labels=labels,
            scope={"feature": feature},
            period="call",
            unit="usd",
            spent=micros_to_usd(usd),
            limit=micros_to_usd(cap),
            message=(
                f"this call's estimate ${micros_to_usd(usd):g} is more than {feature}'s max_call_usd "
                f"${micros_to_usd(cap):g}; a single call may not cost that much"
            ),
        )
        if audit:
            self._audit_later(
                AuditRecord(
                    self.clock(),
                    "blocked",
                    labels,
                    None,
                    {"reason": "max_call_usd", "estimate_usd": micros_to_usd(usd), "limit": micros_to_usd(cap)},
                )
            )
        raise BudgetExceeded(decision)

    # ----------------------------------------------------------------- learned estimates
    def _learner(self, feature: str, settings: FeatureSettings) -> LearnedEstimator:
        learner = self._learners.get(feature)
        if learner is None:
            with self._learners_lock:
                learner = self._learners.get(feature)
                if learner is None:
                    learner = self._learners[feature] = LearnedEstimator(settings.learn)
                    new = learner
                    self._background.submit(lambda: self._load_learned(feature, new))
        return learner

    def _load_learned(self, feature: str, learner: LearnedEstimator) -> None:
        try:
            learner.load(self.store.cache_get(f"learned:{feature}", self.clock()))
        except StoreError:
            learner.loaded = True  # start from this process's own history

    def _learn(self, feature: str, usd: int) -> None:
        settings = self.feature(feature)
        if settings.estimator != "learned":
            return
        learner = self._learner(feature, settings)
        if learner.record(usd):
            data = learner.dump()
            expires = self.clock() + 30 * 86400

            def save() -> None:
                try:
                    self.store.cache_set(f"learned:{feature}", data, expires)
                except StoreError:
                    log.debug("costguard: learned estimate for %s not saved, the store is unavailable", feature)

            self._background.submit(save)

    def learned_estimate(self, feature: str) -> float | None:
        """The learned estimate of a feature in USD (None while it has too little history)."""
        learner = self._learners.get(feature)
        value = learner.estimate() if learner is not None else None
        return None if value is None else micros_to_usd(value)

    # ----------------------------------------------------------------- control state (kill switch, overrides)
    def _invalidate_control(self) -> None:
        with self._view_lock:
            self._view.fetched_at = float("-inf")

    def _control_stale(self, now: float) -> bool:
        return now - self._view.fetched_at >= self.killswitch_cache_s

    def _control_loaded(self, control: Control, now: float) -> None:
        ceilings = engine.apply_overrides(self.ceilings, control.overrides)
        overrides = engine.index_overrides(control.overrides)
        with self._view_lock:
            self._view = _ControlView(control, ceilings, overrides, now, True)

    def _control_failed(self, exc: StoreError, now: float) -> None:
        # Keep the last known state: a process that saw a switch on keeps blocking (fail-closed).
        with self._view_lock:
            self._view.fetched_at = now
            self._view.ok = False
        self._store_error(exc, "control")

    def _view_now(self) -> _ControlView:
        view = self._view
        if view.control is None:
            # Never loaded: plan with the config's own ceilings.
            return _ControlView(None, self.ceilings, {}, view.fetched_at, False)
        return view

    def _deadline(self) -> dl.Deadline:
        return dl.Deadline(self.deadline_s)

    def _refresh(self, now: float, deadline: dl.Deadline | None = None) -> _ControlView:
        if self._control_stale(now):
            try:
                self._control_loaded(dl.call(self.store.control, deadline or self._deadline()), now)
            except StoreError as exc:
                self._control_failed(exc, now)
        return self._view_now()

    async def _arefresh(self, now: float, deadline: dl.Deadline | None = None) -> _ControlView:
        if self._control_stale(now):
            try:
                self._control_loaded(await dl.acall(self.store.acontrol, deadline or self._deadline()), now)
            except StoreError as exc:
                self._control_failed(exc, now)
        return self._view_now()

    # ----------------------------------------------------------------- the shared decisions
    def _pre_check(self, view: _ControlView, labels: Mapping[str, str], settings: FeatureSettings, now: float) -> None:
        """Raise when a kill switch covers the call, or when the store is down and the policy is closed."""
        switches = view.control.killswitches if view.control is not None else ()
        switch = blocking_switch(switches, labels, self.exempt_features)
        if switch is not None:
            self._audit_later(
                AuditRecord(now, "blocked", labels, data={"reason": "kill_switch", "scope": dict(switch.scope)})
            )
            raise KillSwitchActive(
                Decision(
                    allowed=False,
                    reason="kill_switch",
                    labels=dict(labels),
                    scope=dict(switch.scope),
                    message=f"kill switch active for {encode_scope(dict(switch.scope)) or 'everything'}: "
                    f"{switch.reason}",
                )
            )
        if not view.ok and view.control is None and self._store_policy(settings) == "closed":
            self._raise_store_closed(labels, now)

    def _store_policy(self, settings: FeatureSettings) -> StoreErrorPolicy:
        return settings.on_store_error or self.on_store_error

    def _raise_store_closed(
        self,
        labels: Mapping[str, str],
        now: float,
        message: str = "the costguard store can't be reached and on_store_error is 'closed'",
    ) -> None:
        self._audit_later(AuditRecord(now, "blocked", labels, data={"reason": "store_error"}))
        raise Blocked(Decision(allowed=False, reason="store_error", labels=dict(labels), message=message))

    def _plan(
        self, view: _ControlView, labels: Mapping[str, str], amounts: Mapping[Unit, int], now: float
    ) -> engine.ReservePlan:
        return self._plans.plan(
            reservation_id=os.urandom(16).hex(),
            ceilings=view.ceilings,
            overrides=view.overrides,
            labels=labels,
            amounts=amounts,
            now=now,
            tz=self.tz,
            thresholds=self.thresholds,
        )

    def _reserve_record(self, plan: engine.ReservePlan, fallback: str | None) -> AuditRecord:
        return AuditRecord(
            plan.at,
            "reserve",
            dict(plan.labels),
            plan.reservation_id,
            {"estimate_usd": micros_to_usd(plan.estimate_usd), "fallback": fallback},
        )

    @staticmethod
    def _overflow(
        view: _ControlView, plan: engine.ReservePlan, outcome: engine.ReserveOutcome
    ) -> engine.ReservePlan | None:
        """The plan moved to a ceiling's shared overflow instance, when a registry counter refused a new
        instance of a ceiling with `overflow: share`; else None."""
        if outcome.allowed or outcome.blocked is None or plan.counters[outcome.blocked].counts_new < 0:
            return None
        registry = plan.counters[outcome.blocked].ceiling_id
        for ceiling in view.ceilings:
            if engine.INSTANCES_PREFIX + ceiling.id == registry:
                return engine.overflow_plan(plan, ceiling) if ceiling.overflow == "share" else None
        return None

    def _after_reserve(
        self,
        plan: engine.ReservePlan,
        outcome: engine.ReserveOutcome,
        settings: FeatureSettings,
        deadline: dl.Deadline | None,
        now: float,
    ) -> Decision:
        self._emit_crossings(outcome.crossings, now)
        decision = engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)
        if not decision.allowed:
            if deadline is not None and deadline.unknown:
                # An earlier attempt timed out and may still be applied after this refusal: release it.
                self._settlement.abandon(plan.reservation_id, now)
            raise BudgetExceeded(decision)
        return decision

    def _allowance(self, plan: engine.ReservePlan, settings: FeatureSettings) -> int:
        """Micro-dollars this process may admit for the feature without a reservation while the store is
        unreachable: as configured, else the smaller of $1 and 1 % of the tightest hard USD ceiling."""
        if settings.outage_allowance_usd is not None:
            return settings.outage_allowance_usd
        if self.outage_allowance is not None:
            return self.outage_allowance
        limits = [op.limit for op in plan.counters if op.hard and op.unit is Unit.USD]
        return min([_ALLOWANCE_CAP, *(limit // _ALLOWANCE_SHARE for limit in limits)])

    def _unreserved(
        self,
        plan: engine.ReservePlan,
        labels: Mapping[str, str],
        settings: FeatureSettings,
        exc: StoreError,
        deadline: dl.Deadline | None,
        now: float,
    ) -> Reservation:
        """The store could not be reached for the reserve: `closed` serves the fallback; `open` admits the
        call without a reservation (spooled, recorded when the store answers) up to the outage allowance."""
        self._store_error(exc, "reserve")
        feature = labels.get("feature", "")
        if self._store_policy(settings) == "open":
            allowance = self._allowance(plan, settings)
            if self._settlement.admit_unreserved(plan, feature, allowance) is not None:
                self._log_outage(feature, allowance)
                decision = Decision(
                    allowed=True,
                    reason="store_error",
                    labels=dict(labels),
                    reservation_id=plan.reservation_id,
                    message="allowed without a reservation: the costguard store can't be reached "
                    "(on_store_error: open); the cost is spooled and recorded when it answers",
                )
                return Reservation(self, plan, decision, settings, stored=False)
            message = (
                f"the costguard store can't be reached and {feature}'s outage allowance "
                f"(${micros_to_usd(allowance):g} per process) is used up"
            )
        else:
            message = "the costguard store can't be reached and on_store_error is 'closed'"
        if deadline is not None and deadline.unknown:
            self._settlement.abandon(plan.reservation_id, now)  # it may have been applied: give it back
        self._raise_store_closed(labels, now, message)
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_outage(self, feature: str, allowance: int) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "costguard: the store can't be reached; admitting calls without a reservation "
                "(on_store_error: open), at most $%g per feature in this process (%s), spooled until the "
                "store answers",
                micros_to_usd(allowance),
                feature,
            )

    # ----------------------------------------------------------------- reserve / commit / release
    def _reserve(
        self,
        feature: str,
        labels: Mapping[str, object],
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        fallback: str | None = None,
    ) -> Reservation:
        now = self.clock()
        call_labels = self._labels(feature, labels)
        settings = self.feature(feature)
        amounts = self._amounts(feature, settings, estimate_usd, estimate_tokens)
        deadline = self._deadline() if self.store.remote else None
        view = self._refresh(now, deadline)
        self._pre_check(view, call_labels, settings, now)
        plan = self._plan(view, call_labels, amounts, now)
        record = self._reserve_record(plan, fallback)
        try:
            if deadline is None:
                outcome = self.store.reserve(plan, record)  # in process: nothing to wait for or ask again
            else:
                outcome = dl.call(lambda: self.store.reserve(plan, record), deadline)
            moved = self._overflow(view, plan, outcome)
            if moved is not None:  # a new instance past max_instances: into the shared one
                plan = moved
                outcome = (
                    self.store.reserve(plan, record)
                    if deadline is None
                    else dl.call(lambda: self.store.reserve(plan, record), deadline)
                )
        except StoreError as exc:
            return self._unreserved(plan, call_labels, settings, exc, deadline, now)
        self._maintain(now)
        return Reservation(self, plan, self._after_reserve(plan, outcome, settings, deadline, now), settings)

    async def _areserve(
        self,
        feature: str,
        labels: Mapping[str, object],
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        fallback: str | None = None,
    ) -> Reservation:
        now = self.clock()
        call_labels = self._labels(feature, labels)
        settings = self.feature(feature)
        amounts = self._amounts(feature, settings, estimate_usd, estimate_tokens)
        deadline = self._deadline() if self.store.remote else None
        view = await self._arefresh(now, deadline)
        self._pre_check(view, call_labels, settings, now)
        plan = self._plan(view, call_labels, amounts, now)
        record = self._reserve_record(plan, fallback)

        async def reserve() -> engine.ReserveOutcome:
            return await self.store.areserve(plan, record)

        try:
            outcome = await reserve() if deadline is None else await dl.acall(reserve, deadline)
            moved = self._overflow(view, plan, outcome)
            if moved is not None:  # a new instance past max_instances: into the shared one
                plan = moved
                outcome = await reserve() if deadline is None else await dl.acall(reserve, deadline)
        except StoreError as exc:
            return self._unreserved(plan, call_labels, settings, exc, deadline, now)
        self._maintain(now)
        return Reservation(self, plan, self._after_reserve(plan, outcome, settings, deadline, now), settings)

    def reserve(
        self,
        feature: str,
        *,
        estimate_usd: Money | None = None,
        estimate_tokens: int | None = None,
        **labels: object,
    ) -> Reservation:
        """Reserve the estimate against every matching ceiling now; raises `Blocked` when it doesn't fit.

        Use as a context manager: the block's exit commits (the estimate, or `r.commit(actual)`), or
        releases when the block raised.
        """
        return self._reserve(feature, labels, estimate_usd, estimate_tokens)

    def areserve(
        self,
        feature: str,
        *,
        estimate_usd: Money | None = None,
        estimate_tokens: int | None = None,
        **labels: object,
    ) -> AsyncReserveContext:
        """Async `reserve`: `async with guard.areserve("f", customer="acme") as r: ...; await r.acommit(0.01)`."""
        return AsyncReserveContext(self, feature, labels, estimate_usd, estimate_tokens)

    def _settle_args(
        self, reservation: Reservation, usd_micros: int | None, tokens: int | None, charged: int
    ) -> tuple[dict[Unit, int], AuditRecord]:
        plan = reservation.plan
        actual_usd = (plan.estimate_usd if usd_micros is None else usd_micros) + charged
        actual_tokens = check_count(tokens, what="tokens") if tokens is not None else reservation.amount(Unit.TOKENS)
        actual = {Unit.USD: actual_usd, Unit.CALLS: 1, Unit.TOKENS: actual_tokens}
        if usd_micros is not None and reservation.settings.estimator == "learned":
            self._learn(dict(plan.labels).get("feature", ""), actual_usd)
        record = AuditRecord(
            self.clock(),
            "commit",
            dict(plan.labels),
            plan.reservation_id,
            {
                "estimate_usd": micros_to_usd(plan.estimate_usd),
                "actual_usd": micros_to_usd(actual_usd),
                "tokens": actual_tokens,
            },
        )
        return actual, record

    def _release_record(self, reservation: Reservation, why: str) -> AuditRecord:
        plan = reservation.plan
        return AuditRecord(
            self.clock(),
            "release",
            dict(plan.labels),
            plan.reservation_id,
            {"estimate_usd": micros_to_usd(plan.estimate_usd), "why": why},
        )

    def _settled(self, outcome: engine.CommitOutcome, at: float, forced: bool) -> None:
        self._emit_crossings(outcome.crossings, at)
        for op, total in zip(outcome.counters, outcome.totals, strict=True):
            if op.hard and total > op.limit:
                log.warning(
                    "costguard: %s %s ceiling %s is over its limit after commit: %g of %g (%s)",
                    op.period.value,
                    op.unit.value,
                    encode_scope(dict(op.scope)) or "(all)",
                    op.display(total),
                    op.display(op.limit),
                    "a call admitted while the store could not be reached, now recorded"
                    if forced
                    else "the actual cost exceeded the estimate",
                )

    def _in_background(self, reservation: Reservation) -> bool:
        return (reservation.settings.commit or self.commit_mode) == "background"

    def _settle(self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord) -> None:
        background = self._in_background(reservation)
        self._settlement.settle(reservation.id, actual, record.at, record, background=background)

    async def _asettle(self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord) -> None:
        background = self._in_background(reservation)
        await self._settlement.asettle(reservation.id, actual, record.at, record, background=background)

    def _write_error(self, exc: Exception, during: str) -> None:
        if during.startswith("spool"):  # the spool itself is full or the disk refused: its own report
            error = exc if isinstance(exc, StoreError) else StoreError(f"{type(exc).__name__}: {exc}")
            self._store_error(error, during, topic="spool")
        elif isinstance(exc, StoreError):
            self._store_error(exc, during)

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

    def flush(self, timeout: float = 5.0) -> bool:
        """Write queued costs and wait for background work (alerts, audit); False if some remain."""
        deadline = time.monotonic() + timeout
        self._settlement.flush()
        done = self._background.flush(timeout)
        delivered = self._alerts.flush(max(0.0, deadline - time.monotonic()))
        return done and delivered and not self._settlement.pending

    def alert_stats(self) -> list[LaneStats]:
        """Per notifier in this process: events delivered, given up on after retries, dropped, queued,
        dropped over its rate limit."""
        return self._alerts.stats()

    def commit(self, reservation_id: str, usd: Money | None = None, *, tokens: int | None = None) -> bool:
        """Commit a reservation made elsewhere (by id); idempotent — a repeat returns False."""
        now = self.clock()
        actual = {Unit.USD: 0 if usd is None else to_micros(usd, round_up=False, what="actual cost"), Unit.CALLS: 1}
        if tokens is not None:
            actual[Unit.TOKENS] = check_count(tokens, what="tokens")
        if usd is None:
            actual.pop(Unit.USD)  # keep the estimate
        record = AuditRecord(
            now, "commit", {}, reservation_id, {"actual_usd": None if usd is None else micros_to_usd(actual[Unit.USD])}
        )
        outcome = dl.call(lambda: self.store.settle(reservation_id, actual, now, record), self._deadline())
        self._settled(outcome, now, False)
        return outcome.applied

    def release(self, reservation_id: str) -> bool:
        """Release a reservation made elsewhere (by id); idempotent — a repeat returns False."""
        now = self.clock()
        record = AuditRecord(now, "release", {}, reservation_id)
        return dl.call(lambda: self.store.settle(reservation_id, None, now, record), self._deadline()).applied

    # ----------------------------------------------------------------- read-only views
    def check(
        self, feature: str, *, estimate_usd: Money | None = None, estimate_tokens: int | None = None, **labels: object
    ) -> Decision:
        """Would a call be allowed now? Reads only; reserves nothing."""
        now = self.clock()
        call_labels = self._labels(feature, labels)
        settings = self.feature(feature)
        try:
            amounts = self._amounts(feature, settings, estimate_usd, estimate_tokens, audit=False)
        except Blocked as blocked:
            return blocked.decision
        view = self._refresh(now)
        try:
            self._pre_check(view, call_labels, settings, now)
        except Blocked as blocked:
            return blocked.decision
        plan = self._plan(view, call_labels, amounts, now)
        keys = [op.key for op in plan.counters]
        totals = dl.call(lambda: self.store.totals(keys), self._deadline())
        outcome = engine.evaluate_reserve(plan, totals, [set() for _ in totals])
        return engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)

    def status(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Status:
        """Spend against every ceiling in its current period; filter by feature, customer or any label."""
        now = self.clock()
        wanted = normalize_labels({"feature": feature, "customer": customer, **labels}, max_length=10_000)
        view = self._refresh(now)
        buckets = {p: bucket_for(p, now, self.tz) for p in Period}
        ids = {p: b.id for p, b in buckets.items()}
        rows = dl.call(lambda: self.store.list_counters(ids), self._deadline())
        by_id = {c.id: c for c in view.ceilings}
        seen: set[tuple[str, tuple[tuple[str, str], ...], Period, Unit]] = set()
        out: list[CeilingStatus] = []

        def add(
            ceiling: Ceiling,
            scope: tuple[tuple[str, str], ...],
            committed: int,
            reserved: int,
            period: Period,
            unit: Unit,
        ) -> None:
            bound = dict(scope)
            if any(bound.get(k) != v for k, v in wanted.items()):
                return
            for limit in engine.effective_limits(ceiling, bound, view.overrides):
                if limit.period is period and limit.unit is unit:
                    seen.add((ceiling.id, scope, period, unit))
                    out.append(CeilingStatus.build(ceiling, bound, limit, committed, reserved, buckets[period].end))

        for row in rows:
            ceiling = by_id.get(row.ceiling_id)
            if ceiling is not None:
                add(ceiling, row.scope, row.committed, row.reserved, row.period, row.unit)
        for ceiling in view.ceilings:
            if "*" in ceiling.match_dict.values():
                continue
            for limit in engine.effective_limits(ceiling, ceiling.match_dict, view.overrides):
                if (ceiling.id, ceiling.match, limit.period, limit.unit) not in seen:
                    add(ceiling, ceiling.match, 0, 0, limit.period, limit.unit)
        out.sort(key=lambda s: (s.ceiling, sorted(s.labels.items()), s.unit, list(Period).index(Period(s.period))))
        return Status(
            at=datetime.fromtimestamp(now, timezone.utc),
            ceilings=tuple(out),
            killswitches=view.control.killswitches if view.control is not None else (),
            unrecorded_usd=self.unrecorded_usd,
            spooled=self._settlement.pending,
        )

    def forecast(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Forecast:
        """Projected spend at each USD ceiling's period end, `on_track`, `depletion_at`, `confidence`."""
        from costguard import forecast as fc

        status = self.status(feature, customer, **labels)
        now = self.clock()
        rows = [row for row in status.ceilings if row.unit == "usd"]
        hours = [bucket_for(Period.HOUR, now - i * 3600, timezone.utc).id for i in range(fc.LOOKBACK_H)]
        keys = [engine.history_key(row.ceiling, row.labels, hour) for row in rows for hour in hours]
        totals = dl.call(lambda: self.store.totals(keys), self._deadline()) if keys else []
        out = []
        for index, row in enumerate(rows):
            hourly = [micros_to_usd(v) for v in totals[index * len(hours) : (index + 1) * len(hours)]]
            resets = row.resets_at.timestamp() if row.resets_at else None
            out.append(fc.build(row.ceiling, row.labels, row.period, row.spent, row.limit, hourly, now, resets))
        return fc.Forecast(status.at, tuple(out))

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

        def epoch(value: datetime | float | None) -> float | None:
            return value.timestamp() if isinstance(value, datetime) else value

        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self._background.flush()
        query = AuditQuery(epoch(since), epoch(until), feature, customer, decision, limit, before_id=before_id)
        return dl.call(lambda: self.store.audit(query), self._deadline())

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
    ) -> None:
        """Set a ceiling's limit at run time (persisted; wins over the config; a reason is required)."""
        unit, amount = self._limit_amount(usd, calls, tokens)
        self._change_limit(scope, period, unit, amount, reason, actor)

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
        self._change_limit(scope, period, Unit(unit), None, reason, actor)

    @staticmethod
    def _limit_amount(usd: Money | None, calls: int | None, tokens: int | None) -> tuple[Unit, int]:
        given = [(u, v) for u, v in ((Unit.USD, usd), (Unit.CALLS, calls), (Unit.TOKENS, tokens)) if v is not None]
        if len(given) != 1:
            raise ValueError("set_limit needs exactly one of usd=, calls= or tokens=")
        unit, value = given[0]
        if unit is Unit.USD:
            return unit, to_micros(value, round_up=False, what="usd")
        return unit, check_count(value, what=unit.value)

    def _change_limit(
        self,
        scope: Mapping[str, str],
        period: str | Period,
        unit: Unit,
        amount: int | None,
        reason: str,
        actor: str | None,
    ) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a reason is required to change a limit (it goes in the audit log)")
        try:
            period = Period(period)
        except ValueError:
            raise ValueError(f"period must be one of {[p.value for p in Period]}, got {period!r}") from None
        self.require_known_labels(scope, "a limit")
        bound = tuple(sorted(normalize_labels(scope, max_length=self.max_label_length).items()))
        now = self.clock()
        view = self._refresh(now)
        old = self._current_limit(view, dict(bound), period, unit)
        override = engine.LimitOverride(bound, period, unit, amount or 0, reason, actor, now)

        def shown(value: int | None) -> float | None:
            if value is None:
                return None
            return micros_to_usd(value) if unit is Unit.USD else float(value)

        record = AuditRecord(
            now,
            "limit_changed",
            dict(bound),
            data={
                "scope": dict(bound),
                "period": period.value,
                "unit": unit.value,
                "old": shown(old),
                "new": shown(amount),
                "reason": reason,
                "actor": actor,
            },
        )
        self.store.set_override(override, amount is None, record)
        self._invalidate_control()
        self._notify(
            Event(
                kind="limit_changed",
                labels=dict(bound),
                at=datetime.fromtimestamp(now, timezone.utc),
                period=period.value,
                unit=unit.value,
                limit=shown(amount),
                reason=reason,
                actor=actor,
            )
        )

    def current_limit(self, scope: Mapping[str, str], period: str | Period, unit: str | Unit = "usd") -> float | None:
        """The limit in force for a ceiling scope (run-time override, else config), fresh from the store;
        USD as a float, calls and tokens as counts; None when no ceiling has that scope and period."""
        self._invalidate_control()
        view = self._refresh(self.clock())
        amount = self._current_limit(view, dict(scope), Period(period), Unit(unit))
        if amount is None:
            return None
        return micros_to_usd(amount) if Unit(unit) is Unit.USD else float(amount)

    @staticmethod
    def _current_limit(view: _ControlView, scope: dict[str, str], period: Period, unit: Unit) -> int | None:
        for ceiling in view.ceilings:
            if ceiling.match_dict == scope or (
                set(ceiling.match_dict) == set(scope) and ceiling.bind(scope) is not None
            ):
                for limit in engine.effective_limits(ceiling, scope, view.overrides):
                    if limit.period is period and limit.unit is unit:
                        return limit.amount
        return None

    # ----------------------------------------------------------------- decorator
    def with_kill_switch(self, feature: str, **options: Any) -> Callable[[Callable[..., Any]], Decorated]:
        """Guard a function (sync or async) as `feature`; see `costguard.with_kill_switch`."""
        from costguard.decorator import with_kill_switch

        return with_kill_switch(feature, guard=self, **options)

    # ----------------------------------------------------------------- background: alerts, audit, cache
    def _notify(self, event: Event) -> None:
        self._alerts.dispatch(event)

    def _emit_crossings(self, crossings: Sequence[engine.Crossing], now: float) -> None:
        if not crossings:
            return
        at = datetime.fromtimestamp(now, timezone.utc)
        for crossing in crossings:
            op = crossing.counter
            kind: EventKind
            if crossing.cleared:
                if not op.hard:
                    continue  # a soft ceiling never killed anything
                kind = "kill_cleared"
            else:
                kind = "kill" if crossing.threshold >= 1.0 and op.hard else "warn"
            self._notify(
                Event(
                    kind=kind,
                    labels=dict(op.scope),
                    at=at,
                    threshold=crossing.threshold,
                    period=op.period.value,
                    unit=op.unit.value,
                    spent=op.display(crossing.total),
                    limit=op.display(op.limit),
                    reason=crossing.reason or None,
                    ceiling=op.ceiling_id,
                    resets_at=None if op.resets_at is None else datetime.fromtimestamp(op.resets_at, timezone.utc),
                    enforcement="hard" if op.hard else "soft",
                    bucket=_bucket_of(crossing),
                )
            )

    def _audit_later(self, record: AuditRecord) -> None:
        def write() -> None:
            try:
                self.store.append([record])
            except StoreError:
                log.debug("costguard: audit record dropped, the store is unavailable")

        self._background.submit(write)

    def _store_error(self, exc: StoreError, during: str, *, topic: str = "store") -> None:
        """Log and alert, at most once a minute per topic (an outage fails every call: one report, with
        a count of the rest, is what an operator can use)."""
        now = self.clock()
        with self._error_lock:
            last, suppressed = self._error_reports.get(topic, (float("-inf"), 0))
            if now - last < _STORE_ERROR_EVENT_EVERY_S:
                self._error_reports[topic] = (last, suppressed + 1)
                log.debug("costguard: store error during %s: %s", during, exc)
                return
            self._error_reports[topic] = (now, 0)
        unrecorded = self._settlement.unrecorded()
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        admitted = (
            f"; ${micros_to_usd(unrecorded):g} admitted without a reservation, not yet recorded" if unrecorded else ""
        )
        log.warning("costguard: store error during %s: %s%s%s", during, exc, more, admitted)
        self._notify(
            Event(
                kind="store_error",
                labels={},
                at=datetime.fromtimestamp(now, timezone.utc),
                reason=f"{during}: {exc}{more}",
                unrecorded_usd=micros_to_usd(unrecorded),
            )
        )

    def _maintain(self, now: float) -> None:
        if now - self._last_purge >= _PURGE_EVERY_S:
            self._last_purge = now
            self._background.submit(lambda: self.store.purge(now))
        if now >= self._next_orphan_scan:
            # A process that died with costs in its spool: this one writes them.
            self._next_orphan_scan = now + _ORPHANS_EVERY_S
            self._settlement.scan_orphans()

    def _cache_get(self, key: str) -> bytes | None:
        try:
            return self.store.cache_get(key, self.clock())
        except StoreError as exc:
            self._store_error(exc, "cache read")
            return None

    async def _acache_get(self, key: str) -> bytes | None:
        try:
            return await self.store.acache_get(key, self.clock())
        except StoreError as exc:
            self._store_error(exc, "cache read")
            return None

    # ----------------------------------------------------------------- lifecycle
    def close(self, timeout: float = 5.0) -> None:
        """Write queued costs and deliver queued alerts (waiting up to `timeout` for each), then release
        the store's connections. Costs the store did not take stay in the spool for the next process;
        alerts a receiver has not taken by then are dropped and logged."""
        if self._closed:
            return
        self._closed = True
        self._settlement.close(timeout)
        self._background.close(timeout)
        self._alerts.close(timeout)
        self.store.close()
        _live_guards.discard(self)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Guard(store={self.store.url!r}, ceilings={len(self.ceilings)})"


def _open(url: str, deadline_ms: float, options: Mapping[str, Any] | None) -> Store:
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


_live_guards: weakref.WeakSet[Guard] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for guard in list(_live_guards):
        try:
            guard.close()
        except Exception:
            log.exception("costguard: closing a guard at exit failed")
