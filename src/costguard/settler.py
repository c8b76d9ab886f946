"""The settler: what a reservation settles through — commit, release, and commits by id.

It turns "this call cost X" into the amounts and the audit record, feeds learned estimates, and hands
the write to `Settlement` (at once, or in a background batch, or spooled). A reservation carries its
settler, so settling never goes back through the `Guard`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from costguard import deadline as dl
from costguard.engine import CommitOutcome
from costguard.estimates import Estimates
from costguard.events import AuditRecord
from costguard.leasing import Leases
from costguard.model import Money, Unit, check_count, micros_to_usd, to_micros
from costguard.observe import Fanout, timed
from costguard.pricing import Pricing
from costguard.reporting import Reporter
from costguard.reservation import Reservation
from costguard.settings import CallErrorPolicy, CommitMode
from costguard.settlement import Settlement
from costguard.steps import Io, Steps, nothing

__all__ = ["Settler"]


@dataclass(eq=False, kw_only=True, repr=False)
class Settler:
    """Settles reservations of one guard."""

    settlement: Settlement
    estimates: Estimates
    reporter: Reporter
    pricing: Pricing
    clock: Callable[[], float]
    commit_mode: CommitMode
    on_call_error: CallErrorPolicy
    deadline_s: float
    leases: Leases | None = None
    observer: Fanout | None = field(default=None, init=False)  # metrics and traces (`Guard.observe`)

    def commit(self, reservation: Reservation, usd_micros: int | None, tokens: int | None) -> Steps[None]:
        """Steps: record the actual cost (None: the estimate) plus what the call `charge()`d (built now)."""
        plan = reservation.plan
        cost = reservation.cost
        if usd_micros is None:
            # Nothing priced the call: what it charge()d is its cost when it charged anything; only a call
            # that reported nothing at all keeps its estimate (never $0 for a call that ran).
            usd_micros = 0 if cost.items else None
        actual_usd = (plan.estimate_usd if usd_micros is None else usd_micros) + cost.charged_micros
        actual_tokens = check_count(tokens, what="tokens") if tokens is not None else reservation.amount(Unit.TOKENS)
        if usd_micros is not None and reservation.settings.estimator == "learned":  # a known cost, learned from
            self.estimates.learn(dict(plan.labels).get("feature", ""), reservation.settings, actual_usd)
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
        actual = {Unit.USD: actual_usd, Unit.CALLS: 1, Unit.TOKENS: actual_tokens}
        return self._settle(reservation, actual, record)

    def release(self, reservation: Reservation, why: str) -> Steps[None]:
        """Steps: give the reservation back; money already spent through `charge()` is never given back."""
        if reservation.cost.charged_micros:
            return self.commit(reservation, 0, 0)
        plan = reservation.plan
        record = AuditRecord(
            self.clock(),
            "release",
            dict(plan.labels),
            plan.reservation_id,
            {"estimate_usd": micros_to_usd(plan.estimate_usd), "why": why},
        )
        return self._settle(reservation, None, record)

    def _settle(self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord) -> Steps[None]:
        steps = self._settle_steps(reservation, actual, record)
        observer = self.observer
        return steps if observer is None else self._observed(steps, observer, reservation, actual)

    @staticmethod
    def _observed(
        steps: Steps[None], observer: Fanout, reservation: Reservation, actual: Mapping[Unit, int] | None
    ) -> Steps[None]:
        """`steps`, with the settle (estimate, actual, time taken) told to the observer."""
        start = time.perf_counter()
        try:
            yield from timed(steps, observer)
        finally:
            actual_usd = None if actual is None else micros_to_usd(actual[Unit.USD])
            estimate = micros_to_usd(reservation.plan.estimate_usd)
            observer.settled(reservation.decision, estimate, actual_usd, time.perf_counter() - start)

    def _settle_steps(
        self, reservation: Reservation, actual: Mapping[Unit, int] | None, record: AuditRecord
    ) -> Steps[None]:
        local = reservation.local
        if local is not None:
            assert self.leases is not None
            self.leases.finish(local, actual)  # the slices' part, settled here; the store's part below
            if not local.cold:
                self.reporter.audit_later(record)
                return nothing()
        background = (reservation.settings.commit or self.commit_mode) == "background"
        return self.settlement.settle(reservation.id, actual, record.at, record, background=background)

    def commit_id(self, reservation_id: str, usd: Money | None, tokens: int | None) -> Steps[bool]:
        """Steps: commit a reservation made elsewhere, by id (None: keep the estimate); False on a repeat."""
        actual = {Unit.USD: 0 if usd is None else to_micros(usd, round_up=False, what="actual cost"), Unit.CALLS: 1}
        if tokens is not None:
            actual[Unit.TOKENS] = check_count(tokens, what="tokens")
        if usd is None:
            actual.pop(Unit.USD)  # keep the estimate
        data = {"actual_usd": None if usd is None else micros_to_usd(actual[Unit.USD])}
        return self.by_id(reservation_id, actual, AuditRecord(self.clock(), "commit", {}, reservation_id, data))

    def release_id(self, reservation_id: str) -> Steps[bool]:
        """Steps: release a reservation made elsewhere, by id; False on a repeat."""
        return self.by_id(reservation_id, None, AuditRecord(self.clock(), "release", {}, reservation_id))

    def by_id(self, reservation_id: str, actual: Mapping[Unit, int] | None, record: AuditRecord) -> Steps[bool]:
        """Steps: settle a reservation made elsewhere, by id, now (raises `StoreError`); False on a repeat."""
        store = self.settlement.store
        outcome: CommitOutcome = yield Io(
            store.settle,
            store.asettle,
            (reservation_id, actual, record.at, record),
            deadline=dl.Deadline(self.deadline_s),
        )
        if actual is not None:
            self.reporter.settled(outcome, record.at, False)
        return outcome.applied
