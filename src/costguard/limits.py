"""Limit administration: run-time limits with reasons, as the CLI, admin API, MCP tools and dashboard set them.

A run-time limit is an override stored beside the kill switches: it wins over the config until
cleared, every process sees it at its next control refresh, and each change is audited (old and
new value, reason, actor) and announced as a `limit_changed` event.

A limit on a scope, period or unit no ceiling counted so far gets a new counter, which starts from what
the scope already spent this period when the store can tell (`LimitStart`): the scope's hourly spend
history, or the commits in a SQL store's audit log. Where it can't, the change says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any

from costguard import engine
from costguard.control import ControlState, ControlView
from costguard.errors import LimitNotFound
from costguard.events import AuditRecord, Event
from costguard.model import (
    Limit,
    Money,
    Period,
    Unit,
    check_count,
    encode_scope,
    micros_to_usd,
    normalize_labels,
    to_micros,
)
from costguard.reporting import Reporter
from costguard.steps import run
from costguard.stores.base import Store

__all__ = ["LimitStart", "Limits", "limit_amount"]

log = logging.getLogger("costguard")


def limit_amount(usd: Money | None, calls: int | None, tokens: int | None) -> tuple[Unit, int]:
    """The one unit and amount of a limit given as `usd=`, `calls=` or `tokens=`."""
    given = [(u, v) for u, v in ((Unit.USD, usd), (Unit.CALLS, calls), (Unit.TOKENS, tokens)) if v is not None]
    if len(given) != 1:
        raise ValueError("set_limit needs exactly one of usd=, calls= or tokens=")
    unit, value = given[0]
    if unit is Unit.USD:
        return unit, to_micros(value, round_up=False, what="usd")
    return unit, check_count(value, what=unit.value)


@dataclass(frozen=True)
class LimitStart:
    """What a limit set at run time counts from this period: the spend already counted against it."""

    # Whether the spend it counts from is what the scope spent this period so far (False: a new counter
    # starts from 0 and the store can't tell what the scope spent before it).
    known: bool
    # That spend, USD as dollars or calls / tokens; None when not known.
    spent: float | None
    # Where it comes from: `counter` (already counting), `spend history`, `audit log`, or None.
    source: str | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


@dataclass(eq=False, kw_only=True, repr=False)
class Limits:
    """Set, clear and read run-time limits of one guard."""

    store: Store
    control: ControlView
    reporter: Reporter
    clock: Callable[[], float]
    max_label_length: int
    tz: tzinfo = timezone.utc

    def set_limit(
        self,
        scope: Mapping[str, str],
        period: str | Period,
        unit: Unit,
        amount: int,
        reason: str,
        actor: str | None,
        notify: bool = True,
    ) -> LimitStart:
        """Set the run-time limit of a ceiling scope, period and unit; what it counts from this period."""
        start = self.change(scope, period, unit, amount, reason, actor, notify)
        assert start is not None
        return start

    def change(
        self,
        scope: Mapping[str, str],
        period: str | Period,
        unit: Unit,
        amount: int | None,
        reason: str,
        actor: str | None,
        notify: bool = True,
    ) -> LimitStart | None:
        """Set (`amount`) or clear (None) the run-time limit of a ceiling scope, period and unit; what a
        limit set counts from this period. `notify=False`: audited, but no alert and no warning logged."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a reason is required to change a limit (it goes in the audit log)")
        try:
            period = Period(period)
        except ValueError:
            raise ValueError(f"period must be one of {[p.value for p in Period]}, got {period!r}") from None
        self.control.require_known_labels(scope, "a limit")
        bound = tuple(sorted(normalize_labels(scope, max_length=self.max_label_length).items()))
        now = self.clock()
        override = engine.LimitOverride(bound, period, unit, amount or 0, reason, actor, now)
        self.control.invalidate()  # a change is judged on the store's state, not this process's cache
        state = run(self.control.refresh(now, strict=True))  # store down: raise, no alert (the operator is told)
        if amount is None and (period, unit) not in state.overrides.get(override.scope_key, {}):
            where = encode_scope(dict(bound)) or "everything"
            raise LimitNotFound(
                f"no run-time {period.value} {unit.value} limit is set for {where}: "
                "nothing to clear (a limit from costguard.yaml is changed in the file; `costguard status` shows the "
                "limits in force)"
            )
        old = state.limit(dict(bound), period, unit)

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
        # Started before the limit is stored: no process counts the new counter yet, so its start is
        # never added to what it already counted.
        start = None if amount is None else self._start(state, dict(bound), Limit(period, unit, amount), now)
        self.store.set_override(override, amount is None, record)
        self.control.invalidate()
        if not notify:
            return start
        self.reporter.notify(
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
        if start is not None and not start.known:
            log.warning("costguard: %s", start.note)
        return start

    def _start(self, state: ControlState, scope: dict[str, str], limit: Limit, now: float) -> LimitStart:
        """The counter `limit` counts with this period; a new one is started from the scope's spend so far
        (its audit log on a SQL store, else its hourly spend history) when the store can tell."""
        found = engine.limit_counter(state.ceilings, state.overrides, scope, limit, now, self.tz)
        where, what = encode_scope(scope) or "everything", f"{limit.period.value} {limit.unit.value}"
        earlier = {Period.DAY: "earlier today", Period.TOTAL: "before"}.get(
            limit.period, f"earlier this {limit.period.value}"
        )
        if found.op is None:  # a '*' scope: a counter per instance
            if not found.new:
                return LimitStart(True, None, "counter", f"each instance of {where} already counts its {what} spend")
            note = (
                f"the {what} limit of {where} counts each instance from 0 at its next call: what each spent "
                f"{earlier} isn't known, so each may spend up to that much more than the limit"
            )
            return LimitStart(False, None, None, note)
        spent, source = None, "counter"
        if found.new:
            spent, source = self.store.spent_since(scope, limit.unit, found.since), "audit log"
            if spent is None and found.history:
                spent, source = sum(self.store.totals(list(found.history))), "spend history"
            if spent is None:
                note = (
                    f"the new {what} counter of {where} starts from 0: this store ({type(self.store).__name__}) can't "
                    f"tell what {where} spent {earlier} (SQL stores sum their audit log; memory:// and Redis know "
                    "only what a ceiling on that scope counted), so it may spend up to that much more than the limit"
                )
                return LimitStart(False, None, None, note)
            if not self.store.start_counter(found.op, spent, now):
                source = "counter"  # made meanwhile, or by an earlier limit this period: it goes on from its count
        if source == "counter":
            spent = self.store.totals([found.op.key])[0]
            shown = found.op.display(spent)
            return LimitStart(True, shown, source, f"the {what} counter of {where} already counts: {shown:g} so far")
        assert spent is not None
        shown = found.op.display(spent)
        since = (
            "ever"
            if found.since is None
            else f"since {datetime.fromtimestamp(found.since, timezone.utc):%Y-%m-%d %H:%M} UTC"
        )
        note = f"the new {what} counter of {where} starts from {shown:g}, what {where} spent {since} ({source})"
        return LimitStart(True, shown, source, note)

    def current(self, scope: Mapping[str, str], period: Period, unit: Unit) -> float | None:
        """The limit in force for a ceiling scope (run-time override, else config), fresh from the store;
        USD as a float, calls and tokens as counts; None when no ceiling has that scope and period."""
        self.control.invalidate()
        amount = run(self.control.refresh(self.clock(), strict=True)).limit(dict(scope), period, unit)
        if amount is None:
            return None
        return micros_to_usd(amount) if unit is Unit.USD else float(amount)
