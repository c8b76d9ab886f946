"""The exception tree: every error costguard raises derives from `CostGuardError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costguard.decision import Decision

__all__ = [
    "Blocked",
    "BudgetExceeded",
    "BudgetExpired",
    "ConfigError",
    "CostGuardError",
    "KillSwitchActive",
    "LabelError",
    "LimitNotFound",
    "StoreBusy",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
]


class CostGuardError(Exception):
    """Base class of every costguard error."""


class ConfigError(CostGuardError, ValueError):
    """A configuration is invalid: the message names the file, the key path and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None) -> None:
        self.file = file
        self.path = path
        self.reason = message
        where = ": ".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class LabelError(CostGuardError, ValueError):
    """A label name or value cannot be used (wrong type, empty, too long)."""


class LimitNotFound(CostGuardError, LookupError):
    """`clear_limit` found no run-time limit for that scope, period and unit: nothing was changed."""


class StoreError(CostGuardError):
    """The store failed in a way that is not a plain outage."""


class StoreUnavailable(StoreError):
    """The store could not be reached (refused, reset, DNS) or did not answer within the deadline."""


class StoreBusy(StoreUnavailable):
    """The store is overloaded, not down: no pooled connection free, the server's connection limit, a
    lock wait. A guarded call backs off and asks again within its deadline; only when the deadline
    passes does `on_store_error` apply."""


class StoreTimeout(StoreUnavailable):
    """No reply within an attempt's time: the request may or may not have been applied. Every store
    write is idempotent by reservation id, so asking again within the deadline is safe."""


class Blocked(CostGuardError):
    """A guarded call was not allowed; carries the scope, period, spend and limit that blocked it."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.scope: dict[str, str] = dict(decision.scope)
        self.period: str | None = decision.period
        self.spent_usd: float | None = decision.spent_usd
        self.limit_usd: float | None = decision.limit_usd
        self.retry_after_s: float | None = decision.retry_after_s
        super().__init__(decision.message)


class BudgetExceeded(Blocked):
    """A hard ceiling has no room left for this call."""


class BudgetExpired(BudgetExceeded):
    """A ceiling's `ttl` ran out (a run's lifetime, counted from its first call): it takes no more calls,
    whatever is left of its limit, until `expire_after` drops its counter."""


class KillSwitchActive(Blocked):
    """An operator's kill switch covers this call; `reason` is the operator's reason for it."""

    def __init__(self, decision: Decision, reason: str = "") -> None:
        super().__init__(decision)
        self.reason = reason
