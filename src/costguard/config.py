"""`costguard.yaml` → validated models → `Guard`. Every error names the file, the key path and what was expected."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from costguard.errors import ConfigError
from costguard.fallback import Fallback, Raise, Static, cached
from costguard.model import Ceiling, Limit, Period, Unit, check_count, make_match, micros_to_usd, to_micros
from costguard.notify.dispatcher import Notifier
from costguard.yamlload import load_yaml

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.pricing import Pricing

__all__ = ["Config", "load_config", "parse_config"]


def _shown(value: object) -> str:
    """`repr` for an error message, safe for ints too long for Python to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else _shown_container(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _shown_container(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> str:
    try:
        return repr(value)
    except ValueError:  # an int inside is beyond Python's int-to-text limit
        return f"a {type(value).__name__} holding a huge integer"


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__} {_shown(value)}")
    if isinstance(value, int) and value.bit_length() > 1000:
        raise ValueError(f"expected a number, got {_shown(value)}: far beyond any budget, ratio or duration")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {_shown(value)}")
    return value


def _usd(value: object) -> int:
    return to_micros(_number(value), round_up=False, what="USD amount")


def _usd_up(value: object) -> int:
    return to_micros(_number(value), round_up=True, what="USD estimate")


def _count(value: object) -> int:
    return check_count(_number(value), what="count")


def _as_float(value: object) -> float:
    number = _number(value)
    try:
        return float(number)
    except OverflowError:
        raise ValueError(f"expected a number, got {_shown(number)}: too large") from None


def _ratio(value: object) -> float:
    number = _as_float(value)
    if number <= 0:
        raise ValueError(f"expected a ratio > 0 such as 0.8, got {value!r}")
    return number


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_SECONDS = 100 * 365 * 86400.0


def _millis(value: object) -> float:
    number = _as_float(value)
    if number > _MAX_SECONDS * 1000:
        raise ValueError(f"expected milliseconds, at most 100 years' worth, got {_shown(value)}")
    return number


def _deadline_millis(value: object) -> float:
    number = _millis(value)
    if number <= 0:
        raise ValueError(f"expected milliseconds > 0, got {_shown(value)}")
    return number


def _duration(value: object) -> float:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration such as 30m, 12h, 7d or a number of seconds, got {value!r}")
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        seconds = _as_float(value)
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ValueError(f"expected a duration of at most 100 years, got {_shown(value)}")
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


Usd = Annotated[int, PlainValidator(_usd)]
UsdEstimate = Annotated[int, PlainValidator(_usd_up)]
Count = Annotated[int, PlainValidator(_count)]
Ratio = Annotated[float, PlainValidator(_ratio)]
Duration = Annotated[float, PlainValidator(_duration)]

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
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
    thresholds: list[Ratio] | None = None
    expire_after: Duration | None = None
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
        )


class CachedFallbackConfig(_Model):
    ttl_s: Duration = 3600.0


class FallbackConfig(_Model):
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


class LearnConfig(_Model):
    """The learned estimator: `percentile` of the last `window` actual costs, after `min_samples`."""

    percentile: Annotated[float, Field(gt=0, le=1)] = 0.95
    window: Annotated[int, Field(ge=1, le=100_000)] = 200
    min_samples: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _fits(self) -> LearnConfig:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) cannot exceed window ({self.window})")
        return self


def _price(value: object) -> Decimal:
    number = _number(value)
    return Decimal(str(number))


Price = Annotated[Decimal, PlainValidator(_price)]


class ModelPriceConfig(_Model):
    """USD per million tokens, and/or per call."""

    input_per_mtok: Price = Decimal(0)
    output_per_mtok: Price = Decimal(0)
    cache_read_per_mtok: Price | None = None
    cache_write_per_mtok: Price | None = None
    per_call: Price = Decimal(0)


class PricingConfig(_Model):
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


class _NotifierOptions(_Model):
    on: list[EventKindName] | None = None
    attempts: Annotated[int, Field(ge=1, le=50)] = 5
    max_delay_s: _Positive = 60.0
    backoff_s: _Positive = 0.5
    timeout_s: _Positive = 5.0
    max_per_minute: _Positive | None = 30.0  # null: no rate limit


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


HttpUrl = Annotated[str, PlainValidator(_http_url)]


# Secrets (tokens, keys, signing secrets, webhook URLs that carry a token) never show in a repr, a log
# or an error: SecretStr, or left out of the repr. `NotifierConfig.entry` unwraps them for the notifier.
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


class LogOptions(_Model):
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
                raise ValueError(f"the {name} notifier's options must be a mapping, got {_shown(value)}")
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


class KillSwitchConfig(_Model):
    cache_ms: Annotated[float, PlainValidator(_millis)] = 500.0
    exempt_paths: list[str] = Field(default_factory=list)
    exempt_features: list[str] = Field(default_factory=list)


class AdminToken(_Model):
    name: str
    token: Annotated[SecretStr, Field(min_length=16)]
    role: Literal["read", "operator", "admin"]
    tenant: str | None = None


class AdminConfig(_Model):
    tokens: list[AdminToken] = Field(default_factory=list)
    max_limit_usd: Usd | None = None


class Config(_Model):
    """The whole `costguard.yaml`."""

    store: str = "sqlite:///costguard.db"
    store_timeout_ms: Annotated[float, PlainValidator(_deadline_millis)] | None = None
    store_deadline_ms: Annotated[float, PlainValidator(_deadline_millis)] = 2000.0
    outage_allowance_usd: Usd | None = None
    spool_dir: str | Literal[False] | None = None
    labels: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    thresholds: list[Ratio] = Field(default_factory=lambda: [0.8, 1.0])
    on_store_error: Literal["open", "closed"] = "open"
    on_call_error: Literal["release", "keep"] = "release"
    commit: Literal["sync", "background"] = "sync"
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    max_label_length: Annotated[int, PlainValidator(_count)] = 256
    features: dict[str, FeatureConfig] = Field(default_factory=dict)
    customers: dict[str, Limits] = Field(default_factory=dict)
    ceilings: list[CeilingConfig] = Field(default_factory=list)
    notifiers: list[NotifierConfig] = Field(default_factory=list)
    alert_group_s: Annotated[float, Field(gt=0)] | None = 60.0
    killswitch: KillSwitchConfig = Field(default_factory=KillSwitchConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        from costguard.stores import check_store_url

        try:
            check_store_url(value)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        from costguard.model import normalize_labels

        for name in value:
            try:
                normalize_labels({name: "x"})
            except ValueError:
                raise ValueError(
                    f"{name!r} is not a label name: use letters, digits, '_', '.' or '-', starting with a letter"
                ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return value

    def ceiling_list(self) -> list[tuple[str, Ceiling]]:
        """Every ceiling with the key path it came from; `ConfigError` naming the path for one that can't be."""
        out: list[tuple[str, Ceiling]] = []

        def add(path: str, block: Limits, match: Mapping[str, str], exclude: Mapping[str, Any] | None) -> None:
            try:
                out.append((path, block.ceiling(match, exclude)))
            except ValueError as exc:
                raise ConfigError(str(exc), path=f"{path}.max_instances") from None

        listed = [name for name in self.features if name != "*"]
        for name, feature in self.features.items():
            exclude = {"feature": listed} if name == "*" else None
            if feature.limits():
                add(f"features.{name}", feature, {"feature": name}, exclude)
            if feature.per_customer is not None:
                add(f"features.{name}.per_customer", feature.per_customer, {"feature": name, "customer": "*"}, exclude)
        named = [name for name in self.customers if name != "*"]
        for name, limits in self.customers.items():
            exclude = {"customer": named} if name == "*" else None
            add(f"customers.{name}", limits, {"customer": name}, exclude)
        for index, item in enumerate(self.ceilings):
            add(f"ceilings[{index}]", item, item.match, None)
        return out

    def build(
        self,
        *,
        notifiers: Iterable[Notifier] = (),
        clock: Callable[[], float] | None = None,
        file: str | None = None,
        lines: Mapping[str, int] | None = None,
    ) -> Guard:
        """A `Guard` for this config; nothing is opened until every check has passed."""
        from costguard.estimators import LearnSettings
        from costguard.guard import FeatureSettings, Guard

        seen: dict[str, str] = {}
        ceilings = []
        for path, ceiling in self.ceiling_list():
            if ceiling.id in seen:
                line = (lines or {}).get(path.removesuffix(".per_customer"))
                raise ConfigError(
                    f"same match as {seen[ceiling.id]} ({ceiling.id}); merge their limits into one"
                    + (f" (line {line})" if line else ""),
                    file=file,
                    path=path,
                )
            seen[ceiling.id] = path
            ceilings.append(ceiling)
        features = {
            name: FeatureSettings(
                estimate_usd=f.estimate_usd or 0,
                estimate_tokens=f.estimate_tokens or 0,
                degrade_at=f.degrade_at,
                fallback=f.fallback.build() if f.fallback else None,
                on_store_error=f.on_store_error,
                on_call_error=f.on_call_error,
                commit=f.commit,
                max_call_usd=f.max_call_usd,
                estimator=f.estimator,
                learn=LearnSettings(**f.learn.model_dump()) if f.learn else LearnSettings(),
                outage_allowance_usd=f.outage_allowance_usd,
            )
            for name, f in self.features.items()
        }
        built = list(notifiers) + self._notifiers(file)
        options = {} if self.store_timeout_ms is None else {"timeout_ms": self.store_timeout_ms}
        guard = Guard(
            self.store,
            ceilings=ceilings,
            features=features,
            timezone=self.timezone,
            thresholds=self.thresholds,
            on_store_error=self.on_store_error,
            on_call_error=self.on_call_error,
            commit=self.commit,
            pricing=self.pricing.build(),
            notifiers=built,
            alert_group_s=self.alert_group_s,
            killswitch_cache_ms=self.killswitch.cache_ms,
            exempt_features=self.killswitch.exempt_features,
            exempt_paths=self.killswitch.exempt_paths,
            max_label_length=self.max_label_length,
            clock=clock,
            store_options=options,
            store_deadline_ms=self.store_deadline_ms,
            outage_allowance_usd=None
            if self.outage_allowance_usd is None
            else micros_to_usd(self.outage_allowance_usd),
            spool_dir=self.spool_dir,
            labels=self.labels,
        )
        guard.admin = self.admin  # the admin API and `costguard serve` read their tokens here
        return guard

    def _notifiers(self, file: str | None) -> list[Notifier]:
        from costguard.notify.registry import build_notifier

        out: list[Notifier] = []
        for index, item in enumerate(self.notifiers):
            kind, options = item.entry()
            try:
                out.append(build_notifier(kind, options))
            except (ValueError, TypeError, ImportError) as exc:
                raise ConfigError(str(exc), file=file, path=f"notifiers[{index}].{kind}") from None
        return out


def _format(error: Any, lines: Mapping[str, int]) -> tuple[str, str]:
    parts: list[str | int] = [p for p in error["loc"] if p not in ("function-after[_one(), FallbackConfig]",)]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if parts and parts[-1] == "":
        path = path.removesuffix(".") + ('.""' if path else '""')  # an empty key still gets a visible name
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        message += f" (not a costguard setting{' under ' + parent if parent else ''}; check the spelling)"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind in ("literal_error", "string_type", "dict_type", "list_type", "model_type", "bool_type"):
            message = f"{message}, got {_shown(error.get('input'))}"
    line = lines.get(path)
    parent = path
    while line is None and parent:
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
        line = lines.get(parent)
    return path, f"{message} (line {line})" if line else message


def parse_config(data: Any, *, file: str = "<config>", lines: Mapping[str, int] | None = None) -> Config:
    """Validate already-loaded config data."""
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", file=file)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = [_format(e, lines or {}) for e in exc.errors()]
        path, message = errors[0]
        more = f" (and {len(errors) - 1} more: {'; '.join(p for p, _ in errors[1:4])})" if len(errors) > 1 else ""
        raise ConfigError(message + more, file=file, path=path) from None
    try:
        config.ceiling_list()
    except ConfigError as exc:
        line = (lines or {}).get(str(exc.path).removesuffix(".max_instances"))
        raise ConfigError(exc.reason + (f" (line {line})" if line else ""), file=file, path=exc.path) from None
    return config


class LoadedConfig:
    """A validated config and the file it came from."""

    def __init__(self, config: Config, file: str, lines: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.file = file
        self.lines = dict(lines or {})

    def build(self, *, notifiers: Iterable[Notifier] = (), clock: Callable[[], float] | None = None) -> Guard:
        return self.config.build(notifiers=notifiers, clock=clock, file=self.file, lines=self.lines)


def load_config(path: str | Path, env: dict[str, str] | None = None) -> LoadedConfig:
    """Read and validate a YAML file."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=file) from None
    data, lines = load_yaml(text, file, env)
    return LoadedConfig(parse_config(data, file=file, lines=lines), file, lines)
