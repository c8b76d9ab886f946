"""What a call costs: token usage read off responses, priced with genai-prices or your own prices.

- `extract_usage(result)` reads OpenAI (chat completions, responses) and Anthropic (messages)
  usage from SDK objects or dicts of the same shape, duck-typed: no vendor SDK is imported.
- `Pricing` turns usage into micro-dollars: per-model overrides from the config first (fine-tuned
  or self-hosted models), then genai-prices' bundled price data (never fetched at run time). An
  unknown model logs one warning and prices as None — the estimate stands, never a silent $0.
- `Pricing.estimate(...)` prices a request before it is sent: input tokens counted roughly by
  characters (exactly with `tiktoken` when installed) plus `max_tokens` at the output price.
- `resolve_cost(result, cost, pricing)` is what the decorator records after a call.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from costguard.current import Priced
from costguard.model import Money, to_micros

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


# --------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one call. `input_tokens` counts every input token, cached ones included (the
    genai-prices convention); `cache_read_tokens` and `cache_write_tokens` say how many of them were
    cache reads and writes. `output_tokens` includes reasoning tokens."""

    model: str | None
    provider: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.model or other.model,
            self.provider or other.provider,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _has(obj: Any, name: str) -> bool:
    value = _get(obj, name)
    return isinstance(value, int) and not isinstance(value, bool)


def _provider_of(result: Any, usage: Any, model: str | None) -> str:
    if _get(result, "type") in ("message", "message_start") or _has(usage, "cache_creation_input_tokens"):
        return "anthropic"
    if _has(usage, "cache_read_input_tokens") or (model or "").startswith("claude"):
        return "anthropic"
    return "openai"


def usage_from(usage: Any, model: str | None, provider: str) -> TokenUsage | None:
    """A `usage` object or dict of the given provider's shape, normalised."""
    if usage is None:
        return None
    if provider == "anthropic":
        if not (_has(usage, "input_tokens") or _has(usage, "output_tokens")):
            return None
        cache_write = _int(_get(usage, "cache_creation_input_tokens"))
        cache_read = _int(_get(usage, "cache_read_input_tokens"))
        return TokenUsage(
            model,
            provider,
            input_tokens=_int(_get(usage, "input_tokens")) + cache_write + cache_read,
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
    if _has(usage, "prompt_tokens") or _has(usage, "completion_tokens"):  # chat completions
        return TokenUsage(
            model,
            provider,
            input_tokens=_int(_get(usage, "prompt_tokens")),
            output_tokens=_int(_get(usage, "completion_tokens")),
            cache_read_tokens=_int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens")),
            reasoning_tokens=_int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens")),
        )
    if _has(usage, "input_tokens") or _has(usage, "output_tokens"):  # responses API
        return TokenUsage(
            model,
            provider,
            input_tokens=_int(_get(usage, "input_tokens")),
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_tokens=_int(_get(_get(usage, "input_tokens_details"), "cached_tokens")),
            reasoning_tokens=_int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
        )
    return None


def extract_usage(result: Any, provider: str | None = None) -> TokenUsage | None:
    """Usage of an OpenAI chat completion or response, an Anthropic message, a final stream chunk
    carrying usage, or a dict of any of these shapes; None when the result carries no usage."""
    usage = _get(result, "usage")
    if usage is None:
        return None
    model = _get(result, "model")
    model = model if isinstance(model, str) and model else None
    return usage_from(usage, model, provider or _provider_of(result, usage, model))


def usage_tokens(result: Any) -> int | None:
    """Total tokens of a result's usage, if it has one."""
    usage = extract_usage(result)
    return None if usage is None else usage.total_tokens


class UsageAccumulator:
    """Usage of a streamed call, fed one chunk or event at a time.

    OpenAI chat streams report usage on the last chunk (with `stream_options={"include_usage":
    True}`); the responses API on `response.completed`; Anthropic in `message_start` (input and
    cache tokens) and `message_delta` (output tokens, cumulative).
    """

    def __init__(self, provider: str | None = None) -> None:
        self.provider = provider
        self.model: str | None = None
        self._usage: TokenUsage | None = None
        self._anthropic_output = 0

    def feed(self, chunk: Any) -> None:
        kind = _get(chunk, "type")
        model = _get(chunk, "model")
        if isinstance(model, str) and model:
            self.model = model
        if kind == "message_start":  # Anthropic
            message = _get(chunk, "message")
            self.model = _get(message, "model") or self.model
            self._usage = usage_from(_get(message, "usage"), self.model, "anthropic")
            self._anthropic_output = self._usage.output_tokens if self._usage else 0
            return
        if kind == "message_delta":  # Anthropic: output_tokens so far
            delta = usage_from(_get(chunk, "usage"), self.model, "anthropic")
            if delta is not None:
                base = self._usage or TokenUsage(self.model, "anthropic")
                self._usage = TokenUsage(
                    base.model,
                    "anthropic",
                    base.input_tokens,
                    max(self._anthropic_output, delta.output_tokens),
                    base.cache_read_tokens,
                    base.cache_write_tokens,
                )
            return
        if kind in ("response.completed", "response.incomplete", "response.failed"):  # OpenAI responses
            response = _get(chunk, "response")
            self.model = _get(response, "model") or self.model
            found = extract_usage(response, "openai")
            if found is not None:
                self._usage = found
            return
        found = extract_usage(chunk, self.provider)
        if found is not None:
            self._usage = found if found.model else TokenUsage(self.model, *_tail(found))

    @property
    def usage(self) -> TokenUsage | None:
        """What the stream reported so far (None if it never said)."""
        return self._usage


def _tail(usage: TokenUsage) -> tuple[Any, ...]:
    return (
        usage.provider,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )


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


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text`: exact with `tiktoken` when it is installed and knows the model, otherwise
    about one token per four characters (rounded up), which over-estimates English slightly."""
    try:
        import tiktoken
    except ImportError:
        return math.ceil(len(text) / 4)
    try:
        encoding = tiktoken.encoding_for_model(model or "gpt-4o")
    except KeyError:
        encoding = tiktoken.get_encoding("o200k_base")
    return len(encoding.encode(text, disallowed_special=()))


def _text_of(value: Any) -> str:
    """All the text in a prompt: strings, message lists, content parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(_text_of(v) for k, v in value.items() if k in ("content", "text", "input", "system"))
    if isinstance(value, Iterable):
        return " ".join(_text_of(item) for item in value)
    return str(value)


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
