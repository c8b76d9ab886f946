"""A LangChain support chain behind costguard: every model call is reserved, committed from the model's
reported usage, and answered by the fallback once the feature's daily ceiling is reached.

With no `OPENAI_API_KEY` a fake chat model answers (LangChain's `GenericFakeChatModel`, with realistic
`usage_metadata`); with one (and `pip install langchain-openai`) `ChatOpenAI` is called. Run from this
folder: `python app.py` (see README.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import costguard
from costguard.integrations.langchain import guard

HERE = Path(__file__).resolve().parent
MODEL = "gpt-4o-mini"
QUESTIONS = [
    "How do refunds work?",
    "When are invoices sent?",
    "Do you support single sign-on?",
    "Can I export a table to CSV?",
    "What are the API rate limits?",
    "How do I delete my account?",
]


def fake_replies() -> Iterator[AIMessage]:
    """What gpt-4o-mini would answer, with the usage it would report (about 120 tokens in, 60 out)."""
    n = 0
    while True:
        n += 1
        yield AIMessage(
            content=f"[simulated answer #{n}]",
            usage_metadata={"input_tokens": 118 + n, "output_tokens": 57 + n, "total_tokens": 175 + 2 * n},
            response_metadata={"model_name": "gpt-4o-mini-2024-07-18"},
        )


def chat_model() -> Any:
    """`ChatOpenAI` when OPENAI_API_KEY is set, else the fake."""
    if not os.environ.get("OPENAI_API_KEY"):
        return GenericFakeChatModel(messages=fake_replies())
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise RuntimeError("OPENAI_API_KEY is set: pip install langchain-openai to call it") from None
    return ChatOpenAI(model=MODEL, max_tokens=150)


def build_chain(g: costguard.Guard | None = None) -> Any:
    """prompt | guarded model | parser: the one-liner is `guard(model, "support_answers")`."""
    system = "You are the support assistant of Example Cloud. Answer in two sentences."
    prompt = ChatPromptTemplate.from_messages([("system", system), ("human", "{question}")])
    return prompt | guard(chat_model(), "support_answers", guard=g) | StrOutputParser()


def main(g: costguard.Guard | None = None) -> list[str]:
    """Ask every question; print each answer and the spend after it."""
    g = g or costguard.default_guard()
    chain = build_chain(g)
    answers = []
    for question in QUESTIONS:
        answer = chain.invoke({"question": question})
        (row,) = g.status(feature="support_answers").ceilings
        print(f"{question:<34} -> {answer}  (spent ${row.spent:.6f} of ${row.limit:.6f})")
        answers.append(answer)
    return answers


if __name__ == "__main__":
    os.chdir(HERE)  # ./costguard.yaml
    main()
