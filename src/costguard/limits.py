"""Limit administration: run-time limits with reasons, as the CLI, admin API, MCP tools and dashboard set them.

A run-time limit is an override stored beside the kill switches: it wins over the config until
cleared, every process sees it at its next control refresh, and each change is audited (old and
new value, reason, actor) and announced as a `limit_changed` event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from costguard import engine
from costguard.control import ControlView
from costguard.errors import LimitNotFound
from costguard.events import AuditRecord, Event
from costguard.model import Money, Period, Unit, check_count, encode_scope, micros_to_usd, normalize_labels, to_micros
from costguard.reporting import Reporter
from costguard.steps import run
from costguard.stores.base import Store

__all__ = ["Limits", "limit_amount"]


def limit_amount(usd: Money | None, calls: int | None, tokens: int | None) -> tuple[Unit, int]:
    """The one unit and amount of a limit given as `usd=`, `calls=` or `tokens=`."""
    given = [(u, v) for u, v in ((Unit.USD, usd), (Unit.CALLS, calls), (Unit.TOKENS, tokens)) if v is not None]
    if len(given) != 1:
        raise ValueError("set_limit needs exactly one of usd=, calls= or tokens=")
    unit, value = given[0]
    if unit is Unit.USD:
        return unit, to_micros(value, round_up=False, what="usd")
    return unit, check_count(value, what=unit.value)


@dataclass(eq=False, kw_only=True, repr=False)
class Limits:
    """Set, clear and read run-time limits of one guard."""

    store: Store
    control: ControlView
    reporter: Reporter
    clock: Callable[[], float]
    max_label_length: int

    def change(
        self,
        scope: Mapping[str, str],
        period: str | Period,
        unit: Unit,
        amount: int | None,
        reason: str,
        actor: str | None,
    ) -> None:
        """Set (`amount`) or clear (None) the run-time limit of a ceiling scope, period and unit."""
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
        self.store.set_override(override, amount is None, record)
        self.control.invalidate()
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

    def current(self, scope: Mapping[str, str], period: Period, unit: Unit) -> float | None:
        """The limit in force for a ceiling scope (run-time override, else config), fresh from the store;
        USD as a float, calls and tokens as counts; None when no ceiling has that scope and period."""
        self.control.invalidate()
        amount = run(self.control.refresh(self.clock(), strict=True)).limit(dict(scope), period, unit)
        if amount is None:
            return None
        return micros_to_usd(amount) if unit is Unit.USD else float(amount)
