"""LiteLLM SDK: `completion` and `acompletion` guarded, streams included, for any provider LiteLLM speaks.

```python
from costguard.integrations import litellm as cg_litellm

llm = cg_litellm.guard("support_agent", fallback="Support chat is busy, we'll email you.")
reply = llm.completion(model="openai/gpt-4o-mini", messages=[...], max_tokens=300)
reply = await llm.acompletion(model="anthropic/claude-3-5-haiku-20241022", messages=[...], max_tokens=300)
```

Each call reserves the prompt's tokens plus its output cap at costguard's price for the model (LiteLLM's
`get_llm_provider` says which provider's), then commits the price of the response's `usage` from
costguard's tables, or LiteLLM's own `response_cost` with `cost="litellm"`. A refused call answers in
LiteLLM's shapes: a `ModelResponse` whose message is the fallback's text, or (`stream=True`) its chunks;
`reply._hidden_params["costguard_blocked"]` is costguard's `Decision`. `litellm` is imported here only:
`pip install "costguard-ai[litellm]"`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

try:
    import litellm
    from litellm.types.utils import Choices, Delta, Message, ModelResponse, ModelResponseStream, StreamingChoices, Usage
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError('costguard.integrations.litellm needs litellm: pip install "costguard-ai[litellm]"') from exc

from costguard.decision import Decision
from costguard.errors import Blocked
from costguard.fallback import Cache, Cached, Fallback, JSONCodec, as_fallback
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
_Answer = TypeVar("_Answer", ModelResponse, ModelResponseStream)
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


# ----------------------------------------------------------------- refused: the fallback in LiteLLM's shapes
def _own(value: Any) -> ModelResponse | None:
    """The fallback's own response: a `ModelResponse`, or a dict shaped like one (built as LiteLLM builds a
    dict `mock_response`)."""
    if isinstance(value, Mapping) and isinstance(value.get("choices"), list):
        return ModelResponse(**value)
    return value if isinstance(value, ModelResponse) else None


def _marked(item: _Answer, decision: Decision, hidden: Mapping[str, Any]) -> _Answer:
    # `_hidden_params` is where LiteLLM keeps what is not part of the OpenAI shape (`response_cost`…): it
    # never reaches `model_dump()` or JSON, so a refusal served on as an API response looks like any other.
    item._hidden_params = {**hidden, "response_cost": 0.0, "costguard_blocked": decision}
    return item


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _no_tokens() -> Usage:
    return Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def _response(value: Any, model: str | None, decision: Decision) -> ModelResponse:
    """A refused call's `ModelResponse`: the fallback's text as the assistant's message, no tokens used
    (a response of the fallback's own: a copy of it, unchanged but for the marks)."""
    own = _own(value)
    if own is not None:  # a copy: a static fallback's response is shared by every refused call
        return _marked(own.model_copy(deep=True), decision, own._hidden_params)
    message = Message(role="assistant", content=_text(value))
    choice = Choices(index=0, finish_reason="stop", message=message)
    return _marked(ModelResponse(model=model, choices=[choice], usage=_no_tokens()), decision, {})


def _chunks(value: Any, model: str | None, decision: Decision, usage: bool) -> list[ModelResponseStream]:
    """A refused `stream=True` call's chunks, shaped as `litellm.completion(stream=True, mock_response=...)`
    yields them: the whole text in one chunk, then the finish reason (then zero usage when `stream_options`
    asked for it). A response of the fallback's own is one chunk, converted by LiteLLM's own helper as its
    `mock_response` is."""
    own = _own(value)
    if own is not None:
        from litellm.llms.base_llm.base_model_iterator import convert_model_response_to_streaming

        return [_marked(convert_model_response_to_streaming(own), decision, {})]
    text = StreamingChoices(index=0, delta=Delta(role="assistant", content=_text(value)))
    first = ModelResponseStream(choices=[text], model=model)
    end = StreamingChoices(index=0, delta=Delta(), finish_reason="stop")
    chunks = [first, ModelResponseStream(choices=[end], id=first.id, created=first.created, model=model)]
    if usage:
        chunks.append(
            ModelResponseStream(choices=[], id=first.id, created=first.created, model=model, usage=_no_tokens())
        )
    return [_marked(chunk, decision, {}) for chunk in chunks]


class _RefusedStream:
    """A refused `completion(stream=True)`: iterate it, `with` it, or `close()` it, as the admitted stream."""

    def __init__(self, chunks: Iterable[ModelResponseStream]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> _RefusedStream:
        return self

    def __next__(self) -> ModelResponseStream:
        return next(self._chunks)

    def close(self) -> None:
        """Nothing to release: the call was never sent."""
        self._chunks = iter(())

    def __enter__(self) -> _RefusedStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _AsyncRefusedStream:
    """A refused `acompletion(stream=True)`: `async for`, `async with`, or `await close()`."""

    def __init__(self, chunks: Iterable[ModelResponseStream]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> _AsyncRefusedStream:
        return self

    async def __anext__(self) -> ModelResponseStream:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Nothing to release: the call was never sent."""
        self._chunks = iter(())

    aclose = close  # LiteLLM's async stream closes with `aclose()`

    async def __aenter__(self) -> _AsyncRefusedStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _InLiteLLMShapes(Fallback):
    """`inner`'s answer to a refused call, in the shape the call would have had (see `_response`, `_chunks`);
    a stream of the fallback's own (an iterator for `completion`, an async one for `acompletion`) as it is."""

    def __init__(self, inner: Fallback, model: str | None, stream: bool, usage: bool) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.model = model
        self.stream = stream
        self.usage = usage

    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = self.inner.serve(cache, feature, blocked, args, kwargs)
        if not self.stream:
            return _response(value, self.model, blocked.decision)
        if isinstance(value, Iterator):
            return value
        return _RefusedStream(_chunks(value, self.model, blocked.decision, self.usage))

    async def aserve(
        self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        value = await self.inner.aserve(cache, feature, blocked, args, kwargs)
        if not self.stream:
            return _response(value, self.model, blocked.decision)
        if isinstance(value, AsyncIterator):
            return value
        return _AsyncRefusedStream(_chunks(value, self.model, blocked.decision, self.usage))


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
        """`litellm.completion(model, messages, **kwargs)`, guarded; refused, the fallback's answer as a
        `ModelResponse` (or, streamed, its chunks) marked `_hidden_params["costguard_blocked"]`."""
        return run(self._steps(litellm.completion, False, {"model": model, "messages": messages, **kwargs}))

    async def acompletion(self, model: str, messages: list[Any], **kwargs: Any) -> Any:
        """`litellm.acompletion(...)`, guarded; refused, as `completion` (an async fallback awaited, an async
        stream of chunks for `stream=True`)."""
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
        options = kwargs.get("stream_options")
        asked_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        shaped = None if chosen is None else _InLiteLLMShapes(chosen, request.model, stream, asked_usage)

        def target(reservation: Reservation, args: tuple[Any, ...], kw: dict[str, Any]) -> Io[Any]:
            return Io(create, create, (), send)

        def finish(
            calls: CallPath,
            reservation: Reservation,
            result: Any,
            _shaped: Fallback | None,
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
            if isinstance(chosen, Cached):
                chosen.remember(calls.cache, self.feature, reservation.decision.labels, args, kw, result)
            return result, (micros, None if usage is None else usage.total_tokens)

        return invoke(g.calls, self.feature, labels, (request.usd, request.tokens), shaped, target, finish, (), kwargs)


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
    `costguard.integrations.openai.guard`: callables get the request's keyword arguments. A refused call
    answers as LiteLLM would: a `ModelResponse` whose message is the fallback's text (a response of the
    fallback's own, as it is), or for `stream=True` its chunks; `reply._hidden_params["costguard_blocked"]`
    (on every chunk of a stream) is the refusal's `Decision`. A fallback that raises, or none, raises `Blocked`.
    """
    return GuardedLiteLLM(feature, guard=guard, labels=labels, fallback=fallback, estimate=estimate, cost=cost)
