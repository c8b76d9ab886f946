"""Guard an OpenAI client: `chat.completions.create` and `responses.create`, sync, async and streamed.

The `openai` package is never imported here; anything shaped like `OpenAI` / `AsyncOpenAI` works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costguard.integrations._request import CHAT_COMPLETIONS, RESPONSES
from costguard.integrations._wrap import REWRAP, ClientT, GuardOptions, Routes, wrap

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["guard"]

ROUTES: Routes = {
    "chat": {"completions": {"create": CHAT_COMPLETIONS}},
    "responses": {"create": RESPONSES},
    "with_options": REWRAP,
    "copy": REWRAP,
}


def guard(client: ClientT, feature: str, **options: Unpack[GuardOptions]) -> ClientT:
    """An `OpenAI` / `AsyncOpenAI` client whose `chat.completions.create` and `responses.create` are guarded
    as `feature`; every other attribute is the client's own.

    Each call reserves an estimate read from the request (prompt tokens plus `max_completion_tokens` /
    `max_tokens` / `max_output_tokens` at the model's price; without an output cap, the feature's
    `estimate_usd`) and commits the price of the response's `usage`. `stream=True` returns a wrapped
    stream that commits when it ends (chat streams get `stream_options={"include_usage": True}` unless
    you set `stream_options`). `guard`: default is the configured one. `labels`: a mapping or a callable
    over the request's keyword arguments. `fallback`: a value, a callable over the request's keyword
    arguments, or a `costguard.fallback` object; unset, the feature's configured fallback, else `Blocked` is
    raised. `estimate`: USD, a number or a callable over the request's keyword arguments.
    """
    return wrap(client, feature, ROUTES, **options)
