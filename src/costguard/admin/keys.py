"""The admin API's run keys: `POST /v1/keys` (operator), `GET /v1/keys` (read), `DELETE /v1/keys/{id}` and
`POST /v1/keys/purge` (operator).

A key is shown once, in the answer to the POST that issued it; the store keeps only its hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from costguard.admin.http import ApiError, current_principal
from costguard.admin.policy import Principal, plan_limit_change
from costguard.admin.schemas import Count, ErrorBody, Usd, _scope
from costguard.guard import Guard
from costguard.model import Period, Unit, to_micros
from costguard.runkeys import DEFAULT_RETENTION_S, RunKeys, key_view

__all__ = ["KeyCaps", "KeyIssue", "KeyIssued", "KeyPurge", "KeyRow", "add_key_routes"]

Caller = Annotated[Principal, Depends(current_principal)]


class KeyCaps(BaseModel):
    """Caps on the key's labels: any ceiling limit key (USD per period or total, calls, tokens)."""

    model_config = ConfigDict(extra="forbid")

    hourly_usd: Usd | None = None
    daily_usd: Usd | None = None
    weekly_usd: Usd | None = None
    monthly_usd: Usd | None = None
    total_usd: Usd | None = None
    calls_per_hour: Count | None = None
    calls_per_day: Count | None = None
    calls_per_week: Count | None = None
    calls_per_month: Count | None = None
    calls_total: Count | None = None
    tokens_per_hour: Count | None = None
    tokens_per_day: Count | None = None
    tokens_per_week: Count | None = None
    tokens_per_month: Count | None = None
    tokens_total: Count | None = None

    def amounts(self) -> dict[str, float | int]:
        """The caps given, USD rounded to the micro-dollar."""
        out: dict[str, float | int] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            out[name] = float(round(value, 6)) if isinstance(value, Decimal) else value
        return out


Upstream = Annotated[str, Field(min_length=1, max_length=64, pattern="^[A-Za-z][A-Za-z0-9_.-]*$")]


class KeyIssue(BaseModel):
    """`POST /v1/keys`: the labels its calls carry, caps on them, a lifetime and the upstreams it may use."""

    model_config = ConfigDict(extra="forbid")

    labels: Annotated[dict[str, str], Field(min_length=1, max_length=32)]
    caps: KeyCaps = Field(default_factory=KeyCaps)
    ttl_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, allow_inf_nan=False)
    upstreams: list[Upstream] = Field(default_factory=list, max_length=64)

    _labels = field_validator("labels")(classmethod(lambda cls, v: _scope(v)))


class KeyPurge(BaseModel):
    """`POST /v1/keys/purge`: delete the keys revoked or expired longer ago than `older_than_s`."""

    model_config = ConfigDict(extra="forbid")

    older_than_s: float = Field(default=DEFAULT_RETENTION_S, ge=0, le=100 * 365 * 86400, allow_inf_nan=False)


class KeyRow(BaseModel):
    """A key as listed: never the key itself."""

    id: str
    labels: dict[str, str]
    caps: dict[str, float]
    upstreams: list[str]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    actor: str | None
    status: str


class KeyIssued(KeyRow):
    """A key just issued: `key` is shown this once."""

    key: str


def add_key_routes(router: APIRouter, guard: Guard, max_limit_usd: int | None) -> None:
    """Add the run key routes to the admin API's router."""
    keys = RunKeys(guard)

    @router.post("/v1/keys", tags=["keys"], response_model=KeyIssued, status_code=201)
    def key_issue(body: KeyIssue, caller: Caller) -> dict[str, Any]:
        """Issue a run key (operator): its caps become limits on its labels; the key is shown once."""
        caller.require("operator", "issue a run key")
        caller.require_scope(body.labels, "issue a run key")
        if max_limit_usd is not None:
            for name, value in body.caps.amounts().items():
                if name.endswith("_usd") and to_micros(value, what=name) > max_limit_usd:
                    raise ApiError(403, "limit_too_high", f"caps.{name} is over this API's max_limit_usd")

        def judged(scope: Mapping[str, str], period: Period, unit: Unit, amount: int) -> object:
            # Each cap is a limit change, judged like PUT /v1/limits on every ceiling it touches.
            return plan_limit_change(guard, caller, scope, period, unit, amount, max_limit_usd)

        try:
            issued = keys.issue(
                body.labels,
                body.caps.amounts(),
                ttl_s=body.ttl_s,
                upstreams=body.upstreams,
                actor=caller.actor,
                check=judged,
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_key_request", str(exc)) from None
        return issued.to_dict()

    @router.get("/v1/keys", tags=["keys"], response_model=list[KeyRow])
    def key_list(caller: Caller) -> list[dict[str, Any]]:
        """Every run key the caller may see (active, expired, revoked); never the keys themselves."""
        now = guard.clock()
        return [key_view(state, now) for state in keys.list() if caller.sees(dict(state.labels))]

    @router.delete(
        "/v1/keys/{key_id}",
        tags=["keys"],
        response_model=KeyRow,
        responses={404: {"model": ErrorBody, "description": "No run key with that id (that the caller may see)."}},
    )
    def key_revoke(
        caller: Caller, key_id: Annotated[str, Path(min_length=1, max_length=64, pattern="^[0-9a-f]+$")]
    ) -> dict[str, Any]:
        """Revoke a run key at once: every proxy refuses it within its control refresh (operator)."""
        caller.require("operator", "revoke a run key")
        found = next((s for s in keys.list() if s.id == key_id and caller.sees(dict(s.labels))), None)
        if found is None:
            raise ApiError(404, "key_not_found", f"no run key {key_id!r}")
        state = keys.revoke(key_id, actor=caller.actor)
        assert state is not None
        return key_view(state, guard.clock())

    @router.post("/v1/keys/purge", tags=["keys"], response_model=list[KeyRow])
    def key_purge(body: KeyPurge, caller: Caller) -> list[dict[str, Any]]:
        """Delete the keys that stopped working (revoked or expired) over `older_than_s` ago (default 7 days),
        with the caps they set; their spend stays counted. Answers the purged keys (operator)."""
        caller.require("operator", "purge run keys")
        purged = keys.purge(body.older_than_s, actor=caller.actor, only=lambda s: caller.sees(dict(s.labels)))
        now = guard.clock()
        return [key_view(state, now) for state in purged]
