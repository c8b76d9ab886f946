"""Real servers on 127.0.0.1 for the web tests: uvicorn (ASGI) and werkzeug (WSGI) in threads, on free ports."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from scenario import Fetch, Resp
from werkzeug.serving import make_server

from costguard.current import current_labels

STARTUP_S = 10.0


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_S)


@contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    """Serve a WSGI app with werkzeug's threaded server in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(STARTUP_S)


@contextmanager
def live_fetch(base_url: str) -> Iterator[Fetch]:
    """A `Fetch` over real HTTP to a server started above."""
    with httpx.Client(base_url=base_url, timeout=10.0) as client:

        def fetch(path: str, customer: str | None = None, **headers: str) -> Resp:
            response = client.get(path, headers=request_headers(customer, headers))
            return Resp(response.status_code, dict(response.headers), response.content)

        yield fetch


def request_headers(customer: str | None, extra: dict[str, str]) -> dict[str, str]:
    """`X_Plan="pro"` keyword headers as `X-Plan`, plus the customer header when given."""
    headers = {name.replace("_", "-"): value for name, value in extra.items()}
    if customer is not None:
        headers["X-Customer-Id"] = customer
    return headers


@contextmanager
def starlette_fetch(app: Any) -> Iterator[Fetch]:
    """A `Fetch` through Starlette's test client (Starlette and FastAPI apps, bare ASGI)."""
    from starlette.testclient import TestClient

    with TestClient(app) as client:

        def fetch(path: str, customer: str | None = None, **headers: str) -> Resp:
            response = client.get(path, headers=request_headers(customer, headers))
            return Resp(response.status_code, dict(response.headers), response.content)

        yield fetch


@contextmanager
def werkzeug_fetch(app: Any) -> Iterator[Fetch]:
    """A `Fetch` through werkzeug's test client (Flask, bare WSGI); checks the labels never outlive a request."""
    from werkzeug.test import Client

    client = Client(app)

    def fetch(path: str, customer: str | None = None, **headers: str) -> Resp:
        response = client.get(path, headers=request_headers(customer, headers))
        body = response.get_data()
        response.close()
        assert current_labels() == {}
        return Resp(response.status_code, dict(response.headers), body)

    yield fetch


def hammer(base_url: str, path: str, customer: str, *, clients: int = 32, each: int = 2) -> Counter[int]:
    """`clients` concurrent HTTP clients, released together, each sending `each` requests; counts statuses."""
    barrier = threading.Barrier(clients)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    # One connection per client (a shared pool of `clients` connections): 32 requests in flight at once.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    def client_run(client: httpx.Client) -> None:
        try:
            barrier.wait(timeout=30.0)
            for _ in range(each):
                status = client.get(path, headers={"X-Customer-Id": customer}).status_code
                with lock:
                    statuses[status] += 1
        except BaseException as exc:
            errors.append(exc)

    with httpx.Client(base_url=base_url, timeout=30.0, limits=limits) as client:
        threads = [threading.Thread(target=client_run, args=(client,), name=f"client-{i}") for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60.0)
    assert not errors, errors
    return statuses


def run_hammer(serve: Callable[[Any], Any], app: Any, path: str) -> Counter[int]:
    """Start `app` with `serve` and hammer `path` as one customer."""
    with serve(app) as base_url:
        return hammer(base_url, path, "crowd")
