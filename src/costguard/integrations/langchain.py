"""LangChain: every chat model or LLM call of a model, chain or agent is reserved, committed and released.

```python
from costguard.integrations.langchain import CostGuardCallback, guard

# Counting: every model call inside the chain or agent; a blocked one raises `Blocked` out of invoke.
chain.invoke(question, config={"callbacks": [CostGuardCallback("support_agent")]})

# The fallback as the model's answer when blocked: a model to put anywhere a chat model goes.
model = guard(ChatOpenAI(model="gpt-4o-mini", max_tokens=300), "support_agent", fallback="We'll email you.")
```

`CostGuardCallback` reserves on `on_chat_model_start` / `on_llm_start` (the prompt's tokens plus the model's
`max_tokens` at costguard's price; without a cap, the feature's `estimate_usd`), commits the price of the
response's usage (`AIMessage.usage_metadata`, else `llm_output["token_usage"]`; a completion model's batch
sent as one request, on its first prompt's run) on `on_llm_end` and releases on `on_llm_error`;
reservations are keyed by LangChain's `run_id`. A callback can't replace a model's answer, so
`guard(model, ...)` adds the handler to the model and a fallback for `Blocked` (`model.with_fallbacks`; a
completion model's fallback answers a string): `bind_tools` keeps both, so agents get the fallback message
as the model's last answer. `langchain-core` is imported here only: `pip install "costguard-ai[langchain]"`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.language_models import BaseLLM
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
    from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
    from langchain_core.runnables.config import get_callback_manager_for_config
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        'costguard.integrations.langchain needs langchain-core: pip install "costguard-ai[langchain]"'
    ) from exc

from costguard import current as _ctx
from costguard.errors import Blocked
from costguard.fallback import Cached, Fallback, as_fallback
from costguard.integrations._lc_batches import Batches
from costguard.steps import run
from costguard.usage import TokenUsage, _text_of, count_tokens, usage_from

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["CostGuardCallback", "guard"]

log = logging.getLogger("costguard")

LabelsSpec = Mapping[str, object] | Callable[[Mapping[str, Any]], Mapping[str, object]] | None
# Where chat models put their output cap in `invocation_params` (OpenAI, Anthropic, Google, legacy LLMs).
_CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "max_tokens_to_sample", "num_predict")
_MODEL_KEYS = ("model", "model_name", "model_id")
_PROVIDERS = frozenset({"openai", "anthropic", "azure", "google", "groq", "mistral", "deepseek", "x-ai"})


class _QuietRefusals(logging.Filter):
    """LangChain logs a warning for every exception a callback raises before passing it on; a refused call
    is an expected decision (costguard audits it), not a broken handler: those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        ours = len(args) == 3 and args[0] == CostGuardCallback.__name__
        return not (ours and str(args[2]).startswith(("BudgetExceeded(", "KillSwitchActive(")))


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietRefusals())


@dataclass
class _Pending:
    reservation: Reservation
    model: str | None
    provider: str | None
    batch: int = 1  # a completion model's prompts sent in one request with this one (`_lc_batches`)


def _settle_other(reservation: Reservation, counted: bool) -> None:
    """Another prompt of a batch: $0 when the batch's first run reported the request's usage, else its
    estimate."""
    try:
        run(reservation.commit_steps(0, 0) if counted else reservation.commit_steps())
    except Exception:  # the call succeeded: a failed commit is logged (and spooled), never raised into it
        log.exception("costguard: committing a LangChain model call failed")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class CostGuardCallback(BaseCallbackHandler):
    """A LangChain callback handler that guards every model call it sees as `feature`.

    `guard`: default, the configured one (looked up per call). `labels`: a mapping, or a callable over the
    run's `metadata`, merged with `costguard.context(...)`. `estimate`: USD for every call (default: from the
    prompt and the model's `max_tokens`, else the feature's `estimate_usd`). A refused call raises `Blocked`
    from `invoke`; `guard(model, ...)` turns it into the fallback's answer.
    """

    raise_error = True  # a refused call must stop the model call, not just log
    run_inline = False  # async runs: store I/O in LangChain's executor, never on the event loop

    def __init__(
        self,
        feature: str,
        *,
        guard: Guard | None = None,
        labels: LabelsSpec = None,
        estimate: float | Decimal | None = None,
        fallback_kind: str | None = None,
    ) -> None:
        if not isinstance(feature, str) or not feature:
            raise ValueError("CostGuardCallback needs a feature name, e.g. CostGuardCallback('support_agent')")
        if labels is not None and not callable(labels) and not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a mapping or a callable over the run's metadata, got {type(labels)}")
        self.feature = feature
        self.guard = guard
        self.labels = labels
        self.estimate = estimate
        self.fallback_kind = fallback_kind
        self._pending: dict[UUID, _Pending] = {}
        self._blocked: dict[UUID | None, list[Blocked]] = {}
        self._lock = threading.Lock()
        self._batches = Batches(_settle_other)

    def resolve(self) -> Guard:
        """The guard to use now (the configured default unless one was given)."""
        if self.guard is not None:
            return self.guard
        from costguard.defaults import default_guard

        return default_guard()

    # ----------------------------------------------------------------- start: reserve
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve the call's estimate (raises `Blocked` when it doesn't fit)."""
        text = _text_of([{"content": m.content} for batch in messages for m in batch])
        self._start(run_id, parent_run_id, text, kwargs.get("invocation_params") or {}, metadata or {})

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve a completion model's estimate (raises `Blocked` when it doesn't fit)."""
        params = kwargs.get("invocation_params") or {}
        batch = _count(kwargs.get("batch_size")) or 1
        self._start(run_id, parent_run_id, " ".join(prompts), params, metadata or {}, batch=batch)

    def _start(
        self,
        run_id: UUID,
        parent: UUID | None,
        text: str,
        params: Mapping[str, Any],
        metadata: Mapping[str, Any],
        *,
        batch: int = 1,
    ) -> None:
        g = self.resolve()
        model = next((params[k] for k in _MODEL_KEYS if isinstance(params.get(k), str)), None)
        model = model or metadata.get("ls_model_name")
        provider = metadata.get("ls_provider") if metadata.get("ls_provider") in _PROVIDERS else None
        provider = "openai" if provider == "azure" else provider
        if params.get("tools"):  # tool schemas are input tokens too
            text += " " + json.dumps(params["tools"], default=str, sort_keys=True)
        cap = next((_count(params.get(k)) for k in _CAP_KEYS if _count(params.get(k)) is not None), None)
        usd: Decimal | float | None = self.estimate
        tokens: int | None = None
        if cap is not None:
            cap *= _count(params.get("n")) or 1
            tokens_in = count_tokens(text, model)
            tokens = tokens_in + cap
            if usd is None and model is not None:
                micros = g.pricing.estimate(model, input_tokens=tokens_in, max_output_tokens=cap, provider=provider)
                usd = None if micros is None else Decimal(micros).scaleb(-6)
        spec = self.labels
        labels = dict(spec(metadata) if callable(spec) else (spec or {}))
        try:
            reservation = run(g.calls.reserve(self.feature, labels, usd, tokens, self.fallback_kind))
        except Blocked as blocked:
            with self._lock:
                self._blocked.setdefault(parent, []).append(blocked)
            raise
        with self._lock:
            self._pending[run_id] = _Pending(reservation, model, provider, batch)

    # ----------------------------------------------------------------- end: commit or release
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Commit the price of the reported usage (none reported: the estimate stands)."""
        pending = self._take(run_id)
        if pending is None:
            return
        reported = (response.llm_output or {}).get("token_usage")
        if pending.batch > 1 and reported == {}:  # another prompt of a batch: as its first run says
            self._batches.other(pending.reservation)
            return
        try:
            usage = _usage(response, pending)
            micros = None if usage is None else pending.reservation.settler.pricing.micros(usage)
            run(pending.reservation.commit_steps(micros, None if usage is None else usage.total_tokens))
        except Exception:  # the call succeeded: a failed commit is logged (and spooled), never raised into it
            log.exception("costguard: committing a LangChain model call failed")
        if pending.batch > 1:
            self._batches.first(pending.batch, bool(reported))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Release the reservation (`on_call_error: keep` keeps it); a stream cut after output began keeps it."""
        pending = self._take(run_id)
        if pending is None:
            return
        # A stream that broke after output began hands over the merged chunks (error metadata alone is
        # a plain ChatGeneration): the call ran, its estimate stands.
        partial = kwargs.get("response")
        began = partial is not None and any(
            isinstance(gen, (ChatGenerationChunk, GenerationChunk)) for batch in partial.generations for gen in batch
        )
        try:
            run(pending.reservation.commit_steps() if began else pending.reservation.failed_steps())
        except Exception:
            log.exception("costguard: settling a failed LangChain model call failed")

    def _take(self, run_id: UUID) -> _Pending | None:
        with self._lock:
            return self._pending.pop(run_id, None)

    def take_blocked(self, parent: UUID | None) -> Blocked | None:
        """The refusal of a model call made under `parent` (the run a fallback replaces), once."""
        with self._lock:
            found = self._blocked.get(parent) or next((v for v in self._blocked.values() if v), None)
            if not found:
                return None
            blocked = found.pop(0)
            for key in [k for k, v in self._blocked.items() if not v]:
                del self._blocked[key]
            return blocked


def _usage(response: LLMResult, pending: _Pending) -> TokenUsage | None:
    """The call's usage: the first generation's `usage_metadata` (n > 1 candidates share one), else
    `llm_output["token_usage"]` in the vendor's shape."""
    first = response.generations[0][0] if response.generations and response.generations[0] else None
    message = getattr(first, "message", None)
    meta = getattr(message, "usage_metadata", None)
    info = getattr(message, "response_metadata", None) or {}
    model = info.get("model_name") or info.get("model") or pending.model
    if meta:
        details = meta.get("input_token_details") or {}
        return TokenUsage(
            model,
            pending.provider,
            input_tokens=meta.get("input_tokens", 0),
            output_tokens=meta.get("output_tokens", 0),
            cache_read_tokens=details.get("cache_read") or 0,
            cache_write_tokens=details.get("cache_creation") or 0,
        )
    output = response.llm_output or {}
    model = output.get("model_name") or output.get("model") or model
    raw = output.get("token_usage") or output.get("usage")
    return usage_from(raw, model, pending.provider or "openai") if raw else None


class _FallbackModel(Runnable[Any, Any]):
    """Answers in place of a refused model call: the fallback's value as the model answers, an `AIMessage`
    for a chat model, a string for a completion model (`text`)."""

    def __init__(self, handler: CostGuardCallback, fallback: Fallback | None, *, text: bool = False) -> None:
        self.handler = handler
        self.fallback = fallback
        self.text = text

    def _answer(self, value: Any) -> Any:
        if self.text:
            return value if isinstance(value, str) else json.dumps(value, default=str)
        return _message(value)

    def _refusal(self, config: RunnableConfig | None) -> tuple[Blocked, Fallback]:
        parent = getattr(get_callback_manager_for_config(ensure_config(config)), "parent_run_id", None)
        blocked = self.handler.take_blocked(parent)
        if blocked is None:  # pragma: no cover - only reached when a refusal was not this handler's
            raise RuntimeError("costguard: a fallback was asked for but no call was refused")
        chosen = self.fallback or self.handler.resolve().feature(self.handler.feature).fallback
        if chosen is None:
            raise blocked
        return blocked, chosen

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The fallback's answer."""
        blocked, chosen = self._refusal(config)
        with _ctx._scoped(blocked.decision, None):
            value = chosen.serve(self.handler.resolve().calls.cache, self.handler.feature, blocked, (input,), {})
        return self._answer(value)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The fallback's answer (an async callable fallback is awaited)."""
        blocked, chosen = self._refusal(config)
        with _ctx._scoped(blocked.decision, None):
            value = await chosen.aserve(self.handler.resolve().calls.cache, self.handler.feature, blocked, (input,), {})
        return self._answer(value)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """The fallback's answer as one chunk."""
        answer = self.invoke(input, config)
        yield answer if self.text else _chunk(answer)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """The fallback's answer as one chunk."""
        answer = await self.ainvoke(input, config)
        yield answer if self.text else _chunk(answer)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> _FallbackModel:
        """The fallback answers without tools: itself."""
        return self


def _message(value: Any) -> BaseMessage:
    if isinstance(value, BaseMessage):
        return value
    return AIMessage(content=value if isinstance(value, str) else json.dumps(value, default=str))


def _chunk(message: BaseMessage) -> BaseMessage:
    return AIMessageChunk(content=message.content, id=message.id)


def guard(
    model: Any,
    feature: str,
    *,
    guard: Guard | None = None,
    labels: LabelsSpec = None,
    fallback: Any = None,
    estimate: float | Decimal | None = None,
) -> Runnable[Any, Any]:
    """`model` (a LangChain chat model or LLM) guarded as `feature`: a `CostGuardCallback` on the model and,
    when a call is refused, `fallback`'s value as the model's answer (an `AIMessage`, a string for an LLM; a
    callable gets the model's input). Unset, the feature's configured fallback; with neither, `Blocked` is raised.
    `bind_tools` keeps the guard, so the result goes into chains and tool-calling agents as the model did.
    """
    chosen = as_fallback(fallback)
    if isinstance(chosen, Cached):
        raise TypeError("guard(model, ...) takes a static or callable fallback; a cached one is not supported yet")
    handler = CostGuardCallback(
        feature, guard=guard, labels=labels, estimate=estimate, fallback_kind=chosen.kind if chosen else None
    )
    # The model's own callbacks (not a `with_config` binding) survive `bind_tools` and `with_structured_output`.
    existing = model.callbacks
    if existing is None or isinstance(existing, list):
        callbacks: Any = [*(existing or []), handler]
    else:  # a callback manager
        callbacks = existing.copy()
        callbacks.add_handler(handler, inherit=False)
    guarded = model.model_copy(update={"callbacks": callbacks})
    answer = _FallbackModel(handler, chosen, text=isinstance(model, BaseLLM))
    return guarded.with_fallbacks([answer], exceptions_to_handle=(Blocked,))  # type: ignore[no-any-return]
