"""The ASGI middleware around a bare ASGI app and a Starlette app: test client and uvicorn."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scenario import CHUNKS, check_all, exhausted, guarded_calls, labels_now, plan_label, web_guard
from servers import live_fetch, run_hammer, starlette_fetch, uvicorn_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import costguard
from costguard import Blocked, ConfigError, Guard
from costguard.asgi import CostGuardMiddleware, Message, Receive, Scope, Send

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


def scope_plan(scope: Scope) -> dict[str, object]:
    for name, value in scope["headers"]:
        if name == b"x-plan":
            return plan_label(value.decode())
    return plan_label(None)


def starlette_app(guard: Guard) -> Starlette:
    ask, aask = guarded_calls(guard)

    def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    def chat(request: Request) -> JSONResponse:  # sync: runs in the thread pool
        return JSONResponse({"answer": ask()})

    async def achat(request: Request) -> JSONResponse:
        return JSONResponse({"answer": await aask()})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(CHUNKS):
                await aask()
                yield b"chunk\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    def labels(request: Request) -> JSONResponse:
        return JSONResponse(labels_now())

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/health/deep", health),
            Route("/chat", chat),
            Route("/achat", achat),
            Route("/stream", stream),
            Route("/labels", labels),
        ]
    )
    app.add_middleware(CostGuardMiddleware, guard=guard, labels=scope_plan)
    return app


def bare_app(guard: Guard) -> Any:
    """A plain ASGI callable, no framework: the middleware must wrap it as well."""
    ask, aask = guarded_calls(guard)

    async def respond(send: Send, status: int, body: bytes, *, more: list[bytes] | None = None) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body, "more_body": more is not None})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path.startswith("/health"):
            await respond(send, 200, b"ok")
        elif path in ("/chat", "/achat"):
            answer = ask() if path == "/chat" else await aask()
            await respond(send, 200, json.dumps({"answer": answer}).encode())
        elif path == "/labels":
            await respond(send, 200, json.dumps(labels_now()).encode())
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(CHUNKS):
                await aask()
                await send({"type": "http.response.body", "body": b"chunk\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await respond(send, 404, b"not found")

    return CostGuardMiddleware(app, guard=guard, labels=scope_plan)


APPS = [pytest.param(starlette_app, id="starlette"), pytest.param(bare_app, id="bare-asgi")]


@pytest.mark.parametrize("build", APPS)
def test_through_the_test_client(build: Any) -> None:
    guard = web_guard()
    with starlette_fetch(build(guard)) as fetch:
        check_all(fetch, guard)


@pytest.mark.parametrize("build", APPS)
def test_through_uvicorn(build: Any) -> None:
    guard = web_guard()
    with uvicorn_server(build(guard)) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard)


@pytest.mark.parametrize("build", APPS)
@pytest.mark.parametrize("path", ["/chat", "/achat"])
def test_32_clients_never_overshoot_a_customer_cap(build: Any, path: str, tmp_path: Path) -> None:
    guard = web_guard(f"sqlite:///{tmp_path / 'web.db'}", cap_usd=0.20)
    statuses = run_hammer(uvicorn_server, build(guard), path)
    assert statuses == {200: 20, 429: 44}


def call(app: Any, scope: Scope) -> list[Message]:
    """Run an ASGI app on one scope; returns what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def http_scope(path: str = "/x", customer: str | None = None) -> Scope:
    headers = [] if customer is None else [(b"x-customer-id", customer.encode())]
    return {"type": "http", "path": path, "method": "GET", "headers": headers}


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_lifespan_and_websocket_pass_through_without_loading_a_guard(kind: str) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    costguard.configure(None)
    # guard=None and no config anywhere: loading the default would raise, so nothing may load it here.
    middleware = CostGuardMiddleware(app)
    scope: Scope = {"type": kind, "path": "/ws", "headers": []}
    assert call(middleware, scope) == []
    assert seen == [scope]


def test_default_guard_is_resolved_at_the_first_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    costguard.configure(None)
    middleware = starlette_app_without_guard()
    with pytest.raises(ConfigError, match=r"costguard\.configure"):
        call(middleware, http_scope("/labels"))
    guard = web_guard()
    costguard.configure(guard)
    try:
        guard.killswitch.activate(reason="late config")
        sent = call(middleware, http_scope("/labels"))
        assert sent[0]["status"] == 503
    finally:
        costguard.configure(None)


def starlette_app_without_guard() -> CostGuardMiddleware:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return CostGuardMiddleware(app)


def raising(exc: BaseException, *, after_start: bool = False, after_end: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if after_start or after_end:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": not after_end})
        raise exc

    return app


def test_a_blocked_inside_an_exception_group_is_still_a_429() -> None:
    guard = web_guard()
    group = ExceptionGroup("task group", [exhausted(guard)])
    sent = call(CostGuardMiddleware(raising(group), guard=guard), http_scope())
    assert sent[0]["status"] == 429
    assert json.loads(sent[1]["body"])["code"] == "cap_exhausted"


def test_other_errors_propagate() -> None:
    guard = web_guard()
    with pytest.raises(ZeroDivisionError):
        call(CostGuardMiddleware(raising(ZeroDivisionError()), guard=guard), http_scope())
    group = ExceptionGroup("two", [exhausted(guard), KeyError("k")])
    with pytest.raises(ExceptionGroup):
        call(CostGuardMiddleware(raising(group), guard=guard), http_scope())


def test_blocked_after_the_response_started_ends_it(caplog: pytest.LogCaptureFixture) -> None:
    guard = web_guard()
    sent = call(CostGuardMiddleware(raising(exhausted(guard), after_start=True), guard=guard), http_scope())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert "after the response had started" in caplog.text


def test_blocked_after_the_response_ended_sends_nothing_more() -> None:
    guard = web_guard()
    sent = call(CostGuardMiddleware(raising(exhausted(guard), after_end=True), guard=guard), http_scope())
    assert [m.get("more_body", False) for m in sent] == [False, False]
    assert len(sent) == 2


def test_store_unavailable_with_closed_policy_is_a_503() -> None:
    guard = web_guard()
    exc = Blocked(costguard.Decision(allowed=False, reason="store_error", labels={}, message="store down"))
    sent = call(CostGuardMiddleware(raising(exc), guard=guard), http_scope())
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"]) == {"code": "store_unavailable", "reason": "store down"}


def test_customer_header_name_is_configurable() -> None:
    guard = web_guard()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(labels_now()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    middleware = CostGuardMiddleware(app, guard=guard, customer_header="X-Tenant-Account")
    scope = http_scope()
    scope["headers"] = [(b"x-tenant-account", b"acme"), (b"x-customer-id", b"ignored")]
    assert json.loads(call(middleware, scope)[1]["body"]) == {"customer": "acme"}
    assert middleware.guard is guard
