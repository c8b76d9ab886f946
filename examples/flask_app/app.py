"""A Flask app whose two LLM endpoints sit behind costguard.

- `POST /chat`: per-customer daily ceilings on a guarded function with no fallback; a customer over their
  ceiling gets a 429 with `Retry-After` (the `CostGuard` extension's error handler).
- `GET /search?q=...`: a smaller ceiling and a cached fallback — past the ceiling a query asked before gets
  its cached answer, a new one gets plain keyword matching instead of a model call.
- `GET /budget`: this customer's spend against every ceiling; `GET /health`: never blocked.

With no `OPENAI_API_KEY` a fake model answers with realistic OpenAI-shaped `usage`; with one (and
`pip install openai`) the real API is called. Either way the cost is computed from `usage` and the per-token
prices below. Run from this folder: `python app.py` (see README.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from functools import cache
from pathlib import Path
from typing import Any

from flask import Flask, request

import costguard
from costguard.flask import CostGuard

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o")
# USD per million tokens: (input, output). A model not listed is priced as the dearest one.
PRICES = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}
SYSTEM = "You are the support assistant of Example Cloud. Answer in at most three sentences."
DOCS = {
    "refunds": "Refunds are issued to the original payment method within 5 business days.",
    "invoices": "Invoices are emailed on the first day of each month and listed under Billing.",
    "sso": "Single sign-on supports SAML 2.0 and OpenID Connect on the Business plan.",
    "exports": "Any table can be exported to CSV or Parquet from its menu.",
    "rate limits": "The API allows 600 requests per minute per workspace.",
}


def price(response: dict[str, Any]) -> float:
    """USD for an OpenAI chat completion, from its `model` and `usage`."""
    rate_in, rate_out = PRICES.get(response["model"], max(PRICES.values()))
    usage = response["usage"]
    return (usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1_000_000


def fake_completion(model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """What the API would return, without calling it: token counts follow the prompt's length (about 4
    characters a token, plus the overhead of a real app's instructions and history)."""
    prompt = " ".join(m["content"] for m in messages)
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    prompt_tokens = 350 + len(prompt) // 4 + 4 * len(messages)
    completion_tokens = 180 + int(digest[:4], 16) % 200
    return {
        "id": f"chatcmpl-fake-{digest[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"[simulated {model} answer to: {messages[-1]['content']}]",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@cache
def openai_client() -> Any:
    """The real API's client, made once."""
    try:
        from openai import OpenAI
    except ImportError:
        raise RuntimeError(
            "OPENAI_API_KEY is set but the openai package is not installed: pip install openai"
        ) from None
    return OpenAI()


def complete(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A chat completion as a dict: the OpenAI API when OPENAI_API_KEY is set, else the fake."""
    if not os.environ.get("OPENAI_API_KEY"):
        return fake_completion(MODEL, messages)
    response = openai_client().chat.completions.create(model=MODEL, messages=messages, max_tokens=300)
    result: dict[str, Any] = response.model_dump()
    return result


def keyword_search(query: str) -> dict[str, Any]:
    """The non-AI alternative: documents whose title or text mention a word of the query."""
    words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 2}
    hits = [title for title, text in DOCS.items() if words & set(re.findall(r"\w+", f"{title} {text}".lower()))]
    return {"answer": None, "documents": hits, "source": "keyword", "generated_at": time.time()}


@costguard.with_kill_switch("chat")
def chat_reply(message: str) -> costguard.Priced[dict[str, Any]]:
    """One chat turn; no fallback, so a full ceiling raises and the extension answers 429."""
    response = complete([{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}])
    cost = price(response)
    reply = {
        "reply": response["choices"][0]["message"]["content"],
        "model": response["model"],
        "usage": response["usage"],
        "cost_usd": round(cost, 6),
    }
    return costguard.Priced(reply, cost)


@costguard.with_kill_switch(
    "search",
    fallback=costguard.fallback.cached(ttl_s=3600, key=lambda query: query.strip().lower(), otherwise=keyword_search),
)
def search_answer(query: str) -> costguard.Priced[dict[str, Any]]:
    """Answer a question from the docs with the model; costguard records what the call cost."""
    context = "\n".join(f"{title}: {text}" for title, text in DOCS.items())
    response = complete(
        [
            {"role": "system", "content": f"{SYSTEM}\nUse only these documents:\n{context}"},
            {"role": "user", "content": query},
        ]
    )
    answer = {
        "answer": response["choices"][0]["message"]["content"],
        "documents": keyword_search(query)["documents"],
        "source": "llm",
        "generated_at": time.time(),
    }
    return costguard.Priced(answer, price(response))


def create_app() -> Flask:
    """The app; costguard's guard is the default one (./costguard.yaml, or COSTGUARD_CONFIG)."""
    app = Flask(__name__)
    CostGuard(app)  # customer from X-Customer-Id; 503 while a kill switch is on; Blocked → 429

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat")
    def chat() -> tuple[dict[str, Any], int]:
        message = (request.get_json(silent=True) or {}).get("message")
        if not isinstance(message, str) or not message:
            return {"error": 'send JSON like {"message": "Where is my refund?"}'}, 400
        return dict(chat_reply(message)), 200  # the caller gets the Priced value itself

    @app.get("/search")
    def search() -> dict[str, Any]:
        asked_at = time.time()
        result = dict(search_answer(request.args.get("q", "")))
        result["cached"] = result["source"] == "llm" and result.pop("generated_at") < asked_at
        result.pop("generated_at", None)
        return result

    @app.get("/budget")
    def budget() -> dict[str, Any]:
        return costguard.default_guard().status(customer=request.headers.get("X-Customer-Id")).to_dict()

    return app


app = create_app()

if __name__ == "__main__":
    os.chdir(HERE)  # ./costguard.yaml and its sqlite:///costguard.db are this folder's
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
