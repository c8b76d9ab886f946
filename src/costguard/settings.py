"""Settings: what a `Guard` is built from — per-feature behaviour and the guard's own options.

`costguard._config` turns a YAML file into a `GuardSettings`; `Guard.from_settings` builds from it.
Nothing here opens a store or knows the `Guard`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from costguard.deadline import DEFAULT_DEADLINE_MS
from costguard.estimators import LearnSettings
from costguard.model import DEFAULT_MAX_LABEL_LENGTH, Ceiling, Money
from costguard.notify.dispatcher import DEFAULT_GROUP_S

if TYPE_CHECKING:
    from costguard.fallback import Fallback
    from costguard.notify.dispatcher import Notifier
    from costguard.pricing import Pricing

__all__ = ["CallErrorPolicy", "CommitMode", "FeatureSettings", "GuardSettings", "StoreErrorPolicy"]

StoreErrorPolicy = Literal["open", "closed"]
CallErrorPolicy = Literal["release", "keep"]
CommitMode = Literal["sync", "background"]


@dataclass(frozen=True)
class FeatureSettings:
    """Per-feature behaviour (limits themselves live in ceilings)."""

    estimate_usd: int = 0
    estimate_tokens: int = 0
    degrade_at: float | None = None
    fallback: Fallback | None = None
    on_store_error: StoreErrorPolicy | None = None
    on_call_error: CallErrorPolicy | None = None
    commit: CommitMode | None = None
    max_call_usd: int | None = None
    estimator: Literal["fixed", "learned"] = "fixed"
    learn: LearnSettings = field(default_factory=LearnSettings)
    outage_allowance_usd: int | None = None


DEFAULT_FEATURE = FeatureSettings()


@dataclass(frozen=True)
class GuardSettings:
    """Everything `Guard(...)` takes but the clock: `Guard.from_settings(settings)` builds it.

    The fields are the `Guard` constructor's keyword arguments, with the same defaults; `admin` is the
    config's `admin:` block (tokens for the admin API and `costguard serve`), kept on the guard.
    """

    store: str = "memory://"
    ceilings: Sequence[Ceiling] = ()
    features: Mapping[str, FeatureSettings] = field(default_factory=dict)
    timezone: str = "UTC"
    thresholds: Sequence[float] = (0.8, 1.0)
    on_store_error: StoreErrorPolicy = "open"
    on_call_error: CallErrorPolicy = "release"
    commit: CommitMode = "sync"
    pricing: Pricing | None = None
    notifiers: Sequence[Notifier] = ()
    alert_group_s: float | None = DEFAULT_GROUP_S
    killswitch_cache_ms: float = 500.0
    exempt_features: Sequence[str] = ()
    exempt_paths: Sequence[str] = ()
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH
    store_options: Mapping[str, Any] = field(default_factory=dict)
    store_deadline_ms: float = DEFAULT_DEADLINE_MS
    outage_allowance_usd: Money | None = None
    spool_dir: str | Path | Literal[False] | None = None
    labels: Sequence[str] = ()
    leases: bool = True
    lease_period_ms: float = 1000.0
    admin: Any = None
    proxy_upstreams: tuple[str, ...] | None = None  # the names of `proxy.upstreams` (None: no proxy section)
