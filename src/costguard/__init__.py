"""costguard: cost ceilings in front of every paid call — reserve before, record after, fall back when full."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from costguard import fallback
from costguard._version import __version__
from costguard.current import Priced, charge, charge_unit, context, current_decision
from costguard.decision import Decision
from costguard.defaults import configure, default_guard
from costguard.errors import (
    Blocked,
    BudgetExceeded,
    BudgetExpired,
    ConfigError,
    CostGuardError,
    KillSwitchActive,
    LabelError,
    LimitNotFound,
    StoreBusy,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from costguard.events import AuditRecord, Event
from costguard.guard import FeatureSettings, Guard
from costguard.model import Ceiling, Limit, Period, Unit
from costguard.pricing import ModelPrice, Pricing
from costguard.status import CeilingStatus, Status

__all__ = [
    "AuditRecord",
    "Blocked",
    "BudgetExceeded",
    "BudgetExpired",
    "Ceiling",
    "CeilingStatus",
    "ConfigError",
    "CostGuardError",
    "Decision",
    "Event",
    "FeatureSettings",
    "Guard",
    "KillSwitchActive",
    "LabelError",
    "Limit",
    "LimitNotFound",
    "ModelPrice",
    "Period",
    "Priced",
    "Pricing",
    "Status",
    "StoreBusy",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "Unit",
    "__version__",
    "charge",
    "charge_unit",
    "configure",
    "context",
    "current_decision",
    "default_guard",
    "fallback",
    "with_kill_switch",
]


F = TypeVar("F", bound=Callable[..., Any])


def with_kill_switch(feature: str, **options: Any) -> Callable[[F], F]:
    """Guard a function as `feature` on the default guard (`configure()`, `COSTGUARD_CONFIG` or `./costguard.yaml`).

    Options: `fallback`, `estimate`, `estimate_tokens`, `cost`, `labels`, `degrade`, `guard`; see
    `costguard.decorator.with_kill_switch`. The guard is looked up at call time, so decorating at
    import never touches the store.
    """
    from costguard.decorator import with_kill_switch as _decorate

    return _decorate(feature, **options)
