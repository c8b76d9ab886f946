"""with_kill_switch: sync and async, fallbacks, degrade, cost extraction, the default guard."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import costguard
from costguard import BudgetExceeded, FeatureSettings, KillSwitchActive, Priced, fallback
from costguard.testing import FakeClock
from helpers import FlakyStore, make_guard, usd_ceiling


def openai_response(prompt: int = 100, completion: int = 50, model: str = "gpt-4o-mini") -> SimpleNamespace:
    usage = SimpleNamespace(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return SimpleNamespace(model=model, usage=usage, text="hello")


def test_static_fallback_after_the_cap() -> None:
    guard = make_guard(usd_ceiling({"feature": "chat"}, day=0.03))
    calls = []

    @guard.with_kill_switch("chat", fallback="busy", estimate=0.01)
    def chat(question: str) -> str:
        calls.append(question)
        return f"answer to {question}"

    answers = [chat(f"q{i}") for i in range(5)]
    assert answers == ["answer to q0", "answer to q1", "answer to q2", "busy", "busy"]
    assert len(calls) == 3


def test_no_fallback_raises_budget_exceeded() -> None:
    guard = make_guard(usd_ceiling({"feature": "chat"}, day=0.01))

    @guard.with_kill_switch("chat", estimate=0.01)
    def chat() -> str:
        return "ok"

    assert chat() == "ok"
    with pytest.raises(BudgetExceeded) as caught:
        chat()
    assert caught.value.limit_usd == 0.01


def test_callable_fallback_gets_the_same_arguments_and_the_decision() -> None:
    guard = make_guard(usd_ceiling({"feature": "search"}, day=0.0))
    seen = []

    def keyword_search(query: str, *, limit: int = 3) -> list[str]:
        decision = costguard.current_decision()
        assert decision is not None
        seen.append((query, limit, decision.reason))
        return ["kw"]

    @guard.with_kill_switch("search", fallback=keyword_search, estimate=0.01)
    def semantic_search(query: str, *, limit: int = 3) -> list[str]:
        raise AssertionError("must not run")

    assert semantic_search("shoes", limit=7) == ["kw"]
    assert seen == [("shoes", 7, "budget_exceeded")]
    assert costguard.current_decision() is None


def test_raise_fallback() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.0))

    @guard.with_kill_switch("f", fallback=fallback.raise_(), estimate=0.01)
    def f() -> str:
        return "x"

    with pytest.raises(BudgetExceeded):
        f()


def test_cached_fallback_serves_the_last_result_for_the_same_key() -> None:
    clock = FakeClock()
    guard = make_guard(usd_ceiling({"feature": "docs"}, day=0.02), clock=clock)

    @guard.with_kill_switch("docs", fallback=fallback.cached(ttl_s=60, otherwise="no cache"), estimate=0.01)
    def docs(query: str) -> str:
        return f"fresh {query}"

    assert docs("a") == "fresh a"
    assert docs("b") == "fresh b"
    guard.flush()
    assert docs("a") == "fresh a"  # cap reached: the cached result for "a"
    assert docs("c") == "no cache"
    clock.advance(61)
    assert docs("b") == "no cache"  # expired


def test_cached_fallback_with_a_key_and_no_otherwise_raises() -> None:
    guard = make_guard(usd_ceiling({"feature": "docs"}, day=0.01))

    @guard.with_kill_switch("docs", fallback=fallback.cached(key=lambda q, **_: q.lower()), estimate=0.01)
    def docs(query: str) -> dict[str, str]:
        return {"answer": query}

    assert docs("Hello") == {"answer": "Hello"}
    guard.flush()
    assert docs("HELLO") == {"answer": "Hello"}
    with pytest.raises(BudgetExceeded):
        docs("other")


def test_configured_fallback_is_used_when_the_decorator_has_none() -> None:
    guard = make_guard(
        usd_ceiling({"feature": "f"}, day=0.0),
        features={"f": FeatureSettings(fallback=fallback.static("from config"))},
    )

    @guard.with_kill_switch("f", estimate=0.01)
    def f() -> str:
        return "x"

    assert f() == "from config"


def test_degrade_switches_to_the_cheaper_function_and_stays_guarded() -> None:
    guard = make_guard(
        usd_ceiling({"feature": "chat"}, day=0.10),
        features={"chat": FeatureSettings(degrade_at=0.9)},
    )

    def small_model(q: str) -> str:
        decision = costguard.current_decision()
        assert decision is not None and decision.degraded
        return "small"

    @guard.with_kill_switch("chat", degrade=small_model, fallback="off", estimate=0.02)
    def big_model(q: str) -> str:
        return "big"

    answers = [big_model("q") for _ in range(7)]
    assert answers == ["big", "big", "big", "big", "small", "off", "off"]


def test_cost_from_priced_number_callable_and_charges() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0))

    @guard.with_kill_switch("f", estimate=0.5)
    def priced() -> Priced[str]:
        return Priced("value", 0.012)

    @guard.with_kill_switch("f", estimate=0.5, cost=0.003)
    def fixed() -> str:
        return "v"

    @guard.with_kill_switch("f", estimate=0.5, cost=lambda r: r.usage.total_tokens * 0.00001)
    def from_usage() -> SimpleNamespace:
        return openai_response(100, 50)

    @guard.with_kill_switch("f", estimate=0.5, cost=0)
    def with_tool_call() -> str:
        costguard.charge(0.25, "stripe")
        return "v"

    assert priced() == "value"
    assert fixed() == "v"
    assert from_usage().text == "hello"
    assert with_tool_call() == "v"
    assert guard.status().ceilings[0].spent == round(0.012 + 0.003 + 0.0015 + 0.25, 6)


def test_unknown_cost_keeps_the_estimate_and_usage_counts_tokens() -> None:
    guard = make_guard(
        costguard.Ceiling(
            costguard.model.make_match({"feature": "f"}),
            (
                costguard.Limit(costguard.Period.MONTH, costguard.Unit.USD, 10_000_000),
                costguard.Limit(costguard.Period.DAY, costguard.Unit.TOKENS, 10_000),
            ),
        )
    )

    @guard.with_kill_switch("f", estimate=0.02)
    def f() -> SimpleNamespace:
        return openai_response(120, 80, model="acme-private-llm")

    f()
    rows = {row.unit: row.spent for row in guard.status().ceilings}
    assert rows == {"usd": 0.02, "tokens": 200.0}


def test_usage_of_a_known_model_is_priced() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0))

    @guard.with_kill_switch("f", estimate=0.02)
    def f() -> SimpleNamespace:
        return openai_response(120_000, 80_000)

    f()
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(0.066)  # gpt-4o-mini: $0.15 and $0.60 per million tokens


def test_labels_from_arguments_and_context() -> None:
    guard = make_guard(usd_ceiling({"feature": "f", "customer": "*"}, day=0.01))

    @guard.with_kill_switch("f", estimate=0.01, labels=lambda user, **_: {"customer": user})
    def f(user: str) -> str:
        return user

    assert f("acme") == "acme"
    with pytest.raises(BudgetExceeded):
        f("acme")
    assert f("bob") == "bob"


def test_exception_in_the_function_releases_and_propagates() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))

    @guard.with_kill_switch("f", estimate=0.01)
    def broken() -> None:
        raise ValueError("model error")

    with pytest.raises(ValueError, match="model error"):
        broken()
    assert guard.status().ceilings[0].spent == 0.0
    assert guard.audit(decision="release")[0].data["why"] == "call raised"


def test_async_functions_are_guarded_the_same_way() -> None:
    guard = make_guard(usd_ceiling({"feature": "chat"}, day=0.05))
    running = 0
    peak = 0

    @guard.with_kill_switch("chat", fallback=lambda q: f"fallback {q}", estimate=0.01)
    async def chat(q: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return f"answer {q}"

    async def main() -> list[str]:
        return list(await asyncio.gather(*(chat(str(i)) for i in range(8))))

    answers = asyncio.run(main())
    assert sum(a.startswith("answer") for a in answers) == 5
    assert sum(a.startswith("fallback") for a in answers) == 3
    assert guard.status().ceilings[0].spent == 0.05


def test_async_fallback_and_async_cached() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))

    async def alternative(x: int) -> str:
        return f"alt {x}"

    @guard.with_kill_switch("f", fallback=alternative, estimate=0.01)
    async def f(x: int) -> str:
        return f"main {x}"

    @guard.with_kill_switch("g", fallback=fallback.cached(ttl_s=60), estimate=0.0)
    async def g(x: int) -> str:
        return f"g {x}"

    async def main() -> list[str]:
        return [await f(1), await f(2), await g(1)]

    assert asyncio.run(main()) == ["main 1", "alt 2", "g 1"]


def test_async_exception_releases() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))

    @guard.with_kill_switch("f", estimate=0.01)
    async def f() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        asyncio.run(f())
    assert guard.status().ceilings[0].spent == 0.0


def test_kill_switch_serves_the_fallback() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))

    @guard.with_kill_switch("f", fallback=lambda: costguard.current_decision().reason, estimate=0.01)  # type: ignore[union-attr]
    def f() -> str:
        return "ran"

    @guard.with_kill_switch("g", estimate=0.01)
    def g() -> str:
        return "ran"

    guard.killswitch.activate(reason="incident #7", actor="ops")
    assert f() == "kill_switch"
    with pytest.raises(KillSwitchActive) as caught:
        g()
    assert "incident #7" in str(caught.value)


def test_store_outage_never_reaches_the_caller() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), store=store)

    @guard.with_kill_switch("f", fallback="fb", estimate=0.01)
    def f() -> str:
        return "ran"

    store.down = True
    assert f() == "ran"
    closed = make_guard(usd_ceiling({"feature": "f"}, day=1.0), store=store, on_store_error="closed")

    @closed.with_kill_switch("f", fallback="fb", estimate=0.01)
    def g() -> str:
        return "ran"

    assert g() == "fb"


def test_module_level_decorator_uses_the_configured_guard() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))
    costguard.configure(guard)
    try:

        @costguard.with_kill_switch("f", fallback="busy", estimate=0.01)
        def f() -> str:
            return "ran"

        assert [f(), f()] == ["ran", "busy"]
    finally:
        costguard.configure(None)


def test_module_level_decorator_loads_costguard_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "budget.yaml"
    config.write_text(
        "store: memory://\nfeatures:\n  f:\n    daily_usd: 0.02\n    estimate_usd: 0.01\n"
        "    fallback: {static: busy}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("COSTGUARD_CONFIG", str(config))
    costguard.configure(None)

    @costguard.with_kill_switch("f")
    def f() -> str:
        return "ran"

    try:
        assert [f(), f(), f()] == ["ran", "ran", "busy"]
    finally:
        costguard.default_guard().close()
        costguard.configure(None)


def test_missing_default_config_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    costguard.configure(None)

    @costguard.with_kill_switch("f")
    def f() -> str:
        return "ran"

    with pytest.raises(costguard.ConfigError, match="configure"):
        f()


def test_threads_through_the_decorator_never_overshoot() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    served = []
    lock = threading.Lock()

    @guard.with_kill_switch("f", fallback=None, estimate=0.01)
    def f() -> str:
        return "ran"

    def worker() -> None:
        for _ in range(20):
            try:
                result = f()
            except BudgetExceeded:
                result = "blocked"
            with lock:
                served.append(result)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert served.count("ran") == 100
    assert served.count("blocked") == 220
