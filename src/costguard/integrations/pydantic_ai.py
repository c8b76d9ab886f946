"""pydantic-ai: a wrapper model that guards every model request of an agent run.

```python
from pydantic_ai import Agent
from costguard.integrations.pydantic_ai import GuardedModel

model = GuardedModel("openai:gpt-4o-mini", "support_agent", fallback="Support chat is busy.")
agent = Agent(model)
with costguard.context(run="r-42", customer="acme"):
    result = await agent.run("When will my order ship?")
```

Each model request reserves the prompt's tokens plus the run's `max_tokens` setting at costguard's price
(without it, the feature's `estimate_usd`), commits the price of the response's `usage` and releases
when the request raises; a refused request is answered with the fallback as the model's text (a streamed
one, `agent.run_stream`, with a stream of that text). Every request of a run carries the labels of
`costguard.context(...)` and `labels=`, so a `run: "*"` ceiling caps a whole run.
`pip install "costguard-ai[pydantic-ai]"`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

try:
    from pydantic_ai.messages import ModelMessage, ModelResponse, ModelResponseStreamEvent, TextPart
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.models.wrapper import WrapperModel
    from pydantic_ai.settings import ModelSettings
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        'costguard.integrations.pydantic_ai needs pydantic-ai: pip install "costguard-ai[pydantic-ai]"'
    ) from exc

from costguard.errors import Blocked
from costguard.fallback import Fallback, as_fallback
from costguard.steps import arun
from costguard.usage import TokenUsage, _text_of, count_tokens

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["GuardedModel"]


class GuardedModel(WrapperModel):
    """`wrapped` (a pydantic-ai model or its name), every request guarded as `feature`.

    `guard`: default, the configured one. `labels`: added to `costguard.context(...)`'s for every request.
    `fallback`: a value (the model's text when refused), a callable over the request's messages, or a
    `costguard.fallback` object; unset, the feature's configured one, else `Blocked` is raised.
    `estimate`: USD per request (default: from the prompt and `max_tokens`).
    """

    def __init__(
        self,
        wrapped: Model | str,
        feature: str,
        *,
        guard: Guard | None = None,
        labels: Mapping[str, object] | None = None,
        fallback: Any = None,
        estimate: float | Decimal | None = None,
    ) -> None:
        if not isinstance(feature, str) or not feature:
            raise ValueError("GuardedModel needs a feature name, e.g. GuardedModel(model, 'support_agent')")
        super().__init__(wrapped)
        self.feature = feature
        self.guard = guard
        self.labels = dict(labels or {})
        self.fallback = as_fallback(fallback)
        self.estimate = estimate

    def _resolve(self) -> Guard:
        if self.guard is not None:
            return self.guard
        from costguard.defaults import default_guard

        return default_guard()

    async def _reserve(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> Reservation:
        g = self._resolve()
        cap = (settings or {}).get("max_tokens")
        usd: float | Decimal | None = self.estimate
        tokens: int | None = None
        if isinstance(cap, int) and cap > 0:
            text = _text_of([_text_of(getattr(part, "content", "")) for m in messages for part in m.parts])
            if params.function_tools:  # tool schemas are input tokens too
                text += " " + json.dumps([t.parameters_json_schema for t in params.function_tools], default=str)
            tokens_in = count_tokens(text, self.model_name)
            tokens = tokens_in + cap
            if usd is None:
                micros = g.pricing.estimate(
                    self.model_name, input_tokens=tokens_in, max_output_tokens=cap, provider=self.system
                )
                usd = None if micros is None else Decimal(micros).scaleb(-6)
        fallback = self._fallback(g)
        kind = fallback.kind if fallback is not None else None
        return await arun(g.calls.reserve(self.feature, self.labels, usd, tokens, kind))

    def _fallback(self, g: Guard) -> Fallback | None:
        return self.fallback if self.fallback is not None else g.feature(self.feature).fallback

    async def _settle(self, reservation: Reservation, response: ModelResponse) -> None:
        usage = response.usage
        counted = TokenUsage(
            response.model_name or self.model_name,
            response.provider_name or self.system,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        reported = usage.input_tokens or usage.output_tokens
        micros = reservation.settler.pricing.micros(counted) if reported else None
        await arun(reservation.commit_steps(micros, counted.total_tokens if reported else None))

    async def _admit(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> Reservation | str:
        """The request's reservation or, refused, the fallback's text (no fallback: `Blocked` is raised)."""
        try:
            return await self._reserve(messages, settings, params)
        except Blocked as blocked:
            g = self._resolve()
            fallback = self._fallback(g)
            if fallback is None:
                raise
            value = await fallback.aserve(g.calls.cache, self.feature, blocked, (messages,), {})
        return value if isinstance(value, str) else json.dumps(value, default=str)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """One model request: reserved, sent, committed from its usage; refused, the fallback's text."""
        admitted = await self._admit(messages, model_settings, model_request_parameters)
        if isinstance(admitted, str):
            return ModelResponse(parts=[TextPart(admitted)], model_name=self.model_name)
        try:
            response = await super().request(messages, model_settings, model_request_parameters)
        except BaseException:
            await arun(admitted.failed_steps())
            raise
        await self._settle(admitted, response)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: Any = None,
    ) -> AsyncIterator[StreamedResponse]:
        """A streamed request: reserved before it opens, committed from its usage when it closes; refused, the
        fallback's text as the stream."""
        admitted = await self._admit(messages, model_settings, model_request_parameters)
        if isinstance(admitted, str):
            yield _Answered(model_request_parameters, admitted, self.model_name)
            return
        try:
            async with super().request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                yield stream
        except BaseException:
            await arun(admitted.failed_steps())
            raise
        await self._settle(admitted, stream.get())


class _Answered(StreamedResponse):
    """A refused streamed request's answer: the fallback's text as one delta through the parts manager, as
    pydantic-ai's `TestModel` and `FunctionModel` stream theirs. Nothing was sent: no usage."""

    def __init__(self, params: ModelRequestParameters, text: str, model_name: str) -> None:
        super().__init__(model_request_parameters=params)
        self._text = text
        self._model_name = model_name
        self._timestamp = datetime.now(timezone.utc)

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        events: Any = self._parts_manager.handle_text_delta(vendor_part_id="content", content=self._text)
        if not isinstance(events, Iterator):  # pydantic-ai before ~1.60: one event, or None
            events = () if events is None else (events,)
        for event in events:
            yield event

    async def close_stream(self) -> None:
        """Nothing to close."""

    @property
    def model_name(self) -> str:
        """The wrapped model's name."""
        return self._model_name

    @property
    def provider_name(self) -> str | None:
        """None: no provider answered."""
        return None

    @property
    def provider_url(self) -> str | None:
        """None: no provider answered."""
        return None

    @property
    def timestamp(self) -> datetime:
        """When the answer was made."""
        return self._timestamp
