"""The simple shapes the admin API answers beside its full ones, for clients written against simpler budget APIs.

Those clients see one caller's scope — everything, or a tenant's token's own customer — as a day and a
month in USD and one kill-switch boolean. The full shapes (every ceiling, every switch) stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from costguard.admin.policy import LimitChange, Principal, plan_limit_change, touched_limits
from costguard.admin.schemas import DailyMonthlyChanged, DailyMonthlyLimits, LimitChanged
from costguard.forecast import Forecast
from costguard.guard import Guard
from costguard.model import Period, Unit, micros_to_usd, to_micros
from costguard.status import Status

__all__ = ["PERIODS", "caller_scope", "change_day_and_month", "day_and_month", "forecast_rows"]

# The simple shapes' names for the two calendar periods they know, and their limits' names in a body.
PERIODS = {"daily": Period.DAY, "monthly": Period.MONTH}
_FIELDS = {"daily_limit_usd": Period.DAY, "monthly_limit_usd": Period.MONTH}
_UNKNOWN: dict[str, float | None] = {"spent_usd": None, "limit_usd": None, "remaining_usd": None}


def caller_scope(caller: Principal, feature: str | None = None, customer: str | None = None) -> dict[str, str]:
    """The labels the simple shapes speak for: the filters given, else everything (`{}`) — and a tenant's
    token always its own customer unless it names one (a customer that isn't its own then shows nothing)."""
    scope = {"feature": feature} if feature is not None else {}
    if customer is not None or caller.tenant is not None:
        scope["customer"] = customer if customer is not None else str(caller.tenant)
    return scope


def day_and_month(guard: Guard, status: Status, scope: Mapping[str, str], caller: Principal) -> dict[str, Any]:
    """`{daily: {spent_usd, limit_usd, remaining_usd}, monthly: {…}}` for a ceiling on exactly `scope`.

    A USD ceiling whose match is `scope` (`{}`: a `match: {}` ceiling, on every call; `{customer: acme}`:
    `customers.acme` or acme's instance of `customers."*"`) gives the period's numbers, the tightest one
    (least remaining) when several do. With none, all three are null: costguard counts spend per ceiling,
    so a scope without one for that period has no count to show either.
    """
    if not caller.sees(scope):
        return {name: dict(_UNKNOWN) for name in PERIODS}
    overrides = guard.store.control().overrides
    spent = {
        (row.ceiling, row.period): to_micros(row.spent, round_up=False)
        for row in status.ceilings
        if row.unit == Unit.USD.value and dict(row.labels) == dict(scope)
    }
    out: dict[str, Any] = {}
    for name, period in PERIODS.items():
        limits = touched_limits(guard, overrides, scope, period, Unit.USD)
        found = [
            (max(0, amount - spent.get((ceiling, period.value), 0)), amount, spent.get((ceiling, period.value), 0))
            for ceiling, amount in limits.items()
        ]
        if not found:
            out[name] = dict(_UNKNOWN)
            continue
        remaining, limit, used = min(found)
        out[name] = {
            "spent_usd": micros_to_usd(used),
            "limit_usd": micros_to_usd(limit),
            "remaining_usd": micros_to_usd(remaining),
        }
    return out


def forecast_rows(forecast: Forecast, caller: Principal) -> list[dict[str, Any]]:
    """The forecast's rows the caller may see, each also with `depletion_hour`: `depletion_at` truncated
    to the hour (ISO 8601, UTC), null when the limit is not reached within the period at this pace."""
    rows = []
    for ceiling in forecast.ceilings:
        if not caller.sees(ceiling.labels):
            continue
        row = ceiling.to_dict()
        at = ceiling.depletion_at
        row["depletion_hour"] = None if at is None else at.replace(minute=0, second=0, microsecond=0).isoformat()
        rows.append(row)
    return rows


def change_day_and_month(
    guard: Guard, caller: Principal, body: DailyMonthlyLimits, max_limit_usd: int | None
) -> DailyMonthlyChanged:
    """Set or clear the caller's scope's day and month USD limits: every change is judged first (the role,
    the tenant, `max_limit_usd`, on every ceiling it touches), and none is made unless all may be."""
    caller.require("operator", "change limits")
    scope = caller_scope(caller)
    key = tuple(sorted(scope.items()))
    set_now = {(o.period, o.unit) for o in guard.store.control().overrides if o.scope == key}
    planned: list[tuple[Period, Decimal | None, LimitChange]] = []
    for name, period in _FIELDS.items():
        if name not in body.model_fields_set:
            continue
        value: Decimal | None = getattr(body, name)
        if value is None and (period, Unit.USD) not in set_now:
            continue  # no run-time limit to clear: nothing to do (the config's limit, if any, stays)
        amount = None if value is None else to_micros(value, round_up=False)
        change = plan_limit_change(guard, caller, scope, period, Unit.USD, amount, max_limit_usd)
        planned.append((period, value, change))
    changes = []
    for period, value, change in planned:
        start = None
        if value is None:
            guard.clear_limit(scope, period=period, unit=Unit.USD, reason=body.reason, actor=caller.actor)
        else:
            start = guard.set_limit(scope, period=period, usd=value, reason=body.reason, actor=caller.actor)
        changes.append(
            LimitChanged(
                scope=scope,
                period=period.value,
                unit=Unit.USD.value,
                old=change.shown(change.old),
                new=change.shown(change.new),
                cleared=value is None,
                actor=caller.actor,
                start=None if start is None else start.to_dict(),
            )
        )
    overrides = guard.store.control().overrides

    def in_force(period: Period) -> float | None:
        amounts = touched_limits(guard, overrides, scope, period, Unit.USD).values()
        return micros_to_usd(min(amounts)) if amounts else None

    return DailyMonthlyChanged(
        scope=scope,
        daily_limit_usd=in_force(Period.DAY),
        monthly_limit_usd=in_force(Period.MONTH),
        changes=changes,
        actor=caller.actor,
    )
