"""What a vendor request will cost at most, read from its keyword arguments before it is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from costguard.model import Money
from costguard.pricing import Pricing, _text_of, count_tokens

__all__ = [
    "CHAT_COMPLETIONS",
    "MESSAGES",
    "RESPONSES",
    "Endpoint",
    "EstimateSpec",
    "RequestEstimate",
    "estimate_request",
    "given",
    "max_output_tokens",
]

EstimateSpec = Money | Callable[..., Money | None] | None
Provider = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class Endpoint:
    """One guarded SDK method: where its prompt and its output cap live in the request."""

    name: str
    provider: Provider
    prompt_keys: tuple[str, ...]
    max_output_keys: tuple[str, ...]
    # OpenAI chat streams report usage only when asked (`stream_options={"include_usage": True}`).
    asks_for_usage: bool = False
    # OpenAI chat `n`: that many completions, each up to the output cap.
    counts_choices: bool = False
    # The SDK's response class (module, name): a cached fallback may rebuild it from JSON.
    response_type: tuple[str, str] = ("", "")


def given(value: Any) -> Any:
    """`value`, or None for the SDKs' "not given" sentinels (`NOT_GIVEN`, `omit`)."""
    if value is None or type(value).__name__ in ("NotGiven", "Omit"):
        return None
    return value


def _count(value: Any) -> int | None:
    value = given(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class RequestEstimate:
    """The reservation for one request: USD (None: the feature's own estimate) and tokens (None: unknown)."""

    usd: Money | None
    tokens: int | None
    max_output_tokens: int | None


def _prompt(endpoint: Endpoint, kwargs: Mapping[str, Any]) -> str:
    parts = [_text_of(given(kwargs.get(key))) for key in endpoint.prompt_keys]
    tools = given(kwargs.get("tools"))
    if tools:
        # Tool schemas are sent as input tokens too.
        parts.append(json.dumps(tools, default=str, sort_keys=True))
    return " ".join(part for part in parts if part)


def max_output_tokens(endpoint: Endpoint, kwargs: Mapping[str, Any]) -> int | None:
    """The most output the request can produce (all choices), if it says."""
    for key in endpoint.max_output_keys:
        cap = _count(kwargs.get(key))
        if cap is not None:
            choices = _count(kwargs.get("n")) if endpoint.counts_choices else None
            return cap * max(1, choices or 1)
    return None


def estimate_request(
    pricing: Pricing, endpoint: Endpoint, kwargs: Mapping[str, Any], explicit: EstimateSpec
) -> RequestEstimate:
    """The request's prompt tokens (roughly, or exactly with tiktoken) plus its output cap, priced.

    An explicit `estimate` (a number or a callable over the request's keyword arguments) wins for USD.
    Without an output cap or a known price the USD estimate is None: the feature's configured one applies.
    """
    model = given(kwargs.get("model"))
    model = model if isinstance(model, str) and model else None
    cap = max_output_tokens(endpoint, kwargs)
    usd: Money | None = explicit(**kwargs) if callable(explicit) else explicit
    if cap is None:
        return RequestEstimate(usd, None, None)
    tokens_in = count_tokens(_prompt(endpoint, kwargs), model)
    if usd is None and model is not None:
        micros = pricing.estimate(model, input_tokens=tokens_in, max_output_tokens=cap, provider=endpoint.provider)
        usd = None if micros is None else Decimal(micros).scaleb(-6)
    return RequestEstimate(usd, tokens_in + cap, cap)


CHAT_COMPLETIONS = Endpoint(
    "chat.completions.create",
    "openai",
    prompt_keys=("messages",),
    max_output_keys=("max_completion_tokens", "max_tokens"),
    asks_for_usage=True,
    counts_choices=True,
    response_type=("openai.types.chat", "ChatCompletion"),
)
RESPONSES = Endpoint(
    "responses.create",
    "openai",
    prompt_keys=("instructions", "input"),
    max_output_keys=("max_output_tokens",),
    response_type=("openai.types.responses", "Response"),
)
MESSAGES = Endpoint(
    "messages.create",
    "anthropic",
    prompt_keys=("system", "messages"),
    max_output_keys=("max_tokens",),
    response_type=("anthropic.types", "Message"),
)
