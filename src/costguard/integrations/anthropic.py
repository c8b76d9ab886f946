"""Guard an Anthropic client: `messages.create`, sync, async and streamed.

The `anthropic` package is never imported here; anything shaped like `Anthropic` / `AsyncAnthropic` works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from costguard.integrations._request import MESSAGES, EstimateSpec
from costguard.integrations._wrap import REWRAP, LabelsSpec, Routes, wrap

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["guard"]

ClientT = TypeVar("ClientT")

ROUTES: Routes = {
    "messages": {"create": MESSAGES},
    "with_options": REWRAP,
    "copy": REWRAP,
}


def guard(
    client: ClientT,
    feature: str,
    *,
    guard: Guard | None = None,
    labels: LabelsSpec = None,
    fallback: Any = None,
    estimate: EstimateSpec = None,
) -> ClientT:
    """An `Anthropic` / `AsyncAnthropic` client whose `messages.create` is guarded as `feature`; every other
    attribute is the client's own.

    Each call reserves the prompt's tokens (`system` + `messages` + `tools`) plus `max_tokens` at the
    model's price, and commits the price of the response's `usage` (cache reads and writes included).
    `stream=True` returns a wrapped stream that commits when it ends. `guard`, `labels`, `fallback` and
    `estimate` work as in `costguard.integrations.openai.guard`.
    """
    return wrap(client, feature, guard, labels, fallback, estimate, ROUTES)
