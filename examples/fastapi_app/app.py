"""A FastAPI app whose two LLM endpoints sit behind costguard.

- `POST /chat`: per-customer daily ceilings, enforced with the `guarded` route dependency; a customer over
  their ceiling gets a 429 with `Retry-After`.
- `GET /search?q=...`: a smaller ceiling and a cached fallback — past the ceiling a query asked before gets
  its cached answer, a new one gets plain keyword matching instead of a model call.
- `GET /budget`: this customer's spend against every ceiling; `GET /health`: never blocked.
- `GET /metrics`: Prometheus metrics (calls, refusals, spend per ceiling) when `prometheus-client` is installed.

With no `OPENAI_API_KEY` a fake model answers with realistic OpenAI-shaped `usage`; with one (and
`pip install openai`) the real API is called. Either way the cost is computed from `usage` and the per-token
prices below. Run from this folder: `python app.py` (see README.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

import costguard
from costguard.asgi import CostGuardMiddleware
from costguard.fastapi import guarded
from costguard.reservation import Reservation

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
    """The real API's async client, made once."""
    try:
        from openai import AsyncOpenAI
    except ImportError:
        raise RuntimeError(
            "OPENAI_API_KEY is set but the openai package is not installed: pip install openai"
        ) from None
    return AsyncOpenAI()


async def complete(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A chat completion as a dict: the OpenAI API when OPENAI_API_KEY is set, else the fake."""
    if not os.environ.get("OPENAI_API_KEY"):
        return fake_completion(MODEL, messages)
    response = await openai_client().chat.completions.create(model=MODEL, messages=messages, max_tokens=300)
    result: dict[str, Any] = response.model_dump()
    return result


def keyword_search(query: str) -> dict[str, Any]:
    """The non-AI alternative: documents whose title or text mention a word of the query."""
    words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 2}
    hits = [title for title, text in DOCS.items() if words & set(re.findall(r"\w+", f"{title} {text}".lower()))]
    return {"answer": None, "documents": hits, "source": "keyword", "generated_at": time.time()}


@costguard.with_kill_switch(
    "search",
    fallback=costguard.fallback.cached(ttl_s=3600, key=lambda query: query.strip().lower(), otherwise=keyword_search),
)
async def search_answer(query: str) -> costguard.Priced[dict[str, Any]]:
    """Answer a question from the docs with the model; costguard records what the call cost."""
    context = "\n".join(f"{title}: {text}" for title, text in DOCS.items())
    response = await complete(
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


class ChatIn(BaseModel):
    message: str


def create_app() -> FastAPI:
    """The app; costguard's guard is the default one (./costguard.yaml, or COSTGUARD_CONFIG)."""
    registry: Any = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal registry
        try:
            from prometheus_client import CollectorRegistry

            import costguard.metrics
        except ImportError:  # pip install "costguard-ai[prometheus]" for /metrics
            yield
            return
        # Registered at start, so every guarded call from then on is counted.
        registry = CollectorRegistry()
        registry.register(costguard.metrics.collector(costguard.default_guard()))
        yield

    app = FastAPI(title="costguard FastAPI example", lifespan=lifespan)
    app.add_middleware(CostGuardMiddleware)  # customer from X-Customer-Id; 503 while a kill switch is on
    chat_budget = Depends(guarded("chat"))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat")
    async def chat(body: ChatIn, budget: Reservation = chat_budget) -> dict[str, Any]:
        # The dependency reserved the feature's estimate before we got here; settle it to the real cost.
        response = await complete([{"role": "system", "content": SYSTEM}, {"role": "user", "content": body.message}])
        cost = price(response)
        await budget.acommit(cost)
        return {
            "reply": response["choices"][0]["message"]["content"],
            "model": response["model"],
            "usage": response["usage"],
            "cost_usd": round(cost, 6),
        }

    @app.get("/search")
    async def search(q: str) -> dict[str, Any]:
        asked_at = time.time()
        result = dict(await search_answer(q))
        result["cached"] = result["source"] == "llm" and result.pop("generated_at") < asked_at
        result.pop("generated_at", None)
        return result

    @app.get("/budget")
    def budget(request: Request) -> dict[str, Any]:
        customer = request.headers.get("X-Customer-Id")
        return costguard.default_guard().status(customer=customer).to_dict()

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # Unauthenticated here, as most apps' /metrics: keep it off the public network (docs/metrics.md).
        if registry is None:
            return Response("pip install prometheus-client for /metrics\n", status_code=501)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    os.chdir(HERE)  # ./costguard.yaml and its sqlite:///costguard.db are this folder's
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
