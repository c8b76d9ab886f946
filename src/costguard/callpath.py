"""The guarded call: labels → plan → reserve → decision, written once (as steps) for sync and async.

    labels   the call's labels: context, arguments, `feature`
    amounts  what it reserves (`Estimates`), refused at once above `max_call_usd`
    control  kill switches and overrides (`ControlView`), refreshed when stale
    plan     every counter of every ceiling that applies (`engine.PlanCache`)
    reserve  one atomic store call; an overflow instance takes a second
    decide   `engine.decide`: allowed, degraded, or `BudgetExceeded` (`BudgetExpired` past a ceiling's ttl)

When the store can't be reached the call follows `on_store_error` (`Outage`): `closed` refuses, `open`
admits up to the outage allowance, spooled by `Settlement` until the store answers; a store that is only
slow refuses the call (`store_busy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo

from costguard import deadline as dl
from costguard import engine
from costguard.cache import StoreCache
from costguard.control import ControlState, ControlView
from costguard.current import current_labels
from costguard.decision import Decision
from costguard.errors import Blocked, BudgetExceeded, BudgetExpired, KillSwitchActive, StoreError
from costguard.estimates import Estimates
from costguard.events import AuditRecord
from costguard.ids import reservation_id
from costguard.leasing import Leases
from costguard.model import Money, Unit, encode_scope, micros_to_usd, normalize_labels
from costguard.observe import Fanout, timed
from costguard.outage import Outage
from costguard.pricing import Pricing
from costguard.reporting import Reporter
from costguard.reservation import Reservation
from costguard.settings import DEFAULT_FEATURE, FeatureSettings, StoreErrorPolicy
from costguard.settlement import Settlement
from costguard.settler import Settler
from costguard.steps import Io, Steps
from costguard.stores.base import Store

__all__ = ["CallPath"]


_PURGE_EVERY_S = 600.0
_ORPHANS_EVERY_S = 30.0


@dataclass(eq=False, kw_only=True, repr=False)
class CallPath:
    """Reserves for guarded calls and answers `check`; one per guard."""

    store: Store
    control: ControlView
    estimates: Estimates
    settler: Settler
    settlement: Settlement
    reporter: Reporter
    cache: StoreCache
    features: Mapping[str, FeatureSettings]
    tz: tzinfo
    thresholds: tuple[float, ...]
    on_store_error: StoreErrorPolicy
    max_label_length: int
    deadline_s: float
    outage_allowance: int | None
    clock: Callable[[], float]
    leases: Leases | None = None
    plans: engine.PlanCache = field(default_factory=engine.PlanCache, init=False)
    observer: Fanout | None = field(default=None, init=False)  # metrics and traces (`Guard.observe`)
    _last_purge: float = field(default=0.0, init=False)
    _next_orphan_scan: float = field(default=0.0, init=False)
    outage: Outage = field(init=False)

    def __post_init__(self) -> None:
        self._last_purge = self.clock()
        self.outage = Outage(
            self.store, self.settlement, self.settler, self.reporter, self.on_store_error, self.outage_allowance
        )

    @property
    def pricing(self) -> Pricing:
        """The guard's token prices (what `cost=` callables and client wrappers price usage with)."""
        return self.settler.pricing

    def feature(self, name: str) -> FeatureSettings:
        """The settings of a feature (defaults from `"*"`, else built-in defaults)."""
        return self.features.get(name) or self.features.get("*") or DEFAULT_FEATURE

    def labels(self, feature: str, labels: Mapping[str, object]) -> dict[str, str]:
        """The call's labels: the context's, then the call's own, then `feature`."""
        merged: dict[str, object] = {**current_labels(), **labels, "feature": feature}
        return normalize_labels(merged, max_length=self.max_label_length)

    # ----------------------------------------------------------------- reserve
    def reserve(
        self,
        feature: str,
        labels: Mapping[str, object],
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        fallback: str | None = None,
    ) -> Steps[Reservation]:
        """Steps: reserve the call's estimate against every ceiling that applies; raises `Blocked`."""
        steps = self._reserve(feature, labels, estimate_usd, estimate_tokens, fallback)
        observer = self.observer
        return steps if observer is None else self._observed(steps, observer, feature, estimate_usd, estimate_tokens)

    def _observed(
        self,
        steps: Steps[Reservation],
        observer: Fanout,
        feature: str,
        estimate_usd: Money | None,
        estimate_tokens: int | None,
    ) -> Steps[Reservation]:
        """`steps`, with the decision, its estimate and the time taken told to the observer."""
        start = time.perf_counter()
        try:
            reservation = yield from timed(steps, observer)
        except Blocked as blocked:
            amounts = self.estimates.amounts(feature, self.feature(feature), estimate_usd, estimate_tokens)
            observer.decided(blocked.decision, micros_to_usd(amounts[Unit.USD]), time.perf_counter() - start)
            raise
        estimate = micros_to_usd(reservation.plan.estimate_usd)
        observer.decided(reservation.decision, estimate, time.perf_counter() - start)
        return reservation

    def _reserve(
        self,
        feature: str,
        labels: Mapping[str, object],
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        fallback: str | None,
    ) -> Steps[Reservation]:
        now = self.clock()
        call_labels = self.labels(feature, labels)
        settings = self.feature(feature)
        amounts = self._amounts(feature, settings, estimate_usd, estimate_tokens, audit=True)
        store = self.store
        deadline = dl.Deadline(self.deadline_s) if store.remote else None
        state = self.control.fresh(now) or (yield from self.control.refresh(now, deadline))
        self._pre_check(state, call_labels, settings, now)
        plan = self._plan(state, call_labels, amounts, now)
        take = None
        if self.leases is not None:
            take = yield from self.leases.admit(plan, amounts, state.control, now, deadline)
            if take is not None and not take.cold:
                return self._served_locally(plan, take, settings, fallback)
        full = plan
        if take is not None:
            plan = engine.cold_plan(plan, take)  # the leased counters are covered by slices
        record = AuditRecord(
            plan.at,
            "reserve",
            dict(plan.labels),
            plan.reservation_id,
            {"estimate_usd": micros_to_usd(plan.estimate_usd), "fallback": fallback}
            if take is None
            else {
                "estimate_usd": micros_to_usd(plan.estimate_usd),
                "fallback": fallback,
                "leased_ceilings": engine.leased_ceilings(take),
            },
        )
        try:
            outcome = yield Io(store.reserve, store.areserve, (plan, record), deadline=deadline)
            moved = self._overflow(state, plan, outcome)
            if moved is not None:  # a new instance past max_instances: into the shared one
                plan = moved
                outcome = yield Io(store.reserve, store.areserve, (plan, record), deadline=deadline)
        except StoreError as exc:
            if take is not None:  # admitted without the store (or refused): the whole call, as without leases
                self._give_back(take)
            return (yield from self.outage.unreserved(full, call_labels, settings, exc, deadline, now))
        self._maintain(now)
        self.reporter.crossings(outcome.crossings, now)
        if self.leases is not None:
            self.leases.observe(plan, outcome)
        decision = engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)
        if not decision.allowed:
            if take is not None:
                self._give_back(take)
            if deadline is not None and deadline.unknown:
                # An earlier attempt timed out and may still be applied after this refusal: release it.
                self.settlement.abandon(plan.reservation_id, now)
            raise (BudgetExpired if decision.reason == "expired" else BudgetExceeded)(decision)
        if take is not None:
            outcome = engine.local_outcome(full, take, plan.counters, outcome)
            decision = engine.decide(full, outcome, now=now, degrade_at=settings.degrade_at)
        return Reservation(full if take is not None else plan, decision, settings, self.settler, local=take)

    def _served_locally(
        self, plan: engine.ReservePlan, take: engine.Take, settings: FeatureSettings, fallback: str | None
    ) -> Reservation:
        """A call whose every counter a slice covers: no round trip; its audit line is written in a batch."""
        decision = engine.decide(plan, engine.local_outcome(plan, take), now=plan.at, degrade_at=settings.degrade_at)
        data: dict[str, object] = {
            "estimate_usd": micros_to_usd(plan.estimate_usd),
            "fallback": fallback,
            "leased": True,
            "ceilings": [],
        }
        view = engine.leased_view(take)  # its `leased_ceilings` are written out by the audit writer
        self.reporter.audit_later(
            AuditRecord(plan.at, "reserve", dict(plan.labels), plan.reservation_id, data),
            lambda: {"leased_ceilings": view.ceilings()},
        )
        self._maintain(plan.at)
        return Reservation(plan, decision, settings, self.settler, local=take)

    def _give_back(self, take: engine.Take) -> None:
        assert self.leases is not None
        self.leases.finish(take, None)

    def check(
        self, feature: str, labels: Mapping[str, object], estimate_usd: Money | None, estimate_tokens: int | None
    ) -> Steps[Decision]:
        """Steps: would a call be allowed now? Reads only; reserves nothing."""
        now = self.clock()
        call_labels = self.labels(feature, labels)
        settings = self.feature(feature)
        try:
            amounts = self._amounts(feature, settings, estimate_usd, estimate_tokens, audit=False)
        except Blocked as blocked:
            return blocked.decision
        state = self.control.fresh(now) or (yield from self.control.refresh(now))
        try:
            self._pre_check(state, call_labels, settings, now)
        except Blocked as blocked:
            return blocked.decision
        plan = self._plan(state, call_labels, amounts, now)
        keys = [op.key for op in plan.counters]
        store = self.store
        totals = yield Io(store.totals, None, (keys,), deadline=dl.Deadline(self.deadline_s))
        outcome = engine.evaluate_reserve(plan, totals, [set() for _ in totals])
        return engine.decide(plan, outcome, now=now, degrade_at=settings.degrade_at)

    # ----------------------------------------------------------------- the decisions on the way
    def _amounts(
        self,
        feature: str,
        settings: FeatureSettings,
        estimate_usd: Money | None,
        estimate_tokens: int | None,
        *,
        audit: bool,
    ) -> dict[Unit, int]:
        amounts = self.estimates.amounts(feature, settings, estimate_usd, estimate_tokens)
        usd, cap = amounts[Unit.USD], settings.max_call_usd
        if cap is None or usd <= cap:
            return amounts
        labels = self.labels(feature, {})
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
            data = {"reason": "max_call_usd", "estimate_usd": micros_to_usd(usd), "limit": micros_to_usd(cap)}
            self.reporter.audit_later(AuditRecord(self.clock(), "blocked", labels, None, data))
        raise BudgetExceeded(decision)

    def _pre_check(self, state: ControlState, labels: Mapping[str, str], settings: FeatureSettings, now: float) -> None:
        """Raise when a kill switch covers the call, or when the store is down and the policy is closed."""
        switch = self.control.switch_for(state, labels)
        if switch is not None:
            scope = dict(switch.scope)
            self.reporter.audit_later(
                AuditRecord(now, "blocked", labels, data={"reason": "kill_switch", "scope": scope})
            )
            decision = Decision(
                allowed=False,
                reason="kill_switch",
                labels=dict(labels),
                scope=scope,
                message=f"kill switch active for {encode_scope(scope) or 'everything'}: {switch.reason}",
            )
            raise KillSwitchActive(decision, reason=switch.reason)
        if not state.ok and state.control is None and self.outage.policy(settings) == "closed":
            self.outage.refuse(labels, now)

    def _plan(
        self, state: ControlState, labels: Mapping[str, str], amounts: Mapping[Unit, int], now: float
    ) -> engine.ReservePlan:
        return self.plans.plan(
            reservation_id=reservation_id(),
            ceilings=state.ceilings,
            overrides=state.overrides,
            labels=labels,
            amounts=amounts,
            now=now,
            tz=self.tz,
            thresholds=self.thresholds,
        )

    @staticmethod
    def _overflow(
        state: ControlState, plan: engine.ReservePlan, outcome: engine.ReserveOutcome
    ) -> engine.ReservePlan | None:
        """The plan moved to a ceiling's shared overflow instance, when a registry counter refused a new
        instance of a ceiling with `overflow: share`; else None."""
        if outcome.allowed or outcome.blocked is None or plan.counters[outcome.blocked].counts_new < 0:
            return None
        registry = plan.counters[outcome.blocked].ceiling_id
        for ceiling in state.ceilings:
            if engine.INSTANCES_PREFIX + ceiling.id == registry:
                return engine.overflow_plan(plan, ceiling) if ceiling.overflow == "share" else None
        return None

    def _maintain(self, now: float) -> None:
        if now - self._last_purge >= _PURGE_EVERY_S:
            self._last_purge = now
            self.reporter.later(lambda: self.store.purge(now))
        if now >= self._next_orphan_scan:
            # A process that died with costs in its spool: this one writes them.
            self._next_orphan_scan = now + _ORPHANS_EVERY_S
            self.settlement.scan_orphans()
