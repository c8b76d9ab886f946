"""What a proxied request may cost before it is forwarded, and what it did cost from the answer.

OpenAI-compatible and Anthropic requests are estimated as the SDK integrations estimate them (the
prompt's tokens plus `max_tokens` of output, priced) and charged from the `usage` the vendor reports;
generic upstreams cost a fixed price per call or an amount read from the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from costguard._config.proxy import AmountFrom, UpstreamConfig
from costguard.integrations._request import CHAT_COMPLETIONS, MESSAGES, RESPONSES, Endpoint, estimate_request
from costguard.model import Money
from costguard.pricing import Pricing
from costguard.proxy.requests import DuplicateKey, parse_json
from costguard.usage import usage_from

__all__ = ["BadRequest", "Estimate", "Prepared", "actual_cost", "bounded", "endpoint_for", "estimate", "prepare"]

_ENDPOINTS = {"chat/completions": CHAT_COMPLETIONS, "responses": RESPONSES, "messages": MESSAGES}


class BadRequest(ValueError):
    """The request can't be priced (a generic upstream's amount is missing or not a number, a model
    costguard has no price for)."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Estimate:
    """The reservation for one request, and what the stream meter needs to know about it."""

    usd: Money | None  # None: the feature's estimate_usd
    tokens: int | None
    max_output_tokens: int | None
    endpoint: Endpoint | None
    model: str | None
    actual_from: AmountFrom | None = None  # a generic upstream's cost in its answer


def endpoint_for(upstream: UpstreamConfig, path: str) -> Endpoint | None:
    """The priced endpoint a path names (`v1/chat/completions`, `v1/messages`…), for LLM upstreams."""
    if upstream.kind == "generic":
        return None
    endpoint = _ENDPOINTS.get(path.strip("/").removeprefix("v1/"))
    if endpoint is None or endpoint.provider != upstream.kind:
        return None
    return endpoint


def bounded(upstream: UpstreamConfig, endpoint: Endpoint | None, body: Any) -> dict[str, Any] | None:
    """The body with the upstream's `max_output_tokens` as its output cap, when it names none (None: it
    names one, or the upstream adds none). Without a cap a request may run to the model's limit, and no
    reservation would bound what it costs."""
    if endpoint is None or upstream.max_output_tokens is None or not isinstance(body, dict):
        return None
    if any(body.get(key) is not None for key in endpoint.max_output_keys):
        return None  # a cap that is not a count is priced as none and left to the vendor to refuse
    return {**body, endpoint.max_output_keys[0]: upstream.max_output_tokens}


def _field(body: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(body, dict) or part not in body:
            return None
        body = body[part]
    return body


def estimate(
    upstream: UpstreamConfig, path: str, body: Any, raw: bytes, content_type: str, pricing: Pricing
) -> Estimate:
    """The most this request can cost, from its body (`body`: the parsed JSON, or None)."""
    fallback: Money | None = None if upstream.estimate_usd is None else Decimal(upstream.estimate_usd).scaleb(-6)
    if upstream.kind == "generic":
        if upstream.price_usd is not None:
            return Estimate(upstream.price_usd, None, None, None, None, upstream.actual)
        assert upstream.amount is not None
        if content_type.startswith("application/x-www-form-urlencoded"):
            values = parse_qs(raw.decode("utf-8", "replace"))
            given = values.get(upstream.amount.json_path, [None])
            if len(given) > 1:  # which one the vendor reads is its business: never guess the price
                raise BadRequest(f"`{upstream.amount.json_path}` is given {len(given)} times; send it once")
            value: Any = given[0]
        else:
            value = _field(body, upstream.amount.json_path)
        try:
            amount = Decimal(str(value)) * upstream.amount.scale
        except (InvalidOperation, ValueError):
            amount = Decimal("NaN")
        if value is None or isinstance(value, bool) or not amount.is_finite() or amount < 0:
            raise BadRequest(f"this request needs a numeric `{upstream.amount.json_path}` (it is what it costs)")
        return Estimate(amount, None, None, None, None, upstream.actual)
    endpoint = endpoint_for(upstream, path)
    if endpoint is None or not isinstance(body, dict):
        return Estimate(fallback, None, None, None, None)
    found = estimate_request(pricing, endpoint, body, None)
    model = body.get("model") if isinstance(body.get("model"), str) else None
    usd = found.usd if found.usd is not None else fallback
    if usd is None and model is not None and found.max_output_tokens is not None:
        # It would be charged a guess and its usage couldn't be priced after: the cap would mean nothing.
        raise BadRequest(
            f"costguard has no price for model {model!r}: add it under pricing.models in the config "
            "(or give this upstream an estimate_usd to charge a flat price per call)",
            "unpriced_model",
        )
    return Estimate(usd, found.tokens, found.max_output_tokens, endpoint, model)


@dataclass(frozen=True)
class Prepared:
    """A request ready to reserve and forward: its body as sent on (an output cap or a usage report
    added when it lacked them), priced."""

    raw: bytes
    body: Any
    estimate: Estimate
    streamed: bool  # asked for a stream
    hide_usage: bool  # the usage chunk is the proxy's: not passed on to the agent


def prepare(upstream: UpstreamConfig, path: str, raw: bytes, content_type: str, pricing: Pricing) -> Prepared:
    """Parse, bound and price one request (CPU work: run it off the event loop for a large body)."""
    body: Any = None
    if raw and "json" in content_type:
        try:
            body = parse_json(raw)
        except DuplicateKey as exc:
            raise BadRequest(str(exc)) from None
    if upstream.kind != "generic" and not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (content-type json)")
    endpoint = endpoint_for(upstream, path)
    changed = bounded(upstream, endpoint, body)
    if changed is not None:
        body = changed
    est = estimate(upstream, path, body, raw, content_type, pricing)
    streamed = hide_usage = False
    if endpoint is not None and isinstance(body, dict) and body.get("stream") is True:
        streamed = True
        options = body.get("stream_options") or {}
        if endpoint.asks_for_usage and isinstance(options, dict) and not options.get("include_usage"):
            # OpenAI chat streams report usage only when asked; the agent didn't, so it doesn't see it.
            body = changed = {**body, "stream_options": {**options, "include_usage": True}}
            hide_usage = True
    if changed is not None:
        raw = json.dumps(body).encode()
    return Prepared(raw, body, est, streamed, hide_usage)


def actual_cost(est: Estimate, content: bytes, pricing: Pricing) -> tuple[Decimal | None, int | None]:
    """USD and tokens from a JSON answer's `usage`, or a generic upstream's `actual` field (None: not reported,
    the estimate stands)."""
    if est.endpoint is None and est.actual_from is None:
        return None, None
    try:
        answer = json.loads(content)
    except ValueError:
        return None, None
    if not isinstance(answer, dict):
        return None, None
    if est.endpoint is None:
        assert est.actual_from is not None
        value = _field(answer, est.actual_from.json_path)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return None, None
        try:
            usd = Decimal(str(value)) * est.actual_from.scale
        except (InvalidOperation, ValueError):
            return None, None
        return (usd if usd.is_finite() and usd >= 0 else None), None
    model = answer.get("model") if isinstance(answer.get("model"), str) else est.model
    usage = usage_from(answer.get("usage"), model, est.endpoint.provider)
    if usage is None:
        return None, None
    micros = pricing.micros(usage)
    return (None if micros is None else Decimal(micros).scaleb(-6)), usage.total_tokens
