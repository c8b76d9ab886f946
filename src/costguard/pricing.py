"""What a call costs: token usage priced with genai-prices or your own prices.

- `Pricing` turns usage (`costguard.usage`: read off responses, re-exported here) into
  micro-dollars: per-model overrides from the config first (fine-tuned or self-hosted models),
  then genai-prices' bundled price data (never fetched at run time). An unknown model logs one
  warning and prices as None — the estimate stands, never a silent $0.
- `Pricing.estimate(...)` prices a request before it is sent: input tokens counted roughly by
  characters (exactly with `tiktoken` when installed) plus `max_tokens` at the output price.
- `resolve_cost(result, cost, pricing)` is what the decorator records after a call.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from costguard.current import Priced
from costguard.model import Money, to_micros
from costguard.usage import TokenUsage, UsageAccumulator, count_tokens, extract_usage, usage_tokens

# Private helpers costguard.integrations imports from here; the alias marks them re-exported for mypy.
from costguard.usage import _get as _get  # noqa: PLC0414
from costguard.usage import _text_of as _text_of  # noqa: PLC0414

__all__ = [
    "CallResult",
    "ModelPrice",
    "Pricing",
    "TokenUsage",
    "UsageAccumulator",
    "count_tokens",
    "extract_usage",
    "resolve_cost",
    "usage_tokens",
]

log = logging.getLogger("costguard")

CostSpec = Money | Callable[[Any], Money] | None
_MTOK = Decimal(1_000_000)


# --------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class ModelPrice:
    """Your own price for a model, USD per million tokens (cache prices default to the input price)
    plus an optional flat `per_call`."""

    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    per_call: Decimal = Decimal(0)

    def usd(self, usage: TokenUsage) -> Decimal:
        read = self.cache_read_per_mtok if self.cache_read_per_mtok is not None else self.input_per_mtok
        write = self.cache_write_per_mtok if self.cache_write_per_mtok is not None else self.input_per_mtok
        plain_input = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
        tokens = (
            plain_input * self.input_per_mtok
            + usage.cache_read_tokens * read
            + usage.cache_write_tokens * write
            + usage.output_tokens * self.output_per_mtok
        )
        return tokens / _MTOK + self.per_call


def _micros_up(usd: Decimal) -> int:
    """USD → micro-dollars, rounded up (a cost is never under-counted)."""
    return int((usd * _MTOK).to_integral_value(rounding="ROUND_CEILING"))


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(model: str, why: str) -> None:
    with _warned_lock:
        if model in _warned:
            return
        _warned.add(model)
    log.warning(
        "costguard: no price for model %r (%s); its calls are recorded at their estimate. "
        "Add it under `pricing.models` in costguard.yaml to record the real cost.",
        model,
        why,
    )


@dataclass
class Pricing:
    """Prices in use: `models` overrides (exact names or globs such as `ft:gpt-4o-mini:*`) win over
    genai-prices; `units` are prices of metered non-LLM work (`costguard.charge_unit`)."""

    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    units: Mapping[str, Decimal] = field(default_factory=dict)
    use_genai_prices: bool = True

    def _override(self, model: str | None) -> ModelPrice | None:
        if model is None:
            return None
        if model in self.models:
            return self.models[model]
        for pattern, price in self.models.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
                return price
        return None

    def usd(self, usage: TokenUsage) -> Decimal | None:
        """The price of `usage` in USD, or None when the model has no known price (warned once)."""
        override = self._override(usage.model)
        if override is not None:
            return override.usd(usage)
        if usage.model is None:
            _warn_once("(no model in the response)", "the response does not name its model")
            return None
        if not self.use_genai_prices:
            _warn_once(usage.model, "genai-prices is turned off and the model is not in pricing.models")
            return None
        try:
            from genai_prices import Usage, calc_price
        except ImportError:  # pragma: no cover - a core dependency
            _warn_once(usage.model, "genai-prices is not installed")
            return None
        try:
            calc = calc_price(
                Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                ),
                usage.model,
                provider_id=usage.provider,
            )
        except LookupError as exc:
            _warn_once(usage.model, f"genai-prices: {exc}")
            return None
        return Decimal(calc.total_price)

    def micros(self, usage: TokenUsage) -> int | None:
        """`usd` in micro-dollars, rounded up."""
        usd = self.usd(usage)
        return None if usd is None else _micros_up(usd)

    def unit_micros(self, name: str, quantity: float = 1) -> int:
        """The price of `quantity` of a configured unit, in micro-dollars (rounded up)."""
        if name not in self.units:
            known = ", ".join(sorted(self.units)) or "none configured"
            raise KeyError(f"no price for unit {name!r} under pricing.units (known: {known})")
        if isinstance(quantity, bool) or quantity < 0 or not math.isfinite(quantity):
            raise ValueError(f"quantity must be a finite number >= 0, got {quantity!r}")
        return _micros_up(self.units[name] * Decimal(str(quantity)))

    def estimate(
        self,
        model: str,
        *,
        prompt: Any = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        provider: str | None = None,
    ) -> int | None:
        """A pre-call estimate in micro-dollars: the prompt's tokens at the input price plus
        `max_output_tokens` at the output price (the most the call can produce). None when the model
        has no price or `max_output_tokens` is unknown."""
        if max_output_tokens is None:
            return None
        tokens_in = input_tokens if input_tokens is not None else count_tokens(_text_of(prompt), model)
        usage = TokenUsage(model, provider, input_tokens=tokens_in, output_tokens=max_output_tokens)
        return self.micros(usage)


DEFAULT_PRICING = Pricing()


# --------------------------------------------------------------------------- after the call


@dataclass(frozen=True)
class CallResult:
    """The caller-facing value and what is known of its cost (None = unknown: the estimate stands)."""

    value: Any
    usd_micros: int | None
    tokens: int | None
    usage: TokenUsage | None = None


def resolve_cost(result: Any, cost: CostSpec, pricing: Pricing | None = None) -> CallResult:
    """The cost of a call: `cost=` (a number, or a callable over the unwrapped result) when given, else
    `Priced(value, usd)`'s amount, else the result's token usage priced by `pricing`; else unknown (None)."""
    value = result
    usd: int | None = None
    if isinstance(result, Priced):
        value = result.value
        usd = to_micros(result.cost_usd, round_up=False, what="Priced.cost_usd")
    if cost is not None:
        amount = cost(value) if callable(cost) else cost
        usd = to_micros(amount, round_up=False, what="cost")
    usage = extract_usage(value)
    if usd is None and usage is not None:
        usd = (pricing or DEFAULT_PRICING).micros(usage)
    return CallResult(value, usd, None if usage is None else usage.total_tokens, usage)
