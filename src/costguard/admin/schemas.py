"""Request and response bodies of the admin API: unknown fields, NaN and sub-micro-dollar amounts are rejected."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from costguard.model import normalize_labels

__all__ = [
    "BODY_SHAPES",
    "LABEL_VALUE_PATTERN",
    "MAX_BODY_BYTES",
    "MAX_COUNT",
    "MAX_USD",
    "SCOPED_BODIES",
    "AuditPage",
    "DailyMonthlyChanged",
    "DailyMonthlyLimits",
    "ErrorBody",
    "Health",
    "KillSwitchActivate",
    "KillSwitchActivated",
    "KillSwitchChanged",
    "KillSwitchDeactivate",
    "LimitBody",
    "LimitChanged",
    "LimitRequest",
]

MAX_BODY_BYTES = 64 * 1024
MAX_USD = Decimal(1_000_000_000)  # a billion dollars: far above any real ceiling, far below integer overflow
MAX_COUNT = 10**15
MAX_LABEL_LENGTH = 10_000

PeriodName = Literal["hour", "day", "week", "month", "total"]
# Not blank: at least one character Python's `str.strip()` keeps — the check the guard makes (a reason of
# only U+0085 passed a narrower pattern and was then refused with a 400). The characters are spelled out,
# because regex engines disagree on what `\s` covers (U+0085, U+001C to U+001F), and the schema must say
# exactly what the server checks; a test holds it to `str.isspace()` over every code point.
REASON_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
Reason = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2000,
        pattern=REASON_PATTERN,
        description="Why; kept in the audit log. Not blank: some character other than whitespace.",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A label value: anything but NUL, which not every store can keep. (Lone surrogates are refused too,
# but JSON can't carry one in valid UTF-8, and a pattern can't name them: regex engines refuse.)
LABEL_VALUE_PATTERN = "^[^\\u0000]*$"
# The bodies with a `scope`: `tighten_openapi` states in their schema which labels this server knows.
SCOPED_BODIES = ("LimitRequest", "KillSwitchActivate", "KillSwitchDeactivate", "KeyIssue")


def scope_schema(known_labels: Sequence[str], max_label_length: int) -> dict[str, Any]:
    """The JSON schema of a scope on a server whose guard knows `known_labels`: the rules the guard
    enforces (label names it knows, non-empty values within the length limit, no NUL)."""
    value = {"type": "string", "minLength": 1, "maxLength": max_label_length, "pattern": LABEL_VALUE_PATTERN}
    return {
        "type": "object",
        "maxProperties": 32,
        "properties": dict.fromkeys(known_labels, value),
        "additionalProperties": False,
        "description": 'Label name to value, e.g. {"feature": "support_agent"}; names are the labels this '
        "server's ceilings, the standard labels and the config's `labels:` know.",
        "examples": [{"feature": "support_agent"}],
    }


def tighten_openapi(openapi: dict[str, Any], known_labels: Sequence[str], max_label_length: int) -> dict[str, Any]:
    """`openapi` with every body's scope stated as this server enforces it."""
    schemas = openapi.get("components", {}).get("schemas", {})
    exact = scope_schema(known_labels, max_label_length)
    for name in SCOPED_BODIES:
        properties = schemas.get(name, {}).get("properties", {})
        if "labels" in properties:  # a run key's labels: values, never '*' (its caps would cap every run)
            value = {"type": "string", "minLength": 1, "maxLength": max_label_length, "pattern": LABEL_VALUE_PATTERN}
            values = {key: {**value, "not": {"const": "*"}} for key in exact["properties"]}
            properties["labels"] = {**exact, "properties": values, "minProperties": 1}
        if "scope" not in properties:
            continue
        optional = "anyOf" in properties["scope"]
        properties["scope"] = {"anyOf": [exact, {"type": "null"}], "default": None} if optional else exact
    return openapi


def _scope(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    # LabelError is a ValueError: pydantic reports it against the field, so the 422 names `scope`.
    return normalize_labels(value, max_length=MAX_LABEL_LENGTH)


def _reason(value: str) -> str:
    if not value.strip():  # what the guard refuses; REASON_PATTERN states the same in the schema
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
    Field(ge=0, le=MAX_USD, allow_inf_nan=False),
    # A JSON number: it is rounded to the micro-dollar (JSON numbers are binary floats, so a
    # six-decimal amount rarely arrives as exactly six decimals). A numeric string is accepted too.
    WithJsonSchema(
        {"type": "number", "minimum": 0, "maximum": int(MAX_USD), "description": "USD, rounded to the micro-dollar."}
    ),
]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class LimitRequest(_Body):
    """`PUT /v1/budget/limits`: exactly one of `usd`, `calls`, `tokens`; null clears the run-time limit."""

    # The rule the validator below enforces, stated in the schema so clients (and fuzzers) know it.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"oneOf": [{"required": ["usd"]}, {"required": ["calls"]}, {"required": ["tokens"]}]},
    )

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


class DailyMonthlyLimits(_Body):
    """`PUT /v1/budget/limits` in the simple shape: the caller's scope's day and month USD limits (either or
    both; null clears the run-time one) — everything for a token without a tenant, else its customer."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"anyOf": [{"required": ["daily_limit_usd"]}, {"required": ["monthly_limit_usd"]}]},
    )

    daily_limit_usd: Usd | None = None
    monthly_limit_usd: Usd | None = None
    reason: Reason

    @field_validator("reason")
    @classmethod
    def _check_reason(cls, value: str) -> str:
        return _reason(value)

    @model_validator(mode="after")
    def _some_limit(self) -> DailyMonthlyLimits:
        if not {"daily_limit_usd", "monthly_limit_usd"} & self.model_fields_set:
            raise ValueError("give daily_limit_usd, monthly_limit_usd or both (a number sets it, null clears it)")
        return self


_SIMPLE_KEYS = frozenset({"daily_limit_usd", "monthly_limit_usd"})
_SCOPE_KEYS = frozenset({"scope", "period", "usd", "calls", "tokens"})
_SHAPES_MESSAGE = (
    "give either {scope, usd|calls|tokens, reason} (and period, default month) for one scope, "
    "or {daily_limit_usd and/or monthly_limit_usd, reason} for the caller's scope"
)


def _limit_shape(body: object) -> str | None:
    if not isinstance(body, dict):
        names = set(getattr(body, "model_fields_set", ()))
        return "DailyMonthlyLimits" if _SIMPLE_KEYS & names else "LimitRequest"
    if _SIMPLE_KEYS & body.keys():
        return "DailyMonthlyLimits"
    # No key of either shape (`{"reason": …}` alone): say what the two are, not what the first one lacks.
    return "LimitRequest" if _SCOPE_KEYS & body.keys() else None


# Both bodies of `PUT /v1/budget/limits`, told apart by their keys (the names are validation errors' tags).
BODY_SHAPES = frozenset({"LimitRequest", "DailyMonthlyLimits"})
LimitBody = Annotated[
    Annotated[LimitRequest, Tag("LimitRequest")] | Annotated[DailyMonthlyLimits, Tag("DailyMonthlyLimits")],
    Discriminator(_limit_shape, custom_error_type="body_shape", custom_error_message=_SHAPES_MESSAGE),
]


class _ScopedChange(_Body):
    """A kill-switch change: its scope and reason are checked the same way for activating and deactivating."""

    @field_validator("scope", check_fields=False)
    @classmethod
    def _check_scope(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _scope(value)

    @field_validator("reason", check_fields=False)
    @classmethod
    def _check_reason(cls, value: str) -> str:
        return _reason(value)


class KillSwitchActivate(_ScopedChange):
    """`POST /v1/killswitch/activate`: a reason, and a scope (omitted or null: everything)."""

    reason: Reason
    scope: Scope | None = None


class KillSwitchDeactivate(_ScopedChange):
    """`POST /v1/killswitch/deactivate`: the scope it was activated with (omitted or null: the global
    switch) and why it may run again (required, as for activating: it goes in the audit log)."""

    scope: Scope | None = None
    reason: Reason


class LimitChanged(BaseModel):
    """The result of a limit change."""

    scope: dict[str, str]
    period: str
    unit: str
    old: float | None = Field(description="The limit before (USD as dollars); null: none.")
    new: float | None = Field(description="The limit now; null: none.")
    cleared: bool
    actor: str
    start: dict[str, Any] | None = Field(
        default=None,
        description="A limit set: what it counts from this period, `{known, spent, source, note}` (`known` false: "
        "a new counter starts from 0, as the store can't tell what the scope spent before). Null when cleared.",
    )


class DailyMonthlyChanged(BaseModel):
    """The result of a simple-shape limit change: the limits in force for the scope now, and what changed."""

    scope: dict[str, str]
    daily_limit_usd: float | None = Field(description="The day USD limit in force now (the tightest); null: none.")
    monthly_limit_usd: float | None = Field(description="The month USD limit in force now; null: none.")
    changes: list[LimitChanged] = Field(description="Each limit set or cleared; a null with none set changes nothing.")
    actor: str


class KillSwitchChanged(BaseModel):
    """The result of activating or deactivating a kill switch."""

    scope: dict[str, str]
    active: bool
    changed: bool = Field(description="False when the switch already was in that state.")
    actor: str


class KillSwitchActivated(KillSwitchChanged):
    """The result of activating a kill switch: also who turned it on."""

    activated_by: str | None = Field(
        description="Who turned the switch on: this caller, or whoever already had (changed false; null: not recorded)."
    )


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
