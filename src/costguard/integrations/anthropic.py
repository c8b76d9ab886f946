"""Guard an Anthropic client: `messages.create`, sync, async and streamed.

The `anthropic` package is never imported here; anything shaped like `Anthropic` / `AsyncAnthropic` works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costguard.integrations._request import MESSAGES
from costguard.integrations._wrap import REWRAP, ClientT, GuardOptions, Routes, wrap

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["guard"]

ROUTES: Routes = {
    "messages": {"create": MESSAGES},
    "with_options": REWRAP,
    "copy": REWRAP,
}


def guard(client: ClientT, feature: str, **options: Unpack[GuardOptions]) -> ClientT:
    """An `Anthropic` / `AsyncAnthropic` client whose `messages.create` is guarded as `feature`; every other
    attribute is the client's own.

    Each call reserves the prompt's tokens (`system` + `messages` + `tools`) plus `max_tokens` at the
    model's price, and commits the price of the response's `usage` (cache reads and writes included).
    `stream=True` returns a wrapped stream that commits when it ends. `guard`, `labels`, `fallback` and
    `estimate` work as in `costguard.integrations.openai.guard`.
    """
    return wrap(client, feature, ROUTES, **options)
