"""A reserve the store did not answer: an outage follows `on_store_error`, an overload never does.

`closed` serves the fallback; `open` admits the call without a reservation — spooled by `Settlement`
and recorded when the store answers — up to the outage allowance per process and feature. A store
that answered this process's other calls while this one waited, or that answers a trivial request on a
connection of its own (`overloaded`), is overloaded, not down: the call is refused with reason
`store_busy` whatever the policy, because admitting it unreserved is how a slow reply would push a cap
past its limit while every other process fills it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from costguard import deadline as dl
from costguard import engine
from costguard.decision import Decision, Reason
from costguard.errors import Blocked, StoreError, StoreUnavailable
from costguard.events import AuditRecord
from costguard.model import Unit, micros_to_usd
from costguard.reporting import Reporter
from costguard.reservation import Reservation
from costguard.settings import FeatureSettings, StoreErrorPolicy
from costguard.settlement import Settlement
from costguard.settler import Settler
from costguard.steps import Io, Steps
from costguard.stores.base import Store

__all__ = ["Outage", "overloaded"]

# While the store can't be reached, `on_store_error: open` admits at most this much per process and
# feature without a reservation (unless `outage_allowance_usd` says otherwise): the smaller of $1 and
# 1 % of the tightest hard USD ceiling the call falls under.
_ALLOWANCE_CAP = 1_000_000
_ALLOWANCE_SHARE = 100
# How long the liveness check may take: as long as the deadline, at most this. Taking an overloaded
# store for a down one admits calls unreserved, past the cap; taking a down one for overloaded only
# refuses the first calls of an outage a little later — and a server starting sessions for a fleet's
# cold start took more than a quarter of a 300 ms deadline to open one (8 x 32 callers, CPU hogs).
_PING_MAX_S = 1.0


def overloaded(store: Store, exc: StoreError, deadline: dl.Deadline) -> Steps[bool]:
    """Steps: whether a reserve that failed with `exc` met a slow store rather than an unreachable one —
    no turn, no reply or no new connection in time, while the store answered this process's other calls
    during the wait (past its first tenth, so that a reply already on its way when a server froze is no
    evidence), or, when it answered none of them (every call of the process queued on one hot row), a
    trivial request on a connection of its own (`Store.ping`, for as long as the deadline, at most 1 s).
    A frozen, dead or unreachable server answers neither."""
    if not isinstance(exc, StoreUnavailable):  # an error the store answered with: the policy decides
        return False
    if store.answered_since(deadline.end - deadline.seconds + min(0.1, deadline.seconds / 10)):
        return True
    alive: bool = yield Io(store.ping, store.aping, (min(_PING_MAX_S, deadline.seconds),))
    return alive


@dataclass(eq=False)
class Outage:
    """What a guarded call does when its reserve got no answer (one per guard)."""

    store: Store
    settlement: Settlement
    settler: Settler
    reporter: Reporter
    on_store_error: StoreErrorPolicy
    outage_allowance: int | None

    def policy(self, settings: FeatureSettings) -> StoreErrorPolicy:
        """The feature's `on_store_error`, else the guard's."""
        return settings.on_store_error or self.on_store_error

    def refuse(
        self,
        labels: Mapping[str, str],
        now: float,
        message: str = "the costguard store can't be reached and on_store_error is 'closed'",
        reason: Reason = "store_error",
    ) -> None:
        """Raise `Blocked` for `reason`, audited."""
        self.reporter.audit_later(AuditRecord(now, "blocked", labels, data={"reason": reason}))
        raise Blocked(Decision(allowed=False, reason=reason, labels=dict(labels), message=message))

    def allowance(self, plan: engine.ReservePlan, settings: FeatureSettings) -> int:
        """Micro-dollars this process may admit for the feature without a reservation while the store is
        unreachable: as configured, else the smaller of $1 and 1 % of the tightest hard USD ceiling."""
        if settings.outage_allowance_usd is not None:
            return settings.outage_allowance_usd
        if self.outage_allowance is not None:
            return self.outage_allowance
        limits = [op.limit for op in plan.counters if op.hard and op.unit is Unit.USD]
        return min([_ALLOWANCE_CAP, *(limit // _ALLOWANCE_SHARE for limit in limits)])

    def unreserved(
        self,
        plan: engine.ReservePlan,
        labels: Mapping[str, str],
        settings: FeatureSettings,
        exc: StoreError,
        deadline: dl.Deadline | None,
        now: float,
    ) -> Steps[Reservation]:
        """Steps: the reservation `open` admits without the store, or `Blocked` (`store_busy` when the
        store is only slow, `store_error` when it is down and the policy or the allowance says no)."""
        self.reporter.store_error(exc, "reserve")
        feature = labels.get("feature", "")
        reason: Reason = "store_error"
        if deadline is not None and (yield from overloaded(self.store, exc, deadline)):
            message = (
                f"the costguard store answered other calls but not this one within store_deadline_ms "
                f"({deadline.seconds * 1000:g} ms): it is overloaded, not down, so the call is refused rather "
                "than admitted without a reservation; raise store_deadline_ms or give the store more capacity"
            )
            reason = "store_busy"
        elif self.policy(settings) == "open":
            allowance = self.allowance(plan, settings)
            if self.settlement.admit_unreserved(plan, feature, allowance) is not None:
                self.reporter.outage(feature, allowance)
                decision = Decision(
                    allowed=True,
                    reason="store_error",
                    labels=dict(labels),
                    reservation_id=plan.reservation_id,
                    message="allowed without a reservation: the costguard store can't be reached "
                    "(on_store_error: open); the cost is spooled and recorded when it answers",
                )
                return Reservation(plan, decision, settings, self.settler, stored=False)
            used = self.settlement.unrecorded(feature)
            if used >= allowance or used + plan.estimate_usd > allowance:  # as `admit_unreserved` decides
                message = (
                    f"the costguard store can't be reached and {feature}'s outage allowance "
                    f"(${micros_to_usd(allowance):g} per process) is used up"
                )
            else:  # the allowance had room: the spool could not keep the admission
                message = (
                    "the costguard store can't be reached and the outage spool could not keep the call "
                    f"(full at buffer_size={self.settlement.max_items} writes, or the disk refused it)"
                )
        else:
            message = "the costguard store can't be reached and on_store_error is 'closed'"
        if deadline is not None and deadline.unknown:
            self.settlement.abandon(plan.reservation_id, now)  # it may have been applied: give it back
        self.refuse(labels, now, message, reason)
        raise AssertionError("unreachable")  # pragma: no cover
