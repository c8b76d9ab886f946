"""The one-line `/metrics` mounts of docs/operations.md ("Metrics in Grafana") and docs/metrics.md, followed
literally: the collector registered in prometheus_client's global registry, `/metrics` served by the app,
scraped after a guarded call while a kill switch is active (`/metrics` is in `killswitch.exempt_paths`)."""

from __future__ import annotations

from collections.abc import Iterator

import django_site
import prometheus_client
import pytest
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path
from fastapi import FastAPI
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from scenario import ESTIMATE_USD, guarded_calls
from starlette.testclient import TestClient
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import costguard
import costguard.metrics
from costguard import FeatureSettings, Guard
from costguard.asgi import CostGuardMiddleware
from costguard.flask import CostGuard
from helpers import make_guard, usd_ceiling

PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=1.0)
ACME = {
    "ceiling": PER_CUSTOMER.id,
    "period": "day",
    "feature": "chat",
    "customer": "acme",
    "scope": "customer=acme,feature=chat",
}

# The Django site's URLs for these tests (`ROOT_URLCONF` is this module): its guarded view, and the docs' line.
urlpatterns = [
    path("chat", django_site.chat),
    path(
        "metrics",
        lambda r: HttpResponse(prometheus_client.generate_latest(), content_type=prometheus_client.CONTENT_TYPE_LATEST),
    ),
]


@pytest.fixture(name="guard")
def guard_fixture() -> Iterator[Guard]:
    """A guard, the default one too (the Django site's views use it), whose collector is in the global
    registry as the docs say — and taken out again after the test."""
    guard = make_guard(
        PER_CUSTOMER,
        features={"chat": FeatureSettings(estimate_usd=round(ESTIMATE_USD * 1_000_000))},
        exempt_paths=["/metrics"],  # docs/metrics.md: so a kill switch never stops the scrape
    )
    costguard.configure(guard)
    collector = costguard.metrics.collector(guard)
    prometheus_client.REGISTRY.register(collector)
    yield guard
    prometheus_client.REGISTRY.unregister(collector)
    costguard.configure(None)
    guard.close()


def check_scrape(status: int, content_type: str | None, body: bytes) -> None:
    """`/metrics` answered with the guard's series: the call counted, its spend read from the store."""
    assert status == 200
    # The text format; which version prometheus_client names depends on the mount (and the scraper's Accept).
    assert content_type is not None
    assert content_type.startswith("text/plain; version=")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples[("costguard_calls_total", frozenset({"feature": "chat", "decision": "allowed"}.items()))] == 1
    assert samples[("costguard_spent_usd", frozenset(ACME.items()))] == pytest.approx(ESTIMATE_USD)
    assert samples[("costguard_limit_usd", frozenset(ACME.items()))] == 1.0
    assert samples[("costguard_store_up", frozenset())] == 1


def test_flask_dispatcher_middleware_serves_the_global_registry(guard: Guard) -> None:
    ask, _ = guarded_calls(guard)
    app = Flask(__name__)

    @app.get("/chat")
    def chat() -> dict[str, str]:
        return {"answer": ask()}

    CostGuard(app, guard=guard)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": prometheus_client.make_wsgi_app()})  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 200
    guard.killswitch.activate(reason="drill", actor="test")
    assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 503
    response = client.get("/metrics")
    check_scrape(response.status_code, response.headers.get("Content-Type"), response.data)


@override_settings(ROOT_URLCONF=__name__)
def test_django_url_pattern_serves_the_global_registry(guard: Guard) -> None:
    client = Client()
    assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 200
    guard.killswitch.activate(reason="drill", actor="test")
    assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 503
    response = client.get("/metrics")
    check_scrape(response.status_code, response.headers.get("Content-Type"), response.content)


def test_fastapi_mount_serves_the_global_registry(guard: Guard) -> None:
    ask, _ = guarded_calls(guard)
    app = FastAPI()

    @app.get("/chat")
    def chat() -> dict[str, str]:
        return {"answer": ask()}

    app.add_middleware(CostGuardMiddleware, guard=guard)
    app.mount("/metrics", prometheus_client.make_asgi_app())
    with TestClient(app) as client:
        assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 200
        guard.killswitch.activate(reason="drill", actor="test")
        assert client.get("/chat", headers={"X-Customer-Id": "acme"}).status_code == 503
        response = client.get("/metrics")
    check_scrape(response.status_code, response.headers.get("Content-Type"), response.content)
