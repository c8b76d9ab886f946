"""Flask: the `CostGuard` extension through Flask's test client and werkzeug's server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, request, send_file, stream_with_context
from scenario import CHUNKS, check_all, check_stream, guarded_calls, labels_now, plan_label, web_guard
from servers import live_fetch, run_hammer, werkzeug_fetch, wsgi_server

import costguard
from costguard import Guard
from costguard._web import GuardedBody
from costguard.flask import CostGuard


def request_plan(req: Any) -> dict[str, object]:
    return plan_label(req.headers.get("X-Plan"))


def flask_app(guard: Guard | None, *, init_app: bool = False) -> Flask:
    ask, aask = guarded_calls(guard or costguard.default_guard())
    app = Flask(__name__)

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

    def chunks() -> Iterator[str]:
        for _ in range(CHUNKS):
            ask()
            yield "chunk\n"

    @app.get("/stream")
    def stream() -> Response:
        # A plain generator runs after the request's teardown: the extension gives each chunk the labels back.
        return Response(chunks(), mimetype="text/plain")

    @app.get("/stream/ctx")
    def stream_ctx() -> Response:
        return Response(stream_with_context(chunks()), mimetype="text/plain")

    @app.get("/labels")
    def labels() -> dict[str, str]:
        assert request.path == "/labels"
        return labels_now()

    if init_app:
        extension = CostGuard(guard=guard, labels=request_plan)
        extension.init_app(app)
    else:
        CostGuard(app, guard=guard, labels=request_plan)
    return app


@pytest.mark.parametrize("init_app", [False, True], ids=["constructor", "init_app"])
def test_through_the_test_client(init_app: bool) -> None:
    guard = web_guard()
    with werkzeug_fetch(flask_app(guard, init_app=init_app)) as fetch:
        check_all(fetch, guard)


def test_through_werkzeug_server() -> None:
    guard = web_guard()
    with wsgi_server(flask_app(guard)) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard)


@pytest.mark.parametrize("serve", [werkzeug_fetch, "server"])
def test_stream_with_context(serve: Any) -> None:
    guard = web_guard()
    app = flask_app(guard)
    if serve == "server":
        with wsgi_server(app) as base_url, live_fetch(base_url) as fetch:
            check_stream(fetch, "/stream/ctx")
    else:
        with serve(app) as fetch:
            check_stream(fetch, "/stream/ctx")


@pytest.mark.parametrize("path", ["/chat", "/achat"])
def test_32_clients_never_overshoot_a_customer_cap(path: str, tmp_path: Path) -> None:
    guard = web_guard(f"sqlite:///{tmp_path / 'web.db'}", cap_usd=0.20)
    assert run_hammer(wsgi_server, flask_app(guard), path) == {200: 20, 429: 44}


def test_send_file_bodies_pass_straight_to_the_server() -> None:
    app = flask_app(web_guard())
    extension = app.extensions["costguard"]
    with app.test_request_context("/file", headers={"X-Customer-Id": "acme"}):
        app.preprocess_request()
        response = send_file(io.BytesIO(b"file body"), mimetype="application/octet-stream")
        body = response.response
        assert extension._after_request(response).response is body
        streamed = Response(iter([b"a"]))
        assert isinstance(extension._after_request(streamed).response, GuardedBody)


def test_default_guard_and_extension_registry() -> None:
    guard = web_guard()
    costguard.configure(guard)
    try:
        app = flask_app(None)
        extension = app.extensions["costguard"]
        assert isinstance(extension, CostGuard)
        with werkzeug_fetch(app) as fetch:
            assert fetch("/labels", "acme").json() == {"customer": "acme"}
        assert extension.guard is guard
    finally:
        costguard.configure(None)
