"""LiteLLM SDK: `completion` and `acompletion` guarded, streams included, for any provider LiteLLM speaks.

```python
from costguard.integrations import litellm as cg_litellm

llm = cg_litellm.guard("support_agent", fallback="Support chat is busy, we'll email you.")
reply = llm.completion(model="openai/gpt-4o-mini", messages=[...], max_tokens=300)
reply = await llm.acompletion(model="anthropic/claude-3-5-haiku-20241022", messages=[...], max_tokens=300)
```

Each call reserves the prompt's tokens plus its output cap at costguard's price for the model (LiteLLM's
`get_llm_provider` says which provider's), then commits the price of the response's `usage` from
costguard's tables, or LiteLLM's own `response_cost` with `cost="litellm"`. `litellm` is imported here
only: `pip install "costguard-ai[litellm]"`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

try:
    import litellm
    from litellm.types.utils import ModelResponse
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError('costguard.integrations.litellm needs litellm: pip install "costguard-ai[litellm]"') from exc

from costguard.fallback import Cached, Fallback, JSONCodec, as_fallback
from costguard.guarded import invoke
from costguard.integrations._streams import AsyncGuardedStream, GuardedStream, Meter
from costguard.model import Money, to_micros
from costguard.pricing import Pricing
from costguard.steps import Io, Steps, arun, run
from costguard.usage import TokenUsage, _get, _text_of, count_tokens, usage_from

if TYPE_CHECKING:
    from costguard.callpath import CallPath
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["GuardedLiteLLM", "guard"]

LabelsSpec = Mapping[str, object] | Callable[..., Mapping[str, object]] | None
EstimateSpec = Money | Callable[..., Money | None] | None
CostSource = Literal["costguard", "litellm"]
# LiteLLM's provider names → genai-prices' provider ids (others: genai-prices finds the model by name).
_PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai": "google",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "cohere": "cohere",
    "bedrock": "aws",
}


@dataclass
class _ProviderPricing(Pricing):
    """The guard's prices, for one provider: usage read off OpenAI-shaped LiteLLM responses names it."""

    provider: str | None = None

    def usd(self, usage: TokenUsage) -> Decimal | None:
        return super().usd(dataclasses.replace(usage, provider=self.provider))


@dataclass(frozen=True)
class _Request:
    model: str | None
    pricing: _ProviderPricing
    usd: Money | None
    tokens: int | None
    cap: int | None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read(pricing: Pricing, kwargs: Mapping[str, Any], explicit: EstimateSpec) -> _Request:
    """The model LiteLLM will call, its provider, and the request's estimate (USD None: the feature's)."""
    name = kwargs.get("model")
    model, provider = (name, None) if isinstance(name, str) else (None, None)
    if model is not None:
        try:
            model, provider, _, _ = litellm.get_llm_provider(model)
        except Exception:  # noqa: BLE001 - a model LiteLLM can't place: priced by name, if at all
            provider = None
    priced = _ProviderPricing(pricing.models, pricing.units, pricing.use_genai_prices, _PROVIDERS.get(provider or ""))
    usd: Money | None = explicit(**kwargs) if callable(explicit) else explicit
    cap = _count(kwargs.get("max_completion_tokens")) or _count(kwargs.get("max_tokens"))
    if cap is None:
        return _Request(model, priced, usd, None, None)
    cap *= _count(kwargs.get("n")) or 1
    prompt = _text_of(kwargs.get("messages"))
    if kwargs.get("tools"):  # tool schemas are input tokens too
        prompt += " " + json.dumps(kwargs["tools"], default=str, sort_keys=True)
    tokens_in = count_tokens(prompt, model)
    if usd is None and model is not None:
        micros = priced.estimate(model, input_tokens=tokens_in, max_output_tokens=cap, provider=priced.provider)
        usd = None if micros is None else Decimal(micros).scaleb(-6)
    return _Request(model, priced, usd, tokens_in + cap, cap)


def _usage(result: Any, request: _Request) -> TokenUsage | None:
    """The response's usage (OpenAI-shaped whatever the provider), cache writes included."""
    model = _get(result, "model") or request.model
    usage = usage_from(_get(result, "usage"), model if isinstance(model, str) else None, "openai")
    if usage is None:
        return None
    written = _get(_get(result, "usage"), "cache_creation_input_tokens")
    if isinstance(written, int) and written > 0:
        usage = dataclasses.replace(usage, cache_write_tokens=written)
    return usage


class GuardedLiteLLM:
    """`completion` and `acompletion` of LiteLLM, guarded as `feature` (see `guard`)."""

    def __init__(
        self,
        feature: str,
        *,
        guard: Guard | None = None,
        labels: LabelsSpec = None,
        fallback: Any = None,
        estimate: EstimateSpec = None,
        cost: CostSource = "costguard",
    ) -> None:
        if not isinstance(feature, str) or not feature:
            raise ValueError("guard(feature) needs a feature name, e.g. guard('support_agent')")
        if labels is not None and not callable(labels) and not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a mapping or a callable over the request, got {type(labels).__name__}")
        if cost not in ("costguard", "litellm"):
            raise ValueError(f"cost must be 'costguard' or 'litellm', got {cost!r}")
        self.feature = feature
        self.guard = guard
        self.labels = labels
        self.fallback = as_fallback(fallback)
        self.estimate = estimate
        self.cost = cost

    def resolve(self) -> Guard:
        """The guard to use now (the configured default unless one was given)."""
        if self.guard is not None:
            return self.guard
        from costguard.defaults import default_guard

        return default_guard()

    def completion(self, model: str, messages: list[Any], **kwargs: Any) -> Any:
        """`litellm.completion(model, messages, **kwargs)`, guarded; refused, the fallback's value."""
        return run(self._steps(litellm.completion, False, {"model": model, "messages": messages, **kwargs}))

    async def acompletion(self, model: str, messages: list[Any], **kwargs: Any) -> Any:
        """`litellm.acompletion(...)`, guarded; refused, the fallback's value (awaited when async)."""
        return await arun(self._steps(litellm.acompletion, True, {"model": model, "messages": messages, **kwargs}))

    def _steps(self, create: Callable[..., Any], is_async: bool, kwargs: dict[str, Any]) -> Steps[Any]:
        g = self.resolve()
        request = _read(g.pricing, kwargs, self.estimate)
        spec = self.labels
        labels = dict(spec(**kwargs) if callable(spec) else (spec or {}))
        chosen = self.fallback if self.fallback is not None else g.feature(self.feature).fallback
        if isinstance(chosen, Cached) and isinstance(chosen.codec, JSONCodec):
            chosen.codec.allow(ModelResponse)
        stream = kwargs.get("stream") is True
        ask = stream and kwargs.get("stream_options") is None
        send = {**kwargs, "stream_options": {"include_usage": True}} if ask else kwargs

        def target(reservation: Reservation, args: tuple[Any, ...], kw: dict[str, Any]) -> Io[Any]:
            return Io(create, create, (), send)

        def finish(
            calls: CallPath,
            reservation: Reservation,
            result: Any,
            fallback: Fallback | None,
            args: tuple[Any, ...],
            kw: dict[str, Any],
        ) -> tuple[Any, tuple[int | None, int | None] | None]:
            if stream:
                # Streams are priced from the usage chunk with costguard's tables, whatever `cost` says.
                meter = Meter(reservation, request.pricing, "openai", request.cap, hide_usage_chunk=ask)
                return (AsyncGuardedStream(result, meter) if is_async else GuardedStream(result, meter)), None
            usage = _usage(result, request)
            micros = None if usage is None else request.pricing.micros(usage)
            if self.cost == "litellm":
                reported = (getattr(result, "_hidden_params", None) or {}).get("response_cost")
                if isinstance(reported, (int, float)) and reported >= 0:
                    micros = to_micros(reported, round_up=True, what="LiteLLM response_cost")
            if isinstance(fallback, Cached):
                fallback.remember(calls.cache, self.feature, reservation.decision.labels, args, kw, result)
            return result, (micros, None if usage is None else usage.total_tokens)

        return invoke(g.calls, self.feature, labels, (request.usd, request.tokens), chosen, target, finish, (), kwargs)


def guard(
    feature: str,
    *,
    guard: Guard | None = None,
    labels: LabelsSpec = None,
    fallback: Any = None,
    estimate: EstimateSpec = None,
    cost: CostSource = "costguard",
) -> GuardedLiteLLM:
    """LiteLLM's `completion` / `acompletion` guarded as `feature`.

    Each call reserves the prompt's tokens (`messages` + `tools`) plus `max_completion_tokens` /
    `max_tokens` (times `n`) at the model's price (without an output cap, the feature's `estimate_usd`)
    and commits the price of the response's `usage` from costguard's tables; `cost="litellm"` commits
    LiteLLM's `response_cost` instead (streams are always priced from their usage chunk). `stream=True`
    returns a wrapped stream that commits when it ends (with `stream_options={"include_usage": True}`
    unless you set `stream_options`). `guard`, `labels`, `fallback` and `estimate` work as in
    `costguard.integrations.openai.guard`: callables get the request's keyword arguments.
    """
    return GuardedLiteLLM(feature, guard=guard, labels=labels, fallback=fallback, estimate=estimate, cost=cost)
