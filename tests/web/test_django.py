"""Django: the middleware in sync mode (test Client, WSGI server) and async mode (AsyncClient, ASGI under uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django_site
import pytest
from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from django.test import AsyncClient, Client, RequestFactory, override_settings
from scenario import Fetch, Resp, check_all, web_guard
from servers import live_fetch, request_headers, run_hammer, uvicorn_server, wsgi_server

import costguard
from costguard import Guard
from costguard._web import GuardedBody
from costguard.current import current_labels

assert django_site.urlpatterns


@pytest.fixture
def guard() -> Iterator[Guard]:
    """The default guard the site's views and the middleware use."""
    guard = web_guard()
    costguard.configure(guard)
    yield guard
    costguard.configure(None)


def _resp(response: Any, body: bytes) -> Resp:
    return Resp(response.status_code, dict(response.headers), body)


@contextmanager
def client_fetch() -> Iterator[Fetch]:
    client = Client()

    def fetch(path: str, customer: str | None = None, **headers: str) -> Resp:
        response = client.get(path, headers=request_headers(customer, headers))
        body = b"".join(response.streaming_content) if response.streaming else response.content
        response.close()
        assert current_labels() == {}
        return _resp(response, body)

    yield fetch


@contextmanager
def async_client_fetch() -> Iterator[Fetch]:
    client = AsyncClient()

    async def get(path: str, headers: dict[str, str]) -> Resp:
        response = await client.get(path, headers=headers)
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content])
        else:
            body = response.content
        return _resp(response, body)

    def fetch(path: str, customer: str | None = None, **headers: str) -> Resp:
        return asyncio.run(get(path, request_headers(customer, headers)))

    yield fetch


def test_sync_mode_through_the_test_client(guard: Guard) -> None:
    with client_fetch() as fetch:
        check_all(fetch, guard, stream="/stream")


def test_async_mode_through_the_async_test_client(guard: Guard) -> None:
    with async_client_fetch() as fetch:
        check_all(fetch, guard, stream="/astream")


def test_async_mode_through_uvicorn(guard: Guard) -> None:
    with uvicorn_server(get_asgi_application()) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard, stream="/astream")


def test_sync_mode_through_a_wsgi_server(guard: Guard) -> None:
    with wsgi_server(get_wsgi_application()) as base_url, live_fetch(base_url) as fetch:
        check_all(fetch, guard, stream="/stream")


@pytest.mark.parametrize(
    ("serve", "build", "path"),
    [
        pytest.param(uvicorn_server, get_asgi_application, "/chat", id="asgi-sync-view"),
        pytest.param(uvicorn_server, get_asgi_application, "/achat", id="asgi-async-view"),
        pytest.param(wsgi_server, get_wsgi_application, "/chat", id="wsgi-sync-view"),
    ],
)
def test_32_clients_never_overshoot_a_customer_cap(serve: Any, build: Any, path: str, tmp_path: Path) -> None:
    guard = web_guard(f"sqlite:///{tmp_path / 'web.db'}", cap_usd=0.20)
    costguard.configure(guard)
    try:
        assert run_hammer(serve, build(), path) == {200: 20, 429: 44}
    finally:
        costguard.configure(None)


def test_file_responses_keep_their_file_for_the_servers_sendfile(guard: Guard) -> None:
    from costguard.django import CostGuardMiddleware

    # Called directly: Django's test client wraps every streamed body itself.
    request = RequestFactory().get("/download", headers={"X-Customer-Id": "acme"})
    response = CostGuardMiddleware(django_site.download)(request)
    assert response.file_to_stream is not None
    assert b"".join(response.streaming_content) == b"file body"
    streamed = CostGuardMiddleware(django_site.stream)(request)
    assert isinstance(streamed._iterator, GuardedBody)


def test_the_middleware_is_sync_and_async_capable() -> None:
    from asgiref.sync import iscoroutinefunction

    from costguard.django import CostGuardMiddleware

    assert CostGuardMiddleware.sync_capable
    assert CostGuardMiddleware.async_capable

    async def async_next(request: Any) -> Any:
        return None

    assert iscoroutinefunction(CostGuardMiddleware(async_next))
    assert not iscoroutinefunction(CostGuardMiddleware(lambda request: None))


def test_config_setting_loads_that_file_and_makes_it_the_default(tmp_path: Path) -> None:
    from costguard import django as cg_django

    config = tmp_path / "costguard.yaml"
    config.write_text(
        f"store: sqlite:///{tmp_path / 'site.db'}\n"
        "features:\n  chat:\n    estimate_usd: 0.01\n    per_customer: {daily_usd: 0.01}\n"
        "killswitch:\n  exempt_paths: [/health]\n"
    )
    costguard.configure(None)
    try:
        with override_settings(COSTGUARD={"config": config, "customer_header": "X-Account"}):
            client = Client()
            assert client.get("/labels", headers={"X-Account": "acme"}).json() == {"customer": "acme"}
            assert client.get("/chat", headers={"X-Account": "acme"}).status_code == 200
            refused = client.get("/chat", headers={"X-Account": "acme"})
            assert refused.status_code == 429
            assert refused.json()["limit_usd"] == 0.01
            loaded = cg_django._guards[config.resolve()]
            assert costguard.default_guard() is loaded
            # A second client (a new handler) shares the guard for the same file.
            assert Client().get("/chat", headers={"X-Account": "globex"}).status_code == 200
            assert len(cg_django._guards) == 1
    finally:
        for loaded in cg_django._guards.values():
            loaded.close()
        cg_django._guards.clear()
        costguard.configure(None)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"bogus": 1}, "unknown key(s) 'bogus'; expected config, customer_header, customer_from, missing_customer"),
        ({"missing_customer": "ignore"}, "missing_customer must be one of anonymous, reject, skip"),
        (["config"], "must be a dict"),
        ({"customer_header": ""}, "customer_header'] must be a header name"),
        ({"config": 3}, "must be a path to costguard.yaml"),
        ({"labels": 3}, "dotted path to a callable"),
        ({"labels": "no.such.module.fn"}, "can't be imported"),
        ({"labels": "django_site.CHUNKS"}, "is not callable"),
    ],
)
def test_bad_settings_say_what_to_fix(setting: Any, message: str, guard: Guard) -> None:
    with override_settings(COSTGUARD=setting), pytest.raises(ImproperlyConfigured) as caught:
        Client().get("/labels")
    assert message in str(caught.value)
