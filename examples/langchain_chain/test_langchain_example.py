"""The LangChain example, on its own costguard.yaml and the fake chat model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("langchain_core")

import costguard
from costguard.pricing import Pricing, TokenUsage

HERE = Path(__file__).resolve().parent


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costguard_langchain_example", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_answers_until_the_ceiling_then_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    module = load_example()
    guard = costguard.Guard.from_yaml(HERE / "costguard.yaml")
    try:
        answers = module.main(guard)
        fallback = "Our assistant is busy; a person will answer you by email."
        served = [a for a in answers if a != fallback]
        assert served == [f"[simulated answer #{n}]" for n in range(1, len(served) + 1)]
        assert 0 < len(served) < len(answers)
        assert answers[len(served) :] == [fallback] * (len(answers) - len(served))
        # Spend is the fake's reported usage priced by costguard's table, to the micro-dollar.
        pricing = Pricing()
        expected = sum(
            pricing.micros(TokenUsage("gpt-4o-mini-2024-07-18", None, 118 + n, 57 + n)) or 0
            for n in range(1, len(served) + 1)
        )
        (row,) = guard.status(feature="support_answers").ceilings
        assert round(row.spent * 1_000_000) == expected
        assert row.reserved == 0
    finally:
        guard.close()
