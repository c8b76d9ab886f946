"""Request and response bodies of the admin API: unknown fields, NaN and sub-micro-dollar amounts are rejected."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from costguard.model import normalize_labels

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_COUNT",
    "MAX_USD",
    "AuditPage",
    "ErrorBody",
    "Health",
    "KillSwitchActivate",
    "KillSwitchChanged",
    "KillSwitchDeactivate",
    "LimitChanged",
    "LimitRequest",
]

MAX_BODY_BYTES = 64 * 1024
MAX_USD = Decimal(1_000_000_000)  # a billion dollars: far above any real ceiling, far below integer overflow
MAX_COUNT = 10**15
MAX_LABEL_LENGTH = 10_000

PeriodName = Literal["hour", "day", "week", "month", "total"]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why; kept in the audit log.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _scope(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    # LabelError is a ValueError: pydantic reports it against the field, so the 422 names `scope`.
    return normalize_labels(value, max_length=MAX_LABEL_LENGTH)


def _reason(value: str) -> str:
    if not value.strip():
        raise ValueError("a reason is required (it goes in the audit log); it may not be blank")
    return value


Scope = Annotated[
    dict[str, str],
    Field(
        max_length=32,
        description='Label name to value, e.g. {"feature": "support_agent"} or {"customer": "acme"}.',
        examples=[{"feature": "support_agent"}],
    ),
]
Usd = Annotated[
    Decimal,
    Field(ge=0, le=MAX_USD, decimal_places=6, allow_inf_nan=False, description="USD, at most 6 decimals."),
]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class LimitRequest(_Body):
    """`PUT /v1/budget/limits`: exactly one of `usd`, `calls`, `tokens`; null clears the run-time limit."""

    scope: Scope
    period: PeriodName = "month"
    usd: Usd | None = None
    calls: Count | None = None
    tokens: Count | None = None
    reason: Reason

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, value: dict[str, str]) -> dict[str, str]:
        return _scope(value) or {}

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, value: str) -> str:
        return _reason(value)

    @model_validator(mode="after")
    def _one_unit(self) -> LimitRequest:
        given = [name for name in ("usd", "calls", "tokens") if name in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of usd, calls or tokens (a number sets the limit, null clears the "
                f"run-time limit), got {', '.join(given) or 'none'}"
            )
        return self

    @property
    def unit(self) -> Literal["usd", "calls", "tokens"]:
        """Which unit the request changes."""
        for name in ("usd", "calls", "tokens"):
            if name in self.model_fields_set:
                return name
        raise AssertionError("validated to have one unit")

    @property
    def amount(self) -> Decimal | int | None:
        """The new amount in the unit (None: clear)."""
        value: Decimal | int | None = getattr(self, self.unit)
        return value


class KillSwitchActivate(_Body):
    """`POST /v1/killswitch/activate`: a reason, and a scope (omitted or null: everything)."""

    reason: Reason
    scope: Scope | None = None

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _scope(value)

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, value: str) -> str:
        return _reason(value)


class KillSwitchDeactivate(_Body):
    """`POST /v1/killswitch/deactivate`: the scope it was activated with (omitted or null: the global
    switch) and why it may run again (required, as for activating: it goes in the audit log)."""

    scope: Scope | None = None
    reason: Annotated[str, Field(min_length=1, max_length=2000)]

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _scope(value)

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, value: str) -> str:
        return _reason(value)


class LimitChanged(BaseModel):
    """The result of a limit change."""

    scope: dict[str, str]
    period: str
    unit: str
    old: float | None = Field(description="The limit before (USD as dollars); null: none.")
    new: float | None = Field(description="The limit now; null: none.")
    cleared: bool
    actor: str


class KillSwitchChanged(BaseModel):
    """The result of activating or deactivating a kill switch."""

    scope: dict[str, str]
    active: bool
    changed: bool = Field(description="False when the switch already was in that state.")
    actor: str


class AuditPage(BaseModel):
    """Audit records, newest first, and the `before_id` of the next page (null: no more)."""

    records: list[dict[str, Any]]
    next_before_id: int | None


class Health(BaseModel):
    """Whether the process and its store answer."""

    status: Literal["ok", "unavailable"]
    store: Literal["ok", "unavailable"]


class ErrorBody(BaseModel):
    """Every error: a short code and a sentence saying what was wrong and what to do."""

    error: str
    message: str
