"""`Guard`: carries out the engine's plans against a store — reserve, commit, release, check, status, limits."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from costguard import engine
from costguard.current import current_labels
from costguard.decision import Decision
from costguard.errors import Blocked, BudgetExceeded, KillSwitchActive, StoreError
from costguard.estimators import LearnedEstimator, LearnSettings
from costguard.events import AuditQuery, AuditRecord, Event, EventKind
from costguard.fallback import Fallback
from costguard.forecast import Forecast
from costguard.killswitch import KillSwitch, blocking_switch
from costguard.model import (
    DEFAULT_MAX_LABEL_LENGTH,
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
from costguard.notify.dispatcher import Background, Dispatcher, LaneStats, Notifier
from costguard.periods import bucket_for
from costguard.pricing import Pricing
from costguard.reservation import AsyncReserveContext, Reservation
from costguard.status import CeilingStatus, Status
from costguard.stores import Store, open_store
from costguard.stores.base import Control

if TYPE_CHECKING:
    from costguard.decorator import Decorated

__all__ = ["FeatureSettings", "Guard"]

log = logging.getLogger("costguard")

StoreErrorPolicy = Literal["open", "closed"]
CallErrorPolicy = Literal["release", "keep"]
CommitMode = Literal["sync", "background"]

_PURGE_EVERY_S = 600.0
_STORE_ERROR_EVENT_EVERY_S = 60.0


@dataclass(frozen=True)
class FeatureSettings:
    """Per-feature behaviour (limits themselves live in ceilings)."""

    estimate_usd: int = 0
    estimate_tokens: int = 0
    degrade_at: float | None = None
    fallback: Fallback | None = None
    on_store_error: StoreErrorPolicy | None = None
    on_call_error: CallErrorPolicy | None = None
    commit: CommitMode | None = None
    max_call_usd: int | None = None
    estimator: Literal["fixed", "learned"] = "fixed"
    learn: LearnSettings = field(default_factory=LearnSettings)


_DEFAULT_SETTINGS = FeatureSettings()


@dataclass
class _ControlView:
    control: Control | None = None
    ceilings: tuple[Ceiling, ...] = ()
    overrides: dict[str, dict[tuple[Period, Unit], int]] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    ok: bool = False


@dataclass(frozen=True)
class _Pending:
    """A store write that failed and waits in the buffer: a settle, or a plan to record first."""

    reservation_id: str
    actual: Mapping[Unit, int] | None
    at: float
    record: AuditRecord | None
    plan: engine.ReservePlan | None = None


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
        killswitch_cache_ms: float = 500.0,
        exempt_features: Iterable[str] = (),
        exempt_paths: Iterable[str] = (),
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        buffer_size: int = 10_000,
        clock: Callable[[], float] | None = None,
        store_options: Mapping[str, Any] | None = None,
    ) -> None:
        if on_store_error not in ("open", "closed"):
            raise ValueError(f"on_store_error must be 'open' or 'closed', got {on_store_error!r}")
        if on_call_error not in ("release", "keep"):
            raise ValueError(f"on_call_error must be 'release' or 'keep', got {on_call_error!r}")
        if commit not in ("sync", "background"):
            raise ValueError(f"commit must be 'sync' or 'background', got {commit!r}")
        if commit_batch < 1:
            raise ValueError(f"commit_batch must be at least 1, got {commit_batch!r}")
        self.clock: Callable[[], float] = clock or time.time
        self.tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self.ceilings: tuple[Ceiling, ...] = tuple(ceilings)
        ids = [c.id for c in self.ceilings]
        if len(ids) != len(set(ids)):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"two ceilings have the same match: {', '.join(dupes)}; merge their limits")
        self.features: dict[str, FeatureSettings] = dict(features or {})
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
        self._alerts = Dispatcher(self.notifiers, queue_size=alert_queue_size)
        self.killswitch_cache_s = killswitch_cache_ms / 1000.0
        self.exempt_features = frozenset(exempt_features)
        self.exempt_paths = tuple(exempt_paths)
        self.max_label_length = max_label_length
        self.store: Store = store if isinstance(store, Store) else open_store(store, **dict(store_options or {}))
        self.killswitch = KillSwitch(self)
        self._view = _ControlView()
        self._view_lock = threading.Lock()
        self._background = Background()
        self._pending: deque[_Pending] = deque()
        self._buffer_size = buffer_size
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._commit_wakeup = threading.Event()
        self._committer: threading.Thread | None = None
        self.dropped_records = 0
        self._last_purge = self.clock()
        self._last_store_error_event = float("-inf")
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

    def feature(self, name: str) -> FeatureSettings:
        """The settings of a feature (defaults from `"*"`, else built-in defaults)."""
        return self.features.get(name) or self.features.get("*") or _DEFAULT_SETTINGS

    # ----------------------------------------------------------------- labels and amounts
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

    def _refresh(self, now: float) -> _ControlView:
        if self._control_stale(now):
            try:
                self._control_loaded(self.store.control(), now)
            except StoreError as exc:
                self._control_failed(exc, now)
        return self._view_now()

    async def _arefresh(self, now: float) -> _ControlView:
        if self._control_stale(now):
            try:
                self._control_loaded(await self.store.acontrol(), now)
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

    def _raise_store_closed(self, labels: Mapping[str, str], now: float) -> None:
        self._audit_later(AuditRecord(now, "blocked", labels, data={"reason": "store_error"}))
        raise Blocked(
            Decision(
                allowed=False,
                reason="store_error",
                labels=dict(labels),
                message="the costguard store is unavailable and on_store_error is 'closed'",
            )
        )

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

    def _after_reserve(
        self, plan: engine.ReservePlan, outcome: engine.ReserveOutcome, settings: FeatureSettings, now: float
    ) -> Decision:
        self._emit_crossings(outcome.crossings, now)
        decision = engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)
        if not decision.allowed:
            raise BudgetExceeded(decision)
        return decision

    def _unreserved(
        self,
        plan: engine.ReservePlan,
        labels: Mapping[str, str],
        settings: FeatureSettings,
        exc: StoreError,
        now: float,
    ) -> Decision:
        """The store failed during reserve: closed → blocked; open → allowed, cost recorded later."""
        self._store_error(exc, "reserve")
        if self._store_policy(settings) == "closed":
            self._raise_store_closed(labels, now)
        return Decision(
            allowed=True,
            reason="store_error",
            labels=dict(labels),
            reservation_id=plan.reservation_id,
            message="allowed without a reservation: the costguard store is unavailable (on_store_error: open)",
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
        view = self._refresh(now)
        self._pre_check(view, call_labels, settings, now)
        plan = self._plan(view, call_labels, amounts, now)
        try:
            outcome = self.store.reserve(plan, self._reserve_record(plan, fallback))
        except StoreError as exc:
            return Reservation(
                self, plan, self._unreserved(plan, call_labels, settings, exc, now), settings, stored=False
            )
        self._maintain(now)
        return Reservation(self, plan, self._after_reserve(plan, outcome, settings, now), settings)

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
        view = await self._arefresh(now)
        self._pre_check(view, call_labels, settings, now)
        plan = self._plan(view, call_labels, amounts, now)
        try:
            outcome = await self.store.areserve(plan, self._reserve_record(plan, fallback))
        except StoreError as exc:
            return Reservation(
                self, plan, self._unreserved(plan, call_labels, settings, exc, now), settings, stored=False
            )
        self._maintain(now)
        return Reservation(self, plan, self._after_reserve(plan, outcome, settings, now), settings)

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

    def _settled(self, outcome: engine.CommitOutcome, at: float) -> None:
        self._emit_crossings(outcome.crossings, at)
        for op, total in zip(outcome.counters, outcome.totals, strict=True):
            if op.hard and total > op.limit:
                log.warning(
                    "costguard: %s %s ceiling %s is over its limit after commit: %g of %g "
                    "(the actual cost exceeded the estimate)",
                    op.period.value,
                    op.unit.value,
                    encode_scope(dict(op.scope)) or "(all)",
                    op.display(total),
                    op.display(op.limit),
                )

    def _in_background(self, reservation: Reservation) -> bool:
        return (reservation.settings.commit or self.commit_mode) == "background"

    def _settle(self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord) -> None:
        pending = _Pending(reservation.id, actual, record.at, record, None if reservation.stored else reservation.plan)
        if self._in_background(reservation):
            self._enqueue_commit(pending)
            return
        try:
            self._write_pending(pending)
        except StoreError as exc:
            self._store_error(exc, "commit")
            self._buffer(pending)
            return
        if self._pending:
            self._flush_pending(wait=False)

    async def _asettle(self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord) -> None:
        pending = _Pending(reservation.id, actual, record.at, record, None if reservation.stored else reservation.plan)
        if self._in_background(reservation):
            self._enqueue_commit(pending)
            return
        try:
            if pending.plan is not None:
                await self.store.areserve(engine.force(pending.plan), None)
            self._settled(
                await self.store.asettle(pending.reservation_id, pending.actual, pending.at, pending.record), pending.at
            )
        except StoreError as exc:
            self._store_error(exc, "commit")
            self._buffer(pending)
            return
        if self._pending:
            self._background.submit(self._flush_pending)

    # ----------------------------------------------------------------- background commits
    def _enqueue_commit(self, pending: _Pending) -> None:
        """`commit: background`: the commit joins the write buffer and a worker sends it in a batch."""
        self._buffer(pending)
        if self._committer is None or not self._committer.is_alive():
            with self._pending_lock:
                if self._committer is None or not self._committer.is_alive():
                    self._committer = threading.Thread(target=self._run_committer, name="costguard-commit", daemon=True)
                    self._committer.start()
        self._commit_wakeup.set()

    def _run_committer(self) -> None:
        backoff = 0.05
        while not self._closed:
            self._commit_wakeup.wait(1.0)
            self._commit_wakeup.clear()
            try:
                self._flush_pending()
            except Exception:  # the worker must survive anything
                log.exception("costguard: background commit failed")
            if self._pending and not self._closed:
                time.sleep(backoff)  # the store is down: try again soon, not in a tight loop
                backoff = min(backoff * 2, 2.0)
                self._commit_wakeup.set()
            else:
                backoff = 0.05

    def _write_pending(self, pending: _Pending) -> None:
        if pending.plan is not None:
            # Allowed while the store was down: count it now, unconditionally, then settle as usual.
            self.store.reserve(engine.force(pending.plan), None)
        self._settled(self.store.settle(pending.reservation_id, pending.actual, pending.at, pending.record), pending.at)

    def _buffer(self, pending: _Pending) -> None:
        with self._pending_lock:
            if len(self._pending) >= self._buffer_size:
                self._pending.popleft()
                self.dropped_records += 1
                log.error(
                    "costguard: the write buffer is full (%d); the oldest buffered cost was dropped "
                    "(%d dropped so far)",
                    self._buffer_size,
                    self.dropped_records,
                )
            self._pending.append(pending)

    def _flush_pending(self, *, wait: bool = True) -> int:
        """Write buffered costs in batches (one `settle_many` each); returns how many were written.

        One flusher at a time: with `wait=False` a caller that finds another flush running leaves it to it.
        """
        if not self._flush_lock.acquire(blocking=wait):
            return 0
        try:
            written = 0
            while True:
                with self._pending_lock:
                    batch = list(itertools.islice(self._pending, self.commit_batch))
                if not batch:
                    return written
                try:
                    for pending in batch:
                        if pending.plan is not None:
                            # Allowed while the store was down: count it now (idempotent by id), then settle.
                            self.store.reserve(engine.force(pending.plan), None)
                    results = self.store.settle_many([(p.reservation_id, p.actual, p.at, p.record) for p in batch])
                except StoreError:
                    return written
                done = 0
                for pending, result in zip(batch, results, strict=True):
                    if isinstance(result, StoreError):
                        break
                    self._settled(result, pending.at)
                    done += 1
                with self._pending_lock:
                    for pending in batch[:done]:
                        if self._pending and self._pending[0] is pending:
                            self._pending.popleft()
                written += done
                if done < len(batch):
                    return written
        finally:
            self._flush_lock.release()

    @property
    def pending(self) -> int:
        """Costs buffered while the store was unavailable, not yet written."""
        return len(self._pending)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write buffered costs and wait for background work (alerts, audit); False if some remain."""
        deadline = time.monotonic() + timeout
        self._flush_pending()
        done = self._background.flush(timeout)
        delivered = self._alerts.flush(max(0.0, deadline - time.monotonic()))
        return done and delivered and not self._pending

    def alert_stats(self) -> list[LaneStats]:
        """Per notifier in this process: events delivered, given up on after retries, dropped, queued."""
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
        outcome = self.store.settle(reservation_id, actual, now, record)
        self._settled(outcome, now)
        return outcome.applied

    def release(self, reservation_id: str) -> bool:
        """Release a reservation made elsewhere (by id); idempotent — a repeat returns False."""
        now = self.clock()
        outcome = self.store.settle(reservation_id, None, now, AuditRecord(now, "release", {}, reservation_id))
        return outcome.applied

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
        totals = self.store.totals([op.key for op in plan.counters])
        outcome = engine.evaluate_reserve(plan, totals, [set() for _ in totals])
        return engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)

    def status(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Status:
        """Spend against every ceiling in its current period; filter by feature, customer or any label."""
        now = self.clock()
        wanted = normalize_labels({"feature": feature, "customer": customer, **labels}, max_length=10_000)
        view = self._refresh(now)
        buckets = {p: bucket_for(p, now, self.tz) for p in Period}
        rows = self.store.list_counters({p: b.id for p, b in buckets.items()})
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
        )

    def forecast(self, feature: str | None = None, customer: str | None = None, **labels: str) -> Forecast:
        """Projected spend at each USD ceiling's period end, `on_track`, `depletion_at`, `confidence`."""
        from costguard import forecast as fc

        status = self.status(feature, customer, **labels)
        now = self.clock()
        rows = [row for row in status.ceilings if row.unit == "usd"]
        hours = [bucket_for(Period.HOUR, now - i * 3600, timezone.utc).id for i in range(fc.LOOKBACK_H)]
        keys = [engine.history_key(row.ceiling, row.labels, hour) for row in rows for hour in hours]
        totals = self.store.totals(keys) if keys else []
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
        return self.store.audit(
            AuditQuery(epoch(since), epoch(until), feature, customer, decision, limit, before_id=before_id)
        )

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
                )
            )

    def _audit_later(self, record: AuditRecord) -> None:
        def write() -> None:
            try:
                self.store.append([record])
            except StoreError:
                log.debug("costguard: audit record dropped, the store is unavailable")

        self._background.submit(write)

    def _store_error(self, exc: StoreError, during: str) -> None:
        now = self.clock()
        log.warning("costguard: store error during %s: %s", during, exc)
        if now - self._last_store_error_event >= _STORE_ERROR_EVENT_EVERY_S:
            self._last_store_error_event = now
            self._notify(
                Event(
                    kind="store_error",
                    labels={},
                    at=datetime.fromtimestamp(now, timezone.utc),
                    reason=f"{during}: {exc}",
                )
            )

    def _maintain(self, now: float) -> None:
        if now - self._last_purge >= _PURGE_EVERY_S:
            self._last_purge = now
            self._background.submit(lambda: self.store.purge(now))
        if self._pending:
            self._background.submit(self._flush_pending)

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
        """Write buffered costs and deliver queued alerts (waiting up to `timeout` for each), then release
        the store's connections. Alerts a receiver has not taken by then are dropped and logged."""
        if self._closed:
            return
        self._closed = True
        self._flush_pending()
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


_live_guards: weakref.WeakSet[Guard] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for guard in list(_live_guards):
        try:
            guard.close()
        except Exception:
            log.exception("costguard: closing a guard at exit failed")
