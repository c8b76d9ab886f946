"""The whole `costguard.yaml`: the top-level model, its ceilings and `GuardSettings`, and loading a file.

`parse` validates loaded data and `load` reads a file; both raise `ConfigError` naming the file, the
key path, what was expected and the line. `ConfigDocument.settings()` turns a valid document into the
`GuardSettings` a guard is built from; `load_settings` does all three. Nothing here knows the `Guard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator

from costguard._config.proxy import ProxyConfig
from costguard._config.schema import (
    AdminConfig,
    CeilingConfig,
    FeatureConfig,
    KillSwitchConfig,
    Limits,
    NotifierConfig,
    PricingConfig,
    StrictModel,
)
from costguard._config.values import Count, DeadlineMillis, Thresholds, Usd, shown
from costguard.errors import ConfigError
from costguard.estimators import LearnSettings
from costguard.model import WILDCARD, Ceiling, Period, micros_to_usd, pattern_message, ttl_problem
from costguard.notify.dispatcher import Notifier
from costguard.settings import FeatureSettings, GuardSettings
from costguard.yamlload import load_yaml

__all__ = ["ConfigDocument", "load", "load_settings", "parse", "read"]

D = TypeVar("D", bound="ConfigDocument")


class ConfigDocument(StrictModel):
    """The whole `costguard.yaml`."""

    store: str = "sqlite:///costguard.db"
    store_timeout_ms: DeadlineMillis | None = None
    store_deadline_ms: DeadlineMillis = 2000.0
    outage_allowance_usd: Usd | None = None
    spool_dir: str | Literal[False] | None = None
    labels: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    thresholds: Thresholds = Field(default_factory=lambda: [0.8, 1.0])
    on_store_error: Literal["open", "closed"] = "open"
    on_call_error: Literal["release", "keep"] = "release"
    commit: Literal["sync", "background"] = "sync"
    leases: bool | Literal["on", "off"] = True
    lease_period_ms: Annotated[float, Field(ge=10, le=60_000)] = 1000.0
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    max_label_length: Count = 256
    features: dict[str, FeatureConfig] = Field(default_factory=dict)
    customers: dict[str, Limits] = Field(default_factory=dict)
    ceilings: list[CeilingConfig] = Field(default_factory=list)
    notifiers: list[NotifierConfig] = Field(default_factory=list)
    alert_group_s: Annotated[float, Field(gt=0)] | None = 60.0
    killswitch: KillSwitchConfig = Field(default_factory=KillSwitchConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)

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
            for name, value in match.items():
                if WILDCARD in value and value != WILDCARD:
                    where = f"{path}.match.{name}" if path.startswith("ceilings") else path
                    raise ConfigError(pattern_message(name, value), path=where)
            limits = block.limits()
            if not limits:
                raise ConfigError(
                    "a ceiling needs at least one limit, such as daily_usd: 5, monthly_usd: 100, calls_per_day: "
                    "1000 or total_usd: 10; without one it would match calls and limit nothing",
                    path=path,
                )
            if block.expire_after is not None and all(limit.period is not Period.TOTAL for limit in limits):
                raise ConfigError(
                    "expire_after only applies to `total` limits (total_usd, calls_total, tokens_total): a daily, "
                    "weekly or monthly counter already starts over each period; remove it or use a total limit",
                    path=f"{path}.expire_after",
                )
            problem = ttl_problem(limits, block.enforcement, block.expire_after, block.ttl)
            if problem is not None:
                raise ConfigError(problem[1], path=f"{path}.{problem[0]}")
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

    def settings(self, *, file: str | None = None, lines: Mapping[str, int] | None = None) -> GuardSettings:
        """The `GuardSettings` of this document, its notifiers built; `ConfigError` naming the key path
        (and `file`, and the line from `lines`) for two ceilings on one match or a notifier that can't be built."""
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
        notifiers = self._notifiers(file)
        return GuardSettings(
            store=self.store,
            ceilings=tuple(ceilings),
            features=features,
            timezone=self.timezone,
            thresholds=tuple(self.thresholds),
            on_store_error=self.on_store_error,
            on_call_error=self.on_call_error,
            commit=self.commit,
            pricing=self.pricing.build(),
            notifiers=tuple(notifiers),
            alert_group_s=self.alert_group_s,
            killswitch_cache_ms=self.killswitch.cache_ms,
            exempt_features=tuple(self.killswitch.exempt_features),
            exempt_paths=tuple(self.killswitch.exempt_paths),
            max_label_length=self.max_label_length,
            store_options={} if self.store_timeout_ms is None else {"timeout_ms": self.store_timeout_ms},
            store_deadline_ms=self.store_deadline_ms,
            outage_allowance_usd=None
            if self.outage_allowance_usd is None
            else micros_to_usd(self.outage_allowance_usd),
            spool_dir=self.spool_dir,
            labels=tuple(self.labels),
            leases=self.leases in (True, "on"),
            lease_period_ms=self.lease_period_ms,
            admin=self.admin,  # the admin API and `costguard serve` read their tokens here
            proxy_upstreams=tuple(self.proxy.upstreams) or None,  # run keys may name only these
        )

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
    """(key path, message with its line) of one pydantic error."""
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
            message = f"{message}, got {shown(error.get('input'))}"
    line = lines.get(path)
    parent = path
    while line is None and parent:
        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
        line = lines.get(parent)
    return path, f"{message} (line {line})" if line else message


def parse(data: Any, model: type[D], *, file: str = "<config>", lines: Mapping[str, int] | None = None) -> D:
    """Validate already-loaded config data as `model` (`ConfigDocument` or a subclass)."""
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", file=file)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        errors = [_format(e, lines or {}) for e in exc.errors()]
        path, message = errors[0]
        more = f" (and {len(errors) - 1} more: {'; '.join(p for p, _ in errors[1:4])})" if len(errors) > 1 else ""
        raise ConfigError(message + more, file=file, path=path) from None
    try:
        config.ceiling_list()
    except ConfigError as exc:
        line = (lines or {}).get(str(exc.path).removesuffix(".max_instances")) or (lines or {}).get(str(exc.path))
        raise ConfigError(exc.reason + (f" (line {line})" if line else ""), file=file, path=exc.path) from None
    return config


def read(path: str | Path, env: dict[str, str] | None = None) -> tuple[Any, dict[str, int]]:
    """The YAML data of a file and the line of each key path; `ConfigError` when it can't be read or parsed."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=file) from None
    return load_yaml(text, file, env)


def load(path: str | Path, model: type[D], *, env: dict[str, str] | None = None) -> tuple[D, dict[str, int]]:
    """Read and validate a YAML file as `model`: the document and the line of each key path."""
    data, lines = read(path, env)
    return parse(data, model, file=str(path), lines=lines), lines


def load_settings(path: str | Path, *, env: dict[str, str] | None = None) -> GuardSettings:
    """Read and validate a YAML file: its `GuardSettings` (`ConfigError` naming the file and key path)."""
    document, lines = load(path, ConfigDocument, env=env)
    return document.settings(file=str(path), lines=lines)
