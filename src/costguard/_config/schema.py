"""The sections of `costguard.yaml` as pydantic models: limits, features, ceilings, fallbacks, pricing,
notifiers, the kill switch and the admin block.

Every model forbids unknown keys and is frozen. Secrets (tokens, keys, signing secrets, webhook URLs that
carry a token) never show in a repr, a log or an error: `SecretStr`, or left out of the repr;
`NotifierConfig.entry` unwraps them for the notifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from costguard._config.values import Count, Duration, HttpUrl, Millis, Price, Ratio, Thresholds, Usd, UsdEstimate, shown
from costguard.fallback import Fallback, Raise, Static, cached
from costguard.model import Ceiling, Limit, Period, Unit, make_match

if TYPE_CHECKING:
    from costguard.pricing import Pricing

__all__ = [
    "AdminConfig",
    "AdminToken",
    "CachedFallbackConfig",
    "CeilingConfig",
    "EventKindName",
    "FallbackConfig",
    "FeatureConfig",
    "KillSwitchConfig",
    "LearnConfig",
    "Limits",
    "LogOptions",
    "MetricsConfig",
    "ModelPriceConfig",
    "NotifierConfig",
    "PagerDutyOptions",
    "PricingConfig",
    "SlackOptions",
    "StrictModel",
    "WebhookOptions",
]

_LIMIT_KEYS: dict[str, tuple[Period, Unit]] = {}
for _period, _usd_key, _calls_key, _tokens_key in (
    (Period.HOUR, "hourly_usd", "calls_per_hour", "tokens_per_hour"),
    (Period.DAY, "daily_usd", "calls_per_day", "tokens_per_day"),
    (Period.WEEK, "weekly_usd", "calls_per_week", "tokens_per_week"),
    (Period.MONTH, "monthly_usd", "calls_per_month", "tokens_per_month"),
    (Period.TOTAL, "total_usd", "calls_total", "tokens_total"),
):
    _LIMIT_KEYS[_usd_key] = (_period, Unit.USD)
    _LIMIT_KEYS[_calls_key] = (_period, Unit.CALLS)
    _LIMIT_KEYS[_tokens_key] = (_period, Unit.TOKENS)


class StrictModel(BaseModel):
    """A section of the file: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(StrictModel):
    """Limit keys shared by features, customers and ceilings."""

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
    enforcement: Literal["hard", "soft"] = "hard"
    thresholds: Thresholds | None = None
    expire_after: Duration | None = None
    ttl: Duration | None = None
    max_instances: Annotated[int, Field(ge=1)] | None = None
    overflow: Literal["share", "refuse"] = "share"

    def limits(self) -> tuple[Limit, ...]:
        """The limits this block sets."""
        out = []
        for key, (period, unit) in _LIMIT_KEYS.items():
            amount = getattr(self, key)
            if amount is not None:
                out.append(Limit(period, unit, amount))
        return tuple(out)

    def ceiling(self, match: Mapping[str, str], exclude: Mapping[str, Iterable[str]] | None = None) -> Ceiling:
        """A ceiling with this block's limits on `match`."""
        return Ceiling(
            match=make_match(match),
            limits=self.limits(),
            enforcement=self.enforcement,
            expire_after_s=self.expire_after,
            thresholds=tuple(self.thresholds) if self.thresholds else None,
            exclude=tuple((k, frozenset(v)) for k, v in sorted((exclude or {}).items()) if v),
            max_instances=self.max_instances,
            overflow=self.overflow,
            ttl_s=self.ttl,
        )


class CachedFallbackConfig(StrictModel):
    ttl_s: Duration = 3600.0


class FallbackConfig(StrictModel):
    """Exactly one of `static`, `cached` or `raise`."""

    static: Any = None
    cached: CachedFallbackConfig | None = None
    raise_: bool | None = Field(default=None, alias="raise")

    @model_validator(mode="after")
    def _one(self) -> FallbackConfig:
        if len(self.model_fields_set) != 1:
            raise ValueError("a fallback is exactly one of {static: VALUE}, {cached: {ttl_s: …}} or {raise: true}")
        return self

    def build(self) -> Fallback:
        if "static" in self.model_fields_set:
            return Static(self.static)
        if self.cached is not None:
            return cached(ttl_s=self.cached.ttl_s)
        return Raise()


class LearnConfig(StrictModel):
    """The learned estimator: `percentile` of the last `window` actual costs, after `min_samples`."""

    percentile: Annotated[float, Field(gt=0, le=1)] = 0.95
    window: Annotated[int, Field(ge=1, le=100_000)] = 200
    min_samples: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _fits(self) -> LearnConfig:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) cannot exceed window ({self.window})")
        return self


class ModelPriceConfig(StrictModel):
    """USD per million tokens, and/or per call."""

    input_per_mtok: Price = Decimal(0)
    output_per_mtok: Price = Decimal(0)
    cache_read_per_mtok: Price | None = None
    cache_write_per_mtok: Price | None = None
    per_call: Price = Decimal(0)


class PricingConfig(StrictModel):
    """`pricing:` — your prices for models genai-prices doesn't know (or that you pay differently for),
    and unit prices of metered non-LLM work."""

    genai_prices: bool = True
    models: dict[str, ModelPriceConfig] = Field(default_factory=dict)
    units: dict[str, Price] = Field(default_factory=dict)

    def build(self) -> Pricing:
        from costguard.pricing import ModelPrice, Pricing

        return Pricing(
            models={name: ModelPrice(**m.model_dump()) for name, m in self.models.items()},
            units=dict(self.units),
            use_genai_prices=self.genai_prices,
        )


class FeatureConfig(Limits):
    """A feature's limits and behaviour."""

    estimate_usd: UsdEstimate | None = None
    estimate_tokens: Count | None = None
    per_customer: Limits | None = None
    degrade_at: Ratio | None = None
    fallback: FallbackConfig | None = None
    on_store_error: Literal["open", "closed"] | None = None
    on_call_error: Literal["release", "keep"] | None = None
    commit: Literal["sync", "background"] | None = None
    max_call_usd: UsdEstimate | None = None
    estimator: Literal["fixed", "learned"] = "fixed"
    learn: LearnConfig | None = None
    outage_allowance_usd: Usd | None = None

    @field_validator("degrade_at")
    @classmethod
    def _degrade(cls, value: float | None) -> float | None:
        if value is not None and value > 1:
            raise ValueError(f"expected a ratio in (0, 1] such as 0.9, got {value!r}")
        return value


class CeilingConfig(Limits):
    """A ceiling on any label combination; `"*"` gives each value its own counter."""

    match: dict[str, str]

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: object) -> object:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of label to value, e.g. {team: '*', feature: support_agent}")
        for name, item in value.items():
            if not isinstance(item, str) or not item:
                raise ValueError(f"label {name!r}: expected a non-empty string (quote '*'), got {item!r}")
        return value


EventKindName = Literal[
    "warn", "kill", "kill_cleared", "killswitch_activated", "killswitch_deactivated", "limit_changed", "store_error"
]
_Positive = Annotated[float, Field(gt=0)]


class _NotifierOptions(StrictModel):
    on: list[EventKindName] | None = None
    attempts: Annotated[int, Field(ge=1, le=50)] = 5
    max_delay_s: _Positive = 60.0
    backoff_s: _Positive = 0.5
    timeout_s: _Positive = 5.0
    max_per_minute: _Positive | None = 30.0  # null: no rate limit


class SlackOptions(_NotifierOptions):
    webhook_url: HttpUrl | None = Field(default=None, repr=False)
    token: SecretStr | None = None
    channel: str | None = None
    base_url: HttpUrl | None = None
    min_interval_s: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _target(self) -> SlackOptions:
        if bool(self.webhook_url) == bool(self.token):
            raise ValueError("give either webhook_url, or token and channel")
        if self.token and not self.channel:
            raise ValueError("channel is required with token (e.g. '#ops' or a channel id)")
        return self


class PagerDutyOptions(_NotifierOptions):
    routing_key: Annotated[SecretStr, Field(min_length=1)]
    events_url: HttpUrl = "https://events.pagerduty.com/v2/enqueue"
    source: str = "costguard"


class WebhookOptions(_NotifierOptions):
    url: HttpUrl = Field(repr=False)
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)


class LogOptions(StrictModel):
    logger: str = "costguard.alerts"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING"
    on: list[EventKindName] | None = None
    max_per_minute: _Positive | None = 30.0  # null: no rate limit


class NotifierConfig(BaseModel):
    """One notifier: `{slack: {...}}`, `{pagerduty: {...}}`, `{webhook: {...}}`, `{log: {...}}`, or the
    name of a notifier registered in the `costguard.notifiers` entry-point group."""

    model_config = ConfigDict(extra="allow", frozen=True)

    slack: SlackOptions | None = None
    pagerduty: PagerDutyOptions | None = None
    webhook: WebhookOptions | None = None
    log: LogOptions | None = None

    @model_validator(mode="after")
    def _one(self) -> NotifierConfig:
        # extras included; `- log:` (no options) sets the field to None: named, so still counted
        names = sorted(self.model_fields_set)
        if len(names) != 1:
            raise ValueError(
                "each notifier is exactly one of slack, pagerduty, webhook, log or an installed notifier's name, "
                f"got {', '.join(names) or 'nothing'}"
            )
        for name, value in (self.model_extra or {}).items():
            from costguard.notify.registry import entry_point

            entry_point(name)  # ValueError naming the known notifiers when `name` is none of them
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"the {name} notifier's options must be a mapping, got {shown(value)}")
        return self

    def entry(self) -> tuple[str, dict[str, Any]]:
        """(notifier name, its options as keyword arguments)."""
        for name in ("slack", "pagerduty", "webhook", "log"):
            options = getattr(self, name)
            if options is not None:
                return name, {
                    key: value.get_secret_value() if isinstance(value, SecretStr) else value
                    for key, value in options.model_dump(exclude_none=True).items()
                } | ({"max_per_minute": None} if options.max_per_minute is None else {})
            if name in self.model_fields_set:
                return name, {}  # `- log:` with no options: the defaults
        name, value = next(iter((self.model_extra or {}).items()))
        return name, dict(value or {})


class KillSwitchConfig(StrictModel):
    cache_ms: Millis = 500.0
    exempt_paths: list[str] = Field(default_factory=list)
    exempt_features: list[str] = Field(default_factory=list)


class AdminToken(StrictModel):
    name: str
    token: Annotated[SecretStr, Field(min_length=16)]
    role: Literal["read", "operator", "admin"]
    tenant: str | None = None


class MetricsConfig(StrictModel):
    auth: Literal["token", "none"] = "token"  # token: any admin token without a tenant; none: anyone who reaches it
    top_n: Annotated[int, Field(ge=0, le=10_000)] = 20
    cache_s: Annotated[float, Field(ge=0, le=3600)] = 5.0


class AdminConfig(StrictModel):
    tokens: list[AdminToken] = Field(default_factory=list)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    max_limit_usd: Usd | None = None
