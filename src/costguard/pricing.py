"""What a call cost: `Priced` results, `cost=` numbers or callables, and token usage on responses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from costguard.current import Priced
from costguard.model import Money, to_micros

__all__ = ["CallResult", "resolve_cost", "usage_tokens"]

CostSpec = Money | Callable[[Any], Money] | None


@dataclass(frozen=True)
class CallResult:
    """The caller-facing value and what is known of its cost (None = unknown: the estimate stands)."""

    value: Any
    usd_micros: int | None
    tokens: int | None


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_tokens(result: Any) -> int | None:
    """Total tokens from an OpenAI- or Anthropic-shaped `usage` (object or dict), if there is one."""
    usage = _get(result, "usage")
    if usage is None:
        return None
    total = _as_int(_get(usage, "total_tokens"))
    if total is not None:
        return total
    parts = [
        _as_int(_get(usage, name))
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
    ]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def resolve_cost(result: Any, cost: CostSpec) -> CallResult:
    """Unwrap `Priced`, apply `cost=` (number or callable over the result), read token usage."""
    value = result
    usd: int | None = None
    if isinstance(result, Priced):
        value = result.value
        usd = to_micros(result.cost_usd, round_up=False, what="Priced.cost_usd")
    if cost is not None:
        amount = cost(value) if callable(cost) else cost
        usd = to_micros(amount, round_up=False, what="cost")
    return CallResult(value, usd, usage_tokens(value))
