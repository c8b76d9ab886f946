"""What a call consumed: token usage read off responses and streams, and tokens counted in a prompt.

- `extract_usage(result)` reads OpenAI (chat completions, responses) and Anthropic (messages)
  usage from SDK objects or dicts of the same shape, duck-typed: no vendor SDK is imported.
- `UsageAccumulator` does the same for a streamed call, one chunk or event at a time.
- `count_tokens(text)` counts a prompt's tokens roughly by characters (exactly with `tiktoken` when
  installed), for estimates made before a call is sent.

`costguard.pricing` turns usage into money and re-exports these names.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TokenUsage",
    "UsageAccumulator",
    "count_tokens",
    "extract_usage",
    "usage_from",
    "usage_tokens",
]

log = logging.getLogger("costguard")


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


# The OpenAI usage shapes, tried in order: (input, output, input details, output details) field names.
_OPENAI_SHAPES = (
    ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"),  # chat completions
    ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"),  # responses API
)


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
    for input_name, output_name, input_details, output_details in _OPENAI_SHAPES:
        if _has(usage, input_name) or _has(usage, output_name):
            return TokenUsage(
                model,
                provider,
                input_tokens=_int(_get(usage, input_name)),
                output_tokens=_int(_get(usage, output_name)),
                cache_read_tokens=_int(_get(_get(usage, input_details), "cached_tokens")),
                reasoning_tokens=_int(_get(_get(usage, output_details), "reasoning_tokens")),
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


@functools.lru_cache(maxsize=64)
def _encoding(model: str) -> Any:
    """tiktoken's encoding for `model` (o200k_base for models it doesn't know), or None when tiktoken is
    not installed or can't load it: its encoding files are downloaded on first use, which fails offline
    (litellm and langchain-openai install tiktoken). Tried once per model and process, not per call."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception as exc:  # noqa: BLE001 - no network, no cache: the character estimate serves
        log.warning(
            "costguard: tiktoken could not load an encoding for %r (%s); prompts are counted at about "
            "four characters a token. Pre-seed TIKTOKEN_CACHE_DIR for exact counts.",
            model,
            type(exc).__name__,
        )
        return None


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text`: exact with `tiktoken` when it is installed and can load the model's encoding,
    otherwise about one token per four characters (rounded up), which over-estimates English slightly."""
    encoding = _encoding(model or "gpt-4o")
    if encoding is None:
        return math.ceil(len(text) / 4)
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
