"""The app of the async load test, served by `uvicorn --workers 2`: one guarded async call per request,
the customer from the `X-Customer-Id` header, the config from `COSTGUARD_CONFIG`."""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import costguard
from costguard.asgi import CostGuardMiddleware

guard = costguard.Guard.from_yaml(os.environ["COSTGUARD_CONFIG"])


@guard.with_kill_switch("chat", estimate=0.01)
async def answer() -> costguard.Priced[str]:
    await asyncio.sleep(0.002)  # the model call
    return costguard.Priced("answer", 0.01)


async def chat(request: Request) -> JSONResponse:
    return JSONResponse({"answer": await answer(), "pid": os.getpid()})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


app = Starlette(
    routes=[Route("/chat", chat, methods=["POST"]), Route("/health", health)],
    middleware=[Middleware(CostGuardMiddleware, guard=guard)],  # inside Starlette's error middleware
)
