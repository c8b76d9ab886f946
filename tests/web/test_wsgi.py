"""The WSGI middleware around a bare WSGI app: werkzeug's test client and its real server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from scenario import CHUNKS, Fetch, check_all, guarded_calls, labels_now, plan_label, web_guard
from servers import live_fetch, run_hammer, werkzeug_fetch, wsgi_server
from werkzeug.test import Client

import costguard
from costguard import Guard
from costguard.wsgi import CostGuardMiddleware, StartResponse, WSGIEnvironment


def environ_plan(environ: WSGIEnvironment) -> dict[str, object]:
    return plan_label(environ.get("HTTP_X_PLAN"))


class Closing:
    """A streamed body that records whether the server closed it."""

    closed: ClassVar[list[str]] = []

    def __init__(self, chunks: Iterator[bytes], name: str) -> None:
        self.chunks = chunks
        self.name = name

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        Closing.closed.append(self.name)


def bare_app(guard: Guard, **options: Any) -> CostGuardMiddleware:
    ask, _ = guarded_calls(guard)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/health"):
            body = b'{"ok": true}'
        elif path in ("/chat", "/achat"):
            body = json.dumps({"answer": ask()}).encode()
        elif path == "/labels":
            body = json.dumps(labels_now()).encode()
        elif path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])

            def chunks() -> Iterator[bytes]:
                for _ in range(CHUNKS):
                    ask()
                    yield b"chunk\n"

            return Closing(chunks(), environ.get("HTTP_X_CUSTOMER_ID", ""))
        elif path == "/late":
            # Headers set, nothing sent yet: the 429 replaces them (start_response with exc_info).
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"answer": ask()}).encode()]
        elif path == "/lazy":
            # A generator app: start_response and the guarded call both happen at the first next().
            def lazy() -> Iterator[bytes]:
                answer = ask()
                start_response("200 OK", [("Content-Type", "application/json")])
                yield json.dumps({"answer": answer}).encode()

            return lazy()
        else:
            start_response("404 Not Found", [])
            return [b""]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return CostGuardMiddleware(app, guard=guard, labels=environ_plan, **options)


def test_through_the_test_client() -> None:
    guard = web_guard()
    with werkzeug_fetch(bare_app(guard)) as fetch:
        check_all(fetch, guard)


def test_through_werkzeug_server() -> None:
    guard = web_guard()
    Closing.closed.clear()
    with wsgi_server(bare_app(guard)) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard)
    assert sorted(Closing.closed) == ["s1", "s2"]


def test_32_clients_never_overshoot_a_customer_cap(tmp_path: Path) -> None:
    guard = web_guard(f"sqlite:///{tmp_path / 'web.db'}", cap_usd=0.20)
    assert run_hammer(wsgi_server, bare_app(guard), "/chat") == {200: 20, 429: 44}


@pytest.mark.parametrize("serve", ["client", "server"])
def test_a_generator_app_blocked_before_its_first_chunk_still_answers_429(serve: str) -> None:
    guard = web_guard()
    app = bare_app(guard)
    with werkzeug_fetch(app) if serve == "client" else _served(app) as fetch:
        for _ in range(3):
            assert fetch("/lazy", "g").json() == {"answer": "answer"}
        refused = fetch("/lazy", "g")
    assert refused.status == 429
    assert refused.header("Retry-After") == "50400"
    assert refused.json()["code"] == "cap_exhausted"


def test_blocked_after_start_response_but_before_the_body_replaces_the_headers() -> None:
    guard = web_guard()
    with _served(bare_app(guard)) as fetch:
        for _ in range(3):
            assert fetch("/late", "h").status == 200
        refused = fetch("/late", "h")
    assert refused.status == 429
    assert refused.json()["code"] == "cap_exhausted"


@contextmanager
def _served(app: Any) -> Iterator[Fetch]:
    with wsgi_server(app) as base_url, live_fetch(base_url) as fetch:
        yield fetch


def test_environ_paths_include_the_script_name() -> None:
    guard = web_guard()
    guard.killswitch.activate(reason="off")
    app = bare_app(guard)
    client = Client(app)
    mounted = client.get("/health", environ_overrides={"SCRIPT_NAME": "/api"})
    assert mounted.status_code == 503  # /api/health is not an exempt path
    assert client.get("/health").status_code == 200


def test_default_guard_and_customer_header_option() -> None:
    guard = web_guard()
    costguard.configure(guard)
    try:
        middleware = CostGuardMiddleware(_echo_labels, customer_header="X-Account")
        client = Client(middleware)
        assert json.loads(client.get("/", headers={"X-Account": "acme"}).get_data()) == {"customer": "acme"}
        assert middleware.guard is guard
    finally:
        costguard.configure(None)


def _echo_labels(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(labels_now()).encode()]
