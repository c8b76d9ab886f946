"""LiteLLM calls behind costguard: each `completion` reserves the prompt plus `max_tokens` at the model's
price, commits the price of the usage LiteLLM reports, and gets the fallback once the ceiling is reached.

With no `OPENAI_API_KEY` LiteLLM's own `mock_response` answers (no network; LiteLLM reports usage for it);
with one, the model is called. Run from this folder: `python app.py` (see README.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM's price map from the package

import costguard
from costguard.integrations import litellm as cg_litellm

HERE = Path(__file__).resolve().parent
MODEL = "openai/gpt-4o-mini"
TICKETS = [
    "The export button does nothing on Safari 17.",
    "I was charged twice for the March invoice.",
    "Can you add SAML single sign-on to the Team plan?",
    "The API returns 429 after 50 requests a minute.",
    "Please delete my account and all my data.",
]


def summarize(llm: cg_litellm.GuardedLiteLLM, ticket: str) -> str:
    """One line for the support queue."""
    options: dict[str, Any] = {"max_tokens": 60}
    if not os.environ.get("OPENAI_API_KEY"):
        options["mock_response"] = f"[summary of: {ticket[:30]}…]"
    messages = [{"role": "system", "content": "Summarize the ticket in one line."}, {"role": "user", "content": ticket}]
    reply = llm.completion(MODEL, messages, **options)  # refused: the fallback's text, in the same shape
    return str(reply.choices[0].message.content)


def main(g: costguard.Guard | None = None) -> list[str]:
    """Summarize every ticket; print each summary and the spend after it."""
    g = g or costguard.default_guard()
    llm = cg_litellm.guard("summaries", guard=g)
    summaries = []
    for ticket in TICKETS:
        summary = summarize(llm, ticket)
        (row,) = g.status(feature="summaries").ceilings
        print(f"{summary:<48} (spent ${row.spent:.6f} of ${row.limit:.6f})")
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    os.chdir(HERE)  # ./costguard.yaml
    main()
