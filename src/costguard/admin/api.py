"""The admin API's routes: budget status, forecast and limits, the kill switch, the audit log, health."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from costguard.admin.http import ERROR_RESPONSES, ApiError, current_principal, route_class
from costguard.admin.keys import add_key_routes
from costguard.admin.policy import Principal, TokenBook, admin_settings, plan_limit_change, visible
from costguard.admin.schemas import (
    AuditPage,
    DailyMonthlyChanged,
    DailyMonthlyLimits,
    ErrorBody,
    Health,
    KillSwitchActivate,
    KillSwitchActivated,
    KillSwitchChanged,
    KillSwitchDeactivate,
    LimitBody,
    LimitChanged,
)
from costguard.admin.simple import caller_scope, change_day_and_month, day_and_month, forecast_rows
from costguard.config import AdminConfig
from costguard.errors import StoreError
from costguard.events import AuditDecision, AuditRecord
from costguard.guard import Guard
from costguard.model import Period, Unit, to_micros

__all__ = ["build_router"]

log = logging.getLogger("costguard.admin")

_MAX_AUDIT_PAGE = 1000
_TENANT_SCAN_BATCH = 500
_TENANT_SCAN_MAX = 20_000  # records looked at per request for a tenant's token before handing back a cursor

Caller = Annotated[Principal, Depends(current_principal)]


def _iso_only(value: object) -> object:
    # pydantic would also take epoch seconds; the documented format is ISO 8601 (OpenAPI date-time).
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        raise ValueError("expected an ISO 8601 time such as 2026-05-01T00:00:00Z")
    return value


When = Annotated[datetime | None, BeforeValidator(_iso_only)]
LabelQuery = Annotated[
    # No NUL (no store keeps it); the query string's UTF-8 decoding leaves no lone surrogate to refuse.
    str | None, Query(min_length=1, max_length=256, pattern="^[^\\x00]*$", description="Only rows that bind it.")
]


def build_router(guard: Guard, admin: AdminConfig | Mapping[str, Any] | None = None) -> APIRouter:
    """An APIRouter serving the admin API for `guard`, with tokens from `admin` (see `costguard.admin.router`)."""
    settings = admin_settings(guard, admin)
    tokens = TokenBook(settings.tokens)
    if not tokens:
        log.warning("costguard admin: no admin.tokens configured; every /v1 endpoint will answer 401")
    max_limit_usd = settings.max_limit_usd
    router = APIRouter(route_class=route_class(tokens), responses=ERROR_RESPONSES)

    @router.get(
        "/health",
        name="costguard_health",
        tags=["health"],
        response_model=Health,
        responses={503: {"model": Health, "description": "The store did not answer."}},
    )
    def health() -> JSONResponse:
        """Whether the store answers (no token needed; says nothing else)."""
        try:
            guard.store.control()
        except StoreError:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "store": "unavailable",
                    "error": "store_unavailable",
                    "message": "the costguard store did not answer",
                },
                status_code=503,
                headers={"Cache-Control": "no-store"},
            )
        return JSONResponse({"status": "ok", "store": "ok"}, headers={"Cache-Control": "no-store"})

    @router.get("/v1/budget/status", tags=["budget"])
    def budget_status(caller: Caller, feature: LabelQuery = None, customer: LabelQuery = None) -> dict[str, Any]:
        """Spend against every ceiling in its current period, and the active kill switches; `daily` and
        `monthly` in USD for `scope`: the filters given, else everything (a tenant's token: its customer)."""
        status = guard.status(feature=feature, customer=customer)
        data = status.to_dict()
        data["ceilings"] = [row for row in data["ceilings"] if caller.sees(row["labels"])]
        data["killswitches"] = [s for s in data["killswitches"] if caller.sees(s["scope"])]
        scope = caller_scope(caller, feature, customer)
        return {**data, "scope": scope, **day_and_month(guard, status, scope, caller)}

    @router.get("/v1/budget/forecast", tags=["budget"])
    def budget_forecast(caller: Caller, feature: LabelQuery = None, customer: LabelQuery = None) -> dict[str, Any]:
        """Each USD ceiling's projected spend at its period's end, `on_track`, `depletion_at` (and its hour,
        `depletion_hour`), `confidence`."""
        forecast = guard.forecast(feature=feature, customer=customer)
        return {**forecast.to_dict(), "ceilings": forecast_rows(forecast, caller)}

    @router.put(
        "/v1/budget/limits",
        tags=["budget"],
        response_model=LimitChanged | DailyMonthlyChanged,
        responses={404: {"model": ErrorBody, "description": "Clearing (null) a run-time limit that is not set."}},
    )
    def put_limit(body: LimitBody, caller: Caller) -> LimitChanged | DailyMonthlyChanged:
        """Set (or, with null, clear) a limit at run time. Operators may lower; raising needs an admin.

        Either `{scope, period, usd|calls|tokens, reason}`, or `{daily_limit_usd, monthly_limit_usd, reason}`
        for the caller's scope (everything; a tenant's token: its customer), all judged before any is made."""
        if isinstance(body, DailyMonthlyLimits):
            return change_day_and_month(guard, caller, body, max_limit_usd)
        caller.require("operator", "change limits")
        period, unit = Period(body.period), Unit(body.unit)
        value = body.amount
        amount = None if value is None else to_micros(value, round_up=False) if unit is Unit.USD else int(value)
        change = plan_limit_change(guard, caller, body.scope, period, unit, amount, max_limit_usd)
        start = None
        if value is None:
            guard.clear_limit(body.scope, period=period, unit=unit, reason=body.reason, actor=caller.actor)
        else:
            usd = value if unit is Unit.USD else None
            calls = int(value) if unit is Unit.CALLS else None
            tokens_ = int(value) if unit is Unit.TOKENS else None
            start = guard.set_limit(
                body.scope, period=period, usd=usd, calls=calls, tokens=tokens_, reason=body.reason, actor=caller.actor
            )
        return LimitChanged(
            scope=dict(body.scope),
            period=period.value,
            unit=unit.value,
            old=change.shown(change.old),
            new=change.shown(change.new),
            cleared=value is None,
            actor=caller.actor,
            start=None if start is None else start.to_dict(),
        )

    @router.post("/v1/killswitch/activate", tags=["killswitch"], response_model=KillSwitchActivated)
    def killswitch_activate(body: KillSwitchActivate, caller: Caller) -> KillSwitchActivated:
        """Stop every guarded call in `scope` (omitted: everything). Operators and admins."""
        caller.require("operator", "activate the kill switch")
        scope = dict(body.scope or {})
        caller.require_scope(scope, "activate a kill switch")
        changed = guard.killswitch.activate(reason=body.reason, actor=caller.actor, scope=scope or None)
        # Turned on now: this caller; it already was on: whoever turned it on.
        by = caller.actor if changed else guard.killswitch.activated_by(scope or None) or caller.actor
        return KillSwitchActivated(scope=scope, active=True, changed=changed, actor=caller.actor, activated_by=by)

    @router.post("/v1/killswitch/deactivate", tags=["killswitch"], response_model=KillSwitchChanged)
    def killswitch_deactivate(body: KillSwitchDeactivate, caller: Caller) -> KillSwitchChanged:
        """Let calls in `scope` run again. Admins only: resuming spend needs more than stopping it."""
        caller.require("admin", "deactivate the kill switch")
        scope = dict(body.scope or {})
        caller.require_scope(scope, "deactivate a kill switch")
        changed = guard.killswitch.deactivate(actor=caller.actor, scope=scope or None, reason=body.reason)
        return KillSwitchChanged(scope=scope, active=False, changed=changed, actor=caller.actor)

    @router.get("/v1/killswitch/status", tags=["killswitch"])
    def killswitch_status(
        caller: Caller,
        history: Annotated[int, Query(ge=0, le=200, description="How many past changes to list.")] = 20,
    ) -> dict[str, Any]:
        """`active`: whether a switch stops the caller's scope (everything; a tenant's token: its tenant);
        `switches`: the active switches the caller may see; `history`: the latest changes, newest first."""
        fetch = max(1, history if caller.tenant is None else 200)
        status = guard.killswitch.status(history=fetch)
        data = status.to_dict()
        return {
            "active": status.stops(caller.tenant),
            "switches": [s for s in data["switches"] if caller.sees(s["scope"])],
            "history": [r for r in data["history"] if caller.sees(r["labels"])][:history],
        }

    @router.get("/v1/audit", tags=["audit"], response_model=AuditPage)
    def audit(
        caller: Caller,
        since: Annotated[When, Query(description="ISO 8601; without an offset, UTC.")] = None,
        until: Annotated[When, Query(description="ISO 8601, exclusive.")] = None,
        feature: LabelQuery = None,
        customer: LabelQuery = None,
        decision: Annotated[AuditDecision | None, Query(description="Only records with this decision.")] = None,
        limit: Annotated[int, Query(ge=1, le=_MAX_AUDIT_PAGE)] = 100,
        before_id: Annotated[int | None, Query(ge=1, le=2**62, description="Page: older than this id.")] = None,
    ) -> AuditPage:
        """The audit log, newest first; pass `next_before_id` as `before_id` for the next page."""
        query = {
            "since": _epoch(since, "since"),
            "until": _epoch(until, "until"),
            "feature": feature,
            "customer": customer,
            "decision": decision,
        }
        records, next_id = _audit_page(guard, caller, query, limit, before_id)
        return AuditPage(records=[r.to_dict() for r in records], next_before_id=next_id)

    add_key_routes(router, guard, max_limit_usd)
    return router


def _epoch(value: datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ApiError(422, "validation_error", f"{name}: the time is out of range") from None


def _audit_page(
    guard: Guard, caller: Principal, query: dict[str, Any], limit: int, before_id: int | None
) -> tuple[list[AuditRecord], int | None]:
    """One page of records the caller may see, and the cursor for the next page (None: no more)."""
    if caller.tenant is None or query["customer"] == caller.tenant:
        records = guard.audit(limit=limit, before_id=before_id, **query)
        return records, (records[-1].id if len(records) == limit else None)
    # A tenant's token: filter page by page, so a page is full even when most records are others'.
    found: list[AuditRecord] = []
    cursor = before_id
    scanned = 0
    while scanned < _TENANT_SCAN_MAX:
        batch = guard.audit(limit=_TENANT_SCAN_BATCH, before_id=cursor, **query)
        scanned += len(batch)
        for record in batch:
            cursor = record.id
            if visible(record.labels, caller.tenant):
                found.append(record)
                if len(found) == limit:
                    return found, cursor
        if len(batch) < _TENANT_SCAN_BATCH or cursor is None:
            return found, None
    return found, cursor
