"""The FastAPI example, end to end through FastAPI's test client on its own costguard.yaml (SQLite in tmp)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

import costguard

HERE = Path(__file__).resolve().parent
ACME = {"X-Customer-Id": "acme"}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costguard_fastapi_example", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, costguard.Guard]]:
    """The example app on its own config; the SQLite store lands in tmp_path (the config's path is relative)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    guard = costguard.Guard.from_yaml(HERE / "costguard.yaml")
    costguard.configure(guard)
    yield load_example(), guard
    costguard.configure(None)
    guard.close()
    assert (tmp_path / "costguard.db").exists()


def test_chat_runs_on_the_fake_model_and_a_customer_gets_429_after_a_few(
    example: tuple[ModuleType, costguard.Guard],
) -> None:
    module, _ = example
    with TestClient(module.app) as client:
        first = client.post("/chat", json={"message": "Where is my refund?"}, headers=ACME)
        assert first.status_code == 200
        body = first.json()
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert body["cost_usd"] == round(module.price({"model": body["model"], "usage": usage}), 6)
        statuses = [
            client.post("/chat", json={"message": "Where is my refund?"}, headers=ACME).status_code for _ in range(9)
        ]
        assert 200 in statuses
        refused_at = statuses.index(429)
        assert set(statuses[:refused_at]) == {200}
        assert set(statuses[refused_at:]) == {429}
        refused = client.post("/chat", json={"message": "hello?"}, headers=ACME)
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["code"] == "cap_exhausted"
        assert refused.json()["scope"] == {"customer": "acme", "feature": "chat"}
        assert refused.json()["limit_usd"] == 0.02
        other = client.post("/chat", json={"message": "Where is my refund?"}, headers={"X-Customer-Id": "globex"})
        assert other.status_code == 200
        spend = client.get("/budget", headers=ACME).json()
        (chat_row,) = [row for row in spend["ceilings"] if row["labels"] == {"customer": "acme", "feature": "chat"}]
        assert chat_row["reserved_usd"] == 0.0
        # Spend is what the calls cost (from usage), not what was reserved for them.
        assert chat_row["spent_usd"] == pytest.approx(body["cost_usd"] * (refused_at + 1), abs=1e-5)


def test_search_falls_back_to_the_cache_then_to_keywords(example: tuple[ModuleType, costguard.Guard]) -> None:
    module, guard = example
    with TestClient(module.app) as client:

        def search(query: str) -> dict[str, object]:
            response = client.get("/search", params={"q": query}, headers=ACME)
            assert response.status_code == 200
            guard.flush()  # the cached fallback stores results off the request path
            result: dict[str, object] = response.json()
            return result

        fresh = [search("How do refunds work?") for _ in range(2)]
        assert [(r["source"], r["cached"]) for r in fresh] == [("llm", False), ("llm", False)]
        cached = search("how do refunds work?  ")
        assert (cached["source"], cached["cached"], cached["answer"]) == ("llm", True, fresh[-1]["answer"])
        keyword = search("Do you support SSO?")
        assert keyword == {"answer": None, "documents": ["sso"], "source": "keyword", "cached": False}


def test_kill_switch_stops_the_app_but_not_health(example: tuple[ModuleType, costguard.Guard]) -> None:
    module, guard = example
    guard.killswitch.activate(reason="provider incident", actor="ops")
    with TestClient(module.app) as client:
        stopped = client.post("/chat", json={"message": "hi"}, headers=ACME)
        assert stopped.status_code == 503
        assert stopped.headers["X-CostGuard-Kill-Switch"] == "active"
        assert stopped.json()["reason"] == "provider incident"
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/budget", headers=ACME).status_code == 200


def test_the_real_api_needs_the_openai_package(
    example: tuple[ModuleType, costguard.Guard], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, _ = example
    monkeypatch.setitem(sys.modules, "openai", None)  # as if it were not installed
    module.openai_client.cache_clear()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-sent")
    with TestClient(module.app) as client, pytest.raises(RuntimeError, match="pip install openai"):
        client.post("/chat", json={"message": "hi"}, headers=ACME)


def test_the_80_percent_warning_shows_in_the_log(
    example: tuple[ModuleType, costguard.Guard], caplog: pytest.LogCaptureFixture
) -> None:
    # The README's first runs hit a per-customer cap; the config's `log` notifier makes the warning before it visible.
    _, guard = example
    caplog.set_level("WARNING", logger="costguard.alerts")
    guard.reserve("chat", estimate_usd=0.017, customer="acme").commit()  # 85 % of acme's $0.02 a day on chat
    guard.flush()
    warnings = [r.getMessage() for r in caplog.records if r.name == "costguard.alerts"]
    assert any(message.startswith("costguard warn:") for message in warnings), warnings


def test_metrics_after_a_scripted_run_show_the_calls_refusals_and_spend(
    example: tuple[ModuleType, costguard.Guard],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    module, guard = example
    with TestClient(module.app) as client:
        statuses = [
            client.post("/chat", json={"message": "Where is my refund?"}, headers=ACME).status_code for _ in range(8)
        ]
        client.post("/chat", json={"message": "Hello"}, headers={"X-Customer-Id": "globex"})
        text = client.get("/metrics").text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    allowed, refused = statuses.count(200), statuses.count(429)
    assert allowed
    assert refused
    calls = {
        dict(labels)["decision"]: v
        for (name, labels), v in samples.items()
        if name == "costguard_calls_total" and dict(labels)["feature"] == "chat"
    }
    assert calls == {"allowed": allowed + 1, "blocked": refused}
    spent = {
        dict(labels)["scope"]: v
        for (name, labels), v in samples.items()
        if name == "costguard_spent_usd" and dict(labels)["ceiling"] == "customer=*,feature=chat"
    }
    status = {tuple(sorted(row.labels.items())): row.spent for row in guard.status(feature="chat").ceilings}
    assert spent["customer=acme,feature=chat"] == pytest.approx(status[(("customer", "acme"), ("feature", "chat"))])
    assert spent["customer=acme,feature=chat"] > 0.015  # most of acme's $0.02 day
    assert "customer=globex,feature=chat" in spent
