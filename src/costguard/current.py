"""Per-request and per-call state carried in contextvars: labels, charges, the current decision."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from costguard.decision import Decision
from costguard.model import Money, to_micros

__all__ = ["Priced", "charge", "charge_unit", "context", "current_decision", "current_labels"]

T = TypeVar("T")

_labels: ContextVar[Mapping[str, object]] = ContextVar("costguard_labels", default=MappingProxyType({}))
_decision: ContextVar[Decision | None] = ContextVar("costguard_decision", default=None)
_call: ContextVar[CallCost | None] = ContextVar("costguard_call", default=None)


@dataclass
class CallCost:
    """Costs added with `charge()` while a guarded call runs; `pricing` prices `charge_unit()`."""

    charged_micros: int = 0
    items: list[tuple[int, str | None]] = field(default_factory=list)
    pricing: Any = None


@contextmanager
def context(**labels: object) -> Iterator[Mapping[str, object]]:
    """Labels for every guarded call inside the block (`customer`, `team`, `run`, …); blocks nest."""
    merged = {**_labels.get(), **labels}
    token = _labels.set(merged)
    try:
        yield merged
    finally:
        _labels.reset(token)


def current_labels() -> Mapping[str, object]:
    """The labels set by enclosing `context()` blocks."""
    return _labels.get()


def current_decision() -> Decision | None:
    """Inside a guarded call or its fallback: why it is running (allowed, degraded, blocked…)."""
    return _decision.get()


def charge(usd: Money, note: str | None = None) -> None:
    """Add a metered cost (a tool call, a Stripe amount…) to the guarded call that is running."""
    micros = to_micros(usd, round_up=False, what="charge")
    call = _call.get()
    if call is None:
        raise RuntimeError(
            "costguard.charge() was called outside a guarded call; call it inside a function "
            "decorated with @with_kill_switch or inside `with guard.reserve(...)`"
        )
    call.charged_micros += micros
    call.items.append((micros, note))


def charge_unit(unit: str, quantity: float = 1, note: str | None = None) -> float:
    """Add `quantity` of a metered unit priced under `pricing.units` (an SMS, a search…) to the guarded
    call that is running; returns the USD charged."""
    call = _call.get()
    if call is None or call.pricing is None:
        raise RuntimeError(
            "costguard.charge_unit() was called outside a guarded call; call it inside a function "
            "decorated with @with_kill_switch or inside `with guard.reserve(...)`"
        )
    micros: int = call.pricing.unit_micros(unit, quantity)
    call.charged_micros += micros
    call.items.append((micros, note or f"{quantity:g} x {unit}"))
    return micros / 1_000_000


@dataclass(frozen=True)
class Priced(Generic[T]):
    """A result with its cost: `return costguard.Priced(value, cost_usd)`; the caller gets `value`."""

    value: T
    cost_usd: Money


class _scoped:
    """Make `decision` and `call` current inside the block (a class: this is on every guarded call)."""

    __slots__ = ("_tokens", "call", "decision")

    def __init__(self, decision: Decision | None, call: CallCost | None) -> None:
        self.decision = decision
        self.call = call

    def __enter__(self) -> None:
        self._tokens = (_decision.set(self.decision), _call.set(self.call))

    def __exit__(self, *exc: object) -> None:
        decision_token, call_token = self._tokens
        _call.reset(call_token)
        _decision.reset(decision_token)
