"""FastAPI: the ASGI middleware added the framework's way, and the `guarded` route dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from scenario import (
    CHUNKS,
    RETRY_AFTER,
    check_all,
    check_customer_cap,
    guarded_calls,
    labels_now,
    plan_label,
    web_guard,
)
from servers import live_fetch, run_hammer, starlette_fetch, uvicorn_server

import costguard
from costguard import Guard
from costguard.asgi import CostGuardMiddleware
from costguard.fastapi import guarded
from costguard.reservation import Reservation


def request_plan(request: Request) -> dict[str, object]:
    return plan_label(request.headers.get("X-Plan"))


def scope_plan(scope: Any) -> dict[str, object]:
    return request_plan(Request(scope))


def fastapi_app(guard: Guard, *, middleware: bool = True, dependency_guard: Guard | None = None) -> FastAPI:
    ask, aask = guarded_calls(guard)
    app = FastAPI()
    reservations: list[Reservation] = []
    app.state.reservations = reservations
    # Behind the middleware the dependency takes the middleware's guard; alone it needs its own.
    chat_budget = Depends(guarded("chat", guard=dependency_guard))

    @app.get("/health")
    @app.get("/health/deep")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/chat")
    def chat() -> dict[str, str]:
        return {"answer": ask()}

    @app.get("/achat")
    async def achat() -> dict[str, str]:
        return {"answer": await aask()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(CHUNKS):
                await aask()
                yield b"chunk\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/labels")
    def labels() -> dict[str, str]:
        return labels_now()

    @app.get("/dep")
    async def dep(reservation: Reservation = chat_budget) -> dict[str, str]:
        reservations.append(reservation)
        return {"answer": "answer"}

    @app.get("/dep/sync")
    def dep_sync(reservation: Reservation = chat_budget) -> dict[str, str]:
        costguard.charge(0.002, "tool call")
        reservations.append(reservation)
        return {"answer": "answer"}

    @app.get("/dep/actual")
    async def dep_actual(reservation: Reservation = chat_budget) -> dict[str, str]:
        await reservation.acommit(0.004)
        return {"answer": "answer"}

    @app.get("/dep/stream")
    async def dep_stream(reservation: Reservation = chat_budget) -> StreamingResponse:
        reservations.append(reservation)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(CHUNKS):
                assert not reservation.settled, "settled before the response was sent"
                yield b"chunk\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/dep/missing")
    async def dep_missing(reservation: Reservation = chat_budget) -> dict[str, str]:
        raise HTTPException(404, "no such thing")

    @app.get("/dep/estimated", dependencies=[Depends(guarded("chat", estimate_usd=lambda r: r.query_params["usd"]))])
    async def dep_estimated() -> dict[str, str]:
        return {"answer": "answer"}

    if middleware:
        app.add_middleware(CostGuardMiddleware, guard=guard, labels=scope_plan)
    return app


def spent(guard: Guard, customer: str) -> tuple[float, float]:
    (row,) = guard.status(feature="chat", customer=customer).ceilings
    return row.spent, row.reserved


def test_middleware_through_the_test_client() -> None:
    guard = web_guard()
    with starlette_fetch(fastapi_app(guard)) as fetch:
        check_all(fetch, guard)
        check_customer_cap(fetch, "/dep")


def test_middleware_through_uvicorn() -> None:
    guard = web_guard()
    with uvicorn_server(fastapi_app(guard)) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard)
        check_customer_cap(fetch, "/dep")


@pytest.mark.parametrize("path", ["/chat", "/achat", "/dep"])
def test_32_clients_never_overshoot_a_customer_cap(path: str, tmp_path: Path) -> None:
    guard = web_guard(f"sqlite:///{tmp_path / 'web.db'}", cap_usd=0.20)
    assert run_hammer(uvicorn_server, fastapi_app(guard), path) == {200: 20, 429: 44}


def test_dependency_alone_raises_http_exceptions_with_the_same_body() -> None:
    guard = web_guard()
    with starlette_fetch(fastapi_app(guard, middleware=False, dependency_guard=guard)) as fetch:
        for _ in range(3):
            assert fetch("/dep", "acme").status == 200
        refused = fetch("/dep", "acme")
        assert refused.status == 429
        assert refused.header("Retry-After") == RETRY_AFTER
        detail = refused.json()["detail"]
        assert detail["code"] == "cap_exhausted"
        assert detail["scope"] == {"customer": "acme", "feature": "chat"}
        assert (detail["period"], detail["spent_usd"], detail["limit_usd"]) == ("day", 0.03, 0.03)
        assert fetch("/dep", "globex").status == 200

        guard.killswitch.activate(reason="model outage", scope="feature:chat")
        off = fetch("/dep", "globex")
        assert off.status == 503
        assert off.header("X-CostGuard-Kill-Switch") == "active"
        assert off.json()["detail"] == {
            "code": "kill_switch_active",
            "reason": "model outage",
            "scope": {"feature": "chat"},
        }
        guard.killswitch.deactivate(scope="feature:chat")

        bad = fetch("/dep", "x" * 300)
        assert bad.status == 400
        assert bad.json()["detail"]["code"] == "bad_label"


def test_dependency_alone_uses_the_default_guard() -> None:
    guard = web_guard()
    app = fastapi_app(guard, middleware=False)
    costguard.configure(guard)
    try:
        with starlette_fetch(app) as fetch:
            assert fetch("/dep", "acme").status == 200
        assert spent(guard, "acme") == (0.01, 0.0)
    finally:
        costguard.configure(None)


def test_dependency_commits_the_estimate_after_the_response() -> None:
    guard = web_guard()
    app = fastapi_app(guard)
    with starlette_fetch(app) as fetch:
        streamed = fetch("/dep/stream", "s")
        assert streamed.body == b"chunk\n" * CHUNKS
        (reservation,) = app.state.reservations
        assert reservation.settled
        assert spent(guard, "s") == (0.01, 0.0)


def test_dependency_commits_what_the_route_reports_and_charges() -> None:
    guard = web_guard()
    with starlette_fetch(fastapi_app(guard)) as fetch:
        assert fetch("/dep/actual", "a").status == 200
        assert spent(guard, "a") == (0.004, 0.0)
        assert fetch("/dep/sync", "b").status == 200
        assert spent(guard, "b") == (0.002, 0.0)  # nothing priced the call: the charge() made in the route is its cost


def test_dependency_releases_when_the_route_raises() -> None:
    guard = web_guard()
    with starlette_fetch(fastapi_app(guard)) as fetch:
        assert fetch("/dep/missing", "m").status == 404
    assert spent(guard, "m") == (0.0, 0.0)
    guard.flush()
    assert [r.decision for r in guard.audit(customer="m")] == ["release", "reserve"]


def test_dependency_estimate_from_the_request() -> None:
    guard = web_guard()
    with starlette_fetch(fastapi_app(guard)) as fetch:
        assert fetch("/dep/estimated?usd=0.025", "e").status == 200
        assert spent(guard, "e") == (0.025, 0.0)
        refused = fetch("/dep/estimated?usd=0.01", "e")
        assert refused.status == 429


def test_guarded_needs_a_feature_name() -> None:
    with pytest.raises(ValueError, match="feature name"):
        guarded("")
