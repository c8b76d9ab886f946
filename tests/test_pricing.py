"""Knowing what a call costs: usage extraction, genai-prices, overrides, estimates, learned p95, per-call caps."""

from __future__ import annotations

import json
import logging
import math
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import genai_prices
import pytest

import costguard
from costguard import BudgetExceeded, FeatureSettings, Guard, ModelPrice, Pricing
from costguard.config import load_config
from costguard.estimators import LearnSettings, percentile
from costguard.pricing import TokenUsage, UsageAccumulator, count_tokens, extract_usage, resolve_cost
from costguard.testing import FakeClock
from costguard.usage import _encoding
from helpers import make_guard, usd_ceiling

FIXTURES = Path(__file__).parent / "fixtures" / "usage"


def fixture(name: str) -> Any:
    text = (FIXTURES / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def as_object(data: Any) -> Any:
    """The same response as an SDK-like object with attributes (how the vendor SDKs hand it over)."""
    if isinstance(data, dict):
        return SimpleNamespace(**{k: as_object(v) for k, v in data.items()})
    if isinstance(data, list):
        return [as_object(v) for v in data]
    return data


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("shape", [dict, as_object], ids=["dict", "object"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("openai_chat.json", TokenUsage("gpt-4o-2024-08-06", "openai", 1117, 46, 1024, 0, 0)),
        ("openai_chat_reasoning.json", TokenUsage("o3-mini-2025-01-31", "openai", 24, 1812, 0, 0, 1792)),
        ("openai_responses.json", TokenUsage("gpt-4.1-2025-04-14", "openai", 36, 87, 0, 0, 0)),
        # Anthropic reports input without cache tokens; costguard's input counts them (genai-prices' way).
        ("anthropic_message.json", TokenUsage("claude-3-5-sonnet-20241022", "anthropic", 4146, 503, 0, 2051, 0)),
        ("anthropic_message_cached.json", TokenUsage("claude-3-5-haiku-20241022", "anthropic", 188120, 312, 188086)),
    ],
)
def test_extractors(name: str, expected: TokenUsage, shape: Any) -> None:
    data = fixture(name)
    assert extract_usage(data if shape is dict else as_object(data)) == expected


def test_no_usage_is_none() -> None:
    assert extract_usage({"text": "hi"}) is None
    assert extract_usage(SimpleNamespace(usage=None)) is None
    assert extract_usage("plain string") is None


@pytest.mark.parametrize(
    ("name", "provider", "flavor"),
    [
        ("openai_chat.json", "openai", "chat"),
        ("openai_chat_reasoning.json", "openai", "chat"),
        ("openai_responses.json", "openai", "responses"),
        ("anthropic_message.json", "anthropic", "default"),
        ("anthropic_message_cached.json", "anthropic", "default"),
    ],
)
def test_prices_match_genai_prices_to_the_micro_dollar(name: str, provider: str, flavor: str) -> None:
    data = fixture(name)
    theirs = genai_prices.extract_usage(data, provider_id=provider, api_flavor=flavor).calc_price().total_price
    usage = extract_usage(data)
    assert usage is not None
    assert Pricing().micros(usage) == math.ceil(theirs * 1_000_000)
    assert Pricing().usd(usage) == theirs


def test_stream_accumulation() -> None:
    openai = UsageAccumulator()
    for chunk in fixture("openai_chat_stream.jsonl"):
        openai.feed(chunk)
    assert openai.usage == TokenUsage("gpt-4o-mini-2024-07-18", "openai", 9, 12, 0, 0, 0)

    anthropic = UsageAccumulator()
    events = fixture("anthropic_stream.jsonl")
    for event in events[:3]:
        anthropic.feed(as_object(event))
    assert anthropic.usage is not None
    assert anthropic.usage.output_tokens == 1  # what message_start said so far
    for event in events[3:]:
        anthropic.feed(as_object(event))
    assert anthropic.usage == TokenUsage("claude-3-5-sonnet-20241022", "anthropic", 25, 15)

    responses = UsageAccumulator()
    for event in fixture("openai_responses_stream.jsonl"):
        responses.feed(event)
    assert responses.usage == TokenUsage("gpt-4.1-mini-2025-04-14", "openai", 37, 11, 0, 0, 0)


# --------------------------------------------------------------------------- prices


def test_overrides_win_and_globs_match() -> None:
    pricing = Pricing(
        models={
            "gpt-4o-2024-08-06": ModelPrice(Decimal(1), Decimal(2)),
            "ft:gpt-4o-mini:acme:*": ModelPrice(Decimal("0.30"), Decimal("1.20"), cache_read_per_mtok=Decimal("0.15")),
            "llama-70b-local": ModelPrice(per_call=Decimal("0.002")),
        }
    )
    # 93 plain input + 1024 cached at the input price (no cache price given), 46 output.
    assert pricing.usd(TokenUsage("gpt-4o-2024-08-06", "openai", 1117, 46, 1024)) == Decimal("0.001209")
    fine_tuned = TokenUsage("ft:gpt-4o-mini:acme:support:abc123", "openai", 1_000_000, 1_000_000, 500_000)
    assert pricing.usd(fine_tuned) == Decimal("0.30") * Decimal("0.5") + Decimal("0.15") * Decimal("0.5") + Decimal(
        "1.20"
    )
    assert pricing.micros(TokenUsage("llama-70b-local", None, 5000, 5000)) == 2000


def test_unknown_model_warns_once_and_keeps_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0))

    @guard.with_kill_switch("f", estimate=0.05)
    def call() -> dict[str, Any]:
        return {"model": "totally-new-model-9", "usage": {"prompt_tokens": 10, "completion_tokens": 10}}

    with caplog.at_level(logging.WARNING, logger="costguard"):
        for _ in range(3):
            call()
    assert caplog.text.count("no price for model 'totally-new-model-9'") == 1
    assert "pricing.models" in caplog.text
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(0.15)  # the estimates, never a silent $0
    guard.close()


def test_priced_and_cost_win_over_usage() -> None:
    usage = fixture("openai_chat.json")
    assert resolve_cost(costguard.Priced(usage, 0.5), None).usd_micros == 500_000
    assert resolve_cost(usage, 0.25).usd_micros == 250_000
    assert resolve_cost(usage, lambda r: 0.125).usd_micros == 125_000
    found = resolve_cost(usage, None)
    assert found.usd_micros == Pricing().micros(extract_usage(usage))  # type: ignore[arg-type]
    assert found.tokens == 1163


def test_request_estimate() -> None:
    pricing = Pricing()
    messages = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 400}]
    tokens = count_tokens("x" * 400 + " " + "y" * 400, "gpt-4o-mini")
    estimate = pricing.estimate("gpt-4o-mini", prompt=messages, max_output_tokens=1000, provider="openai")
    usage = TokenUsage("gpt-4o-mini", "openai", tokens, 1000)
    assert estimate == pricing.micros(usage)
    assert pricing.estimate("gpt-4o-mini", prompt=messages) is None  # no max_tokens: no upper bound
    assert pricing.estimate("gpt-4o-mini", input_tokens=100, max_output_tokens=10) == math.ceil(100 * 0.15 + 10 * 0.6)


def test_token_count_without_tiktoken_is_chars_over_four(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tiktoken(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tiktoken":
            raise ImportError("no tiktoken")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tiktoken)
    _encoding.cache_clear()
    assert count_tokens("a" * 401) == 101
    _encoding.cache_clear()


def test_tiktoken_that_cannot_load_its_encoding_counts_chars_and_tries_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # tiktoken downloads encodings on first use; offline (litellm and langchain-openai install it) that raises.
    attempts: list[str] = []

    def offline(name: str) -> Any:
        attempts.append(name)
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    fake = SimpleNamespace(encoding_for_model=offline, get_encoding=offline)
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    _encoding.cache_clear()
    with caplog.at_level(logging.WARNING, logger="costguard"):
        assert count_tokens("a" * 401, "gpt-4o-mini") == 101
        assert count_tokens("b" * 8, "gpt-4o-mini") == 2
    assert attempts == ["gpt-4o-mini"]  # not once per call
    assert caplog.text.count("tiktoken could not load") == 1
    _encoding.cache_clear()


def test_charge_unit_prices_metered_work() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0), pricing=Pricing(units={"sms": Decimal("0.0079")}))

    @guard.with_kill_switch("f", estimate=0.05, cost=0.01)
    def notify() -> None:
        assert costguard.charge_unit("sms", 3) == pytest.approx(0.0237)
        with pytest.raises(KeyError, match=r"no price for unit 'fax'.*known: sms"):
            costguard.charge_unit("fax")

    notify()
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(0.0337)
    with pytest.raises(RuntimeError, match="outside a guarded call"):
        costguard.charge_unit("sms")
    guard.close()


# --------------------------------------------------------------------------- max_call_usd


def test_max_call_usd_rejects_one_oversized_call() -> None:
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=100.0),
        features={"f": FeatureSettings(estimate_usd=10_000, max_call_usd=500_000)},
    )

    @guard.with_kill_switch("f", fallback="too big", estimate=lambda pages: pages * 0.01)
    def summarize(pages: int) -> str:
        return "summary"

    assert summarize(10) == "summary"
    assert summarize(51) == "too big"
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve("f", estimate_usd=0.6)
    decision = info.value.decision
    assert (decision.reason, decision.period, decision.spent_usd, decision.limit_usd) == (
        "max_call_usd",
        "call",
        0.6,
        0.5,
    )
    assert "max_call_usd" in str(info.value)
    assert guard.audit(decision="blocked")[0].data["reason"] == "max_call_usd"
    checked = guard.check("f", estimate_usd=0.6)  # a read-only check says no, and audits nothing
    assert (checked.allowed, checked.reason) == (False, "max_call_usd")
    assert len(guard.audit(decision="blocked")) == 2
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(0.1)  # the rejected calls reserved nothing
    guard.close()


# --------------------------------------------------------------------------- learned estimates


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([5], 0.95) == 5
    assert percentile([1, 2, 3, 4], 0.5) == 2


def learned_guard(store: str = "memory://", **learn: int) -> Guard:
    settings = FeatureSettings(estimate_usd=50_000, estimator="learned", learn=LearnSettings(**learn))
    return make_guard(usd_ceiling({"feature": "f"}, month=1000.0), store=store, features={"f": settings})


def run_costs(guard: Guard, costs: list[float]) -> None:
    for cost in costs:
        with guard.reserve("f") as r:
            r.commit(cost)


def test_learned_estimate_uses_the_fixed_one_until_history_exists() -> None:
    guard = learned_guard(min_samples=20, window=200)
    costs = [i / 1000 for i in range(1, 101)]  # $0.001 … $0.100
    run_costs(guard, costs[:19])
    with guard.reserve("f") as r:
        assert r.plan.estimate_usd == 50_000  # 19 samples: still the fixed $0.05
        r.commit(costs[19])
    run_costs(guard, costs[20:])
    assert guard.learned_estimate("f") == pytest.approx(0.095)
    with guard.reserve("f") as r:
        assert r.plan.estimate_usd == 95_000
        r.release()
    # An explicit estimate always wins.
    with guard.reserve("f", estimate_usd=0.01) as r:
        assert r.plan.estimate_usd == 10_000
        r.release()
    guard.close()


def test_learned_window_slides() -> None:
    guard = learned_guard(min_samples=5, window=10)
    run_costs(guard, [1.0] * 10 + [0.01] * 10)
    assert guard.learned_estimate("f") == pytest.approx(0.01)
    guard.close()


def test_unknown_costs_are_not_learned() -> None:
    guard = learned_guard(min_samples=1, window=10)
    for _ in range(5):
        with guard.reserve("f") as r:
            r.commit()  # cost unknown: the estimate stands, but it is not history
    assert guard.learned_estimate("f") is None
    guard.close()


def test_learned_history_is_shared_through_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'costguard.db'}"
    first = learned_guard(url, min_samples=20, window=200)
    run_costs(first, [0.02] * 50)  # saved every 25 samples
    first.close()
    second = learned_guard(url, min_samples=20, window=200)
    with second.reserve("f") as r:  # the first use loads the saved window in the background
        r.release()
    second.flush()
    assert second.learned_estimate("f") == pytest.approx(0.02)
    second.close()


# --------------------------------------------------------------------------- config


def test_pricing_and_estimator_config(tmp_path: Path) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text(
        """\
store: memory://
pricing:
  models:
    "ft:gpt-4o-mini:acme:*": {input_per_mtok: 0.30, output_per_mtok: 1.20, cache_read_per_mtok: 0.15}
    llama-70b-local: {per_call: 0.002}
  units:
    twilio_sms: 0.0079
features:
  chat:
    monthly_usd: 100
    estimate_usd: 0.02
    estimator: learned
    learn: {percentile: 0.9, window: 50, min_samples: 10}
    max_call_usd: 0.50
"""
    )
    guard = Guard.from_yaml(path, clock=FakeClock())
    assert guard.pricing.units == {"twilio_sms": Decimal("0.0079")}
    assert guard.pricing.micros(TokenUsage("llama-70b-local", None, 1, 1)) == 2000
    chat = guard.feature("chat")
    assert (chat.estimator, chat.max_call_usd) == ("learned", 500_000)
    assert (chat.learn.percentile, chat.learn.window, chat.learn.min_samples) == (0.9, 50, 10)
    guard.close()


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("pricing:\n  models:\n    m: {input_per_mtok: -1}\n", "pricing.models.m.input_per_mtok"),
        ("pricing:\n  units:\n    sms: cheap\n", "pricing.units.sms"),
        ("pricing:\n  models:\n    m: {input_per_mtok: 1, colour: red}\n", "pricing.models.m.colour"),
        ("features:\n  f: {estimator: guess}\n", "features.f.estimator"),
        ("features:\n  f: {learn: {window: 5, min_samples: 10}}\n", "features.f.learn"),
        ("features:\n  f: {max_call_usd: -0.1}\n", "features.f.max_call_usd"),
    ],
)
def test_bad_pricing_config(tmp_path: Path, snippet: str, key: str) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text("store: memory://\n" + snippet)
    with pytest.raises(costguard.ConfigError) as info:
        load_config(path).build()
    assert info.value.path == key, str(info.value)
