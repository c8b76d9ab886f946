"""`GET /metrics` on the admin app and on a real `costguard serve`: who may scrape, and what it shows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_helpers import ADMIN_CONFIG, TOKENS, bearer, build_guard, spend
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_admin_serve import free_port, start_serve, stop_serve, wait_for_health

from costguard import Guard
from costguard.admin import app


def series(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def acme_spent(text: str) -> float:
    spent = series(text, "costguard_spent_usd")
    return next(v for labels, v in spent.items() if dict(labels)["scope"] == "customer=acme")


@pytest.fixture(name="guard")
def guard_fixture() -> Any:
    built = build_guard()
    yield built
    built.close()


def test_metrics_need_a_token_and_show_the_store_spend(guard: Guard) -> None:
    client = TestClient(app(guard, admin={**ADMIN_CONFIG, "metrics": {"cache_s": 0}}))
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    response = client.get("/metrics", headers=bearer("read"))  # the read role is enough
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert acme_spent(response.text) == pytest.approx(8.5)
    spend(guard, "doc_search", 1.25, customer="acme")
    assert acme_spent(client.get("/metrics", headers=bearer("read")).text) == pytest.approx(9.75)
    assert "/metrics" not in client.get("/openapi.json").text


def test_a_tenant_token_may_not_scrape_every_customer(guard: Guard) -> None:
    client = TestClient(app(guard, admin=ADMIN_CONFIG))
    response = client.get("/metrics", headers=bearer("acme"))
    assert response.status_code == 403
    assert "tenant" in response.json()["message"]


def test_auth_none_serves_metrics_to_anyone_and_keeps_the_api_closed(guard: Guard) -> None:
    client = TestClient(app(guard, admin={**ADMIN_CONFIG, "metrics": {"auth": "none", "top_n": 1}}))
    response = client.get("/metrics")
    assert response.status_code == 200
    spent = series(response.text, "costguard_spent_usd")
    per_customer = [dict(labels) for labels in spent if dict(labels)["ceiling"] == "customer=*"]
    assert sorted(s["scope"] for s in per_customer) == ["__other__", "customer=acme"]  # top_n: 1
    assert client.get("/v1/budget/status").status_code == 401


def test_an_unknown_metrics_option_is_a_config_error(guard: Guard) -> None:
    with pytest.raises(ValueError, match="metrics"):
        app(guard, admin={**ADMIN_CONFIG, "metrics": {"auth": "basic"}})


CONFIG = """\
store: sqlite:///{db}
features:
  support_agent:
    monthly_usd: 100
    per_customer: {{monthly_usd: 20}}
admin:
  tokens:
    - {{name: prometheus, token: "{read}", role: read}}
"""


def test_costguard_serve_exposes_what_an_app_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(CONFIG.format(db=(tmp_path / "spend.db").as_posix(), read=TOKENS["read"]), encoding="utf-8")
    with Guard.from_yaml(config) as app_guard:  # the app: another process in production, the same store
        spend(app_guard, "support_agent", 3.5, customer="acme")
        spend(app_guard, "support_agent", 1.0, customer="globex")
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    port = free_port()
    process = start_serve(config, port, dict(os.environ), tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, process)
        assert httpx.get(f"{base}/metrics").status_code == 401
        response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKENS['read']}"})
    finally:
        stop_serve(process)
    assert response.status_code == 200, response.text
    spent = {dict(k)["scope"]: v for k, v in series(response.text, "costguard_spent_usd").items()}
    limits = {dict(k)["scope"]: v for k, v in series(response.text, "costguard_limit_usd").items()}
    assert spent["customer=acme,feature=support_agent"] == pytest.approx(3.5)
    assert spent["customer=globex,feature=support_agent"] == pytest.approx(1.0)
    assert spent["feature=support_agent"] == pytest.approx(4.5)
    assert limits["customer=acme,feature=support_agent"] == pytest.approx(20.0)
    assert limits["feature=support_agent"] == pytest.approx(100.0)
    assert series(response.text, "costguard_store_up") == {frozenset(): 1.0}
