"""`costguard.yaml` → `Config` → `Guard`: the public face of the config.

Validation, error messages and `GuardSettings` live in `costguard._config`, which knows nothing of the
`Guard`; this module sits above the guard (like the CLI) and adds building one: `Config.build()`,
`load_config(path).build()`. Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from costguard._config import ConfigDocument, load, parse
from costguard._config.schema import (
    AdminConfig,
    AdminToken,
    CachedFallbackConfig,
    CeilingConfig,
    EventKindName,
    FallbackConfig,
    FeatureConfig,
    KillSwitchConfig,
    LearnConfig,
    Limits,
    LogOptions,
    MetricsConfig,
    ModelPriceConfig,
    NotifierConfig,
    PagerDutyOptions,
    PricingConfig,
    SlackOptions,
    WebhookOptions,
)
from costguard._config.values import Count, Duration, HttpUrl, Price, Ratio, Usd, UsdEstimate
from costguard.guard import Guard
from costguard.notify.dispatcher import Notifier

__all__ = [
    "AdminConfig",
    "AdminToken",
    "CachedFallbackConfig",
    "CeilingConfig",
    "Config",
    "Count",
    "Duration",
    "EventKindName",
    "FallbackConfig",
    "FeatureConfig",
    "HttpUrl",
    "KillSwitchConfig",
    "LearnConfig",
    "Limits",
    "LoadedConfig",
    "LogOptions",
    "MetricsConfig",
    "ModelPriceConfig",
    "NotifierConfig",
    "PagerDutyOptions",
    "Price",
    "PricingConfig",
    "Ratio",
    "SlackOptions",
    "Usd",
    "UsdEstimate",
    "WebhookOptions",
    "load_config",
    "parse_config",
]


class Config(ConfigDocument):
    """The whole `costguard.yaml`."""

    def build(
        self,
        *,
        notifiers: Iterable[Notifier] = (),
        clock: Callable[[], float] | None = None,
        file: str | None = None,
        lines: Mapping[str, int] | None = None,
    ) -> Guard:
        """A `Guard` for this config; nothing is opened until every check has passed."""
        return Guard.from_settings(self.settings(file=file, lines=lines), notifiers=notifiers, clock=clock)


def parse_config(data: Any, *, file: str = "<config>", lines: Mapping[str, int] | None = None) -> Config:
    """Validate already-loaded config data."""
    return parse(data, Config, file=file, lines=lines)


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
    config, lines = load(path, Config, env=env)
    return LoadedConfig(config, str(path), lines)
