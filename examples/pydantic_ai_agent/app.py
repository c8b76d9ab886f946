"""A pydantic-ai agent behind costguard: every model request of a run is reserved, committed from the
usage the model reports, and counted against the run's own ceiling (`run: "*"` in costguard.yaml); when a
run's budget is spent, the fallback is the model's answer.

With no `OPENAI_API_KEY` pydantic-ai's `TestModel` answers (it calls every tool once, then answers, and
reports usage; priced in costguard.yaml); with one, `openai:gpt-4o-mini` is called. Run from this folder:
`python app.py` (see README.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

import costguard
from costguard.integrations.pydantic_ai import GuardedModel

HERE = Path(__file__).resolve().parent
TICKETS = {"r-1": "Order #4417 has not arrived.", "r-2": "Order #4418 arrived broken."}


def build_agent(g: costguard.Guard | None = None) -> Agent[None, str]:
    """The agent; its model is `GuardedModel(model, "triage_agent")`."""
    model: Any = "openai:gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else TestModel()
    agent = Agent(GuardedModel(model, "triage_agent", guard=g), model_settings={"max_tokens": 40})

    @agent.tool_plain
    def order_status(order_id: str) -> str:
        """Where an order is."""
        return f"order {order_id}: shipped Monday, with the carrier"

    @agent.tool_plain
    def refund_policy() -> str:
        """The refund policy."""
        return "Refunds within 30 days, to the original payment method."

    return agent


def main(g: costguard.Guard | None = None) -> dict[str, str]:
    """Run the agent once per ticket, each as its own run."""
    g = g or costguard.default_guard()
    agent = build_agent(g)
    answers = {}
    for run_id, ticket in TICKETS.items():
        with costguard.context(run=run_id):
            answers[run_id] = agent.run_sync(ticket).output
        rows = {tuple(r.labels.items()): r for r in g.status(run=run_id).ceilings if "run" in r.labels}
        (row,) = rows.values()
        print(f"{run_id}: {answers[run_id][:70]!r}  (spent ${row.spent:.6f} of ${row.limit:.6f})")
    return answers


if __name__ == "__main__":
    os.chdir(HERE)
    main()
