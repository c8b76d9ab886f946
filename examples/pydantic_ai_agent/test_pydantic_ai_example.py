"""The pydantic-ai example, on its own costguard.yaml and pydantic-ai's TestModel."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("pydantic_ai")

import costguard

HERE = Path(__file__).resolve().parent


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costguard_pydantic_ai_example", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_run_has_its_own_budget_and_ends_on_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    module = load_example()
    guard = costguard.Guard.from_yaml(HERE / "costguard.yaml")
    # `run_sync` runs on the thread's event loop: the test's own, closed after it (one left open is
    # collected in some later test, whose run then fails on its unclosed sockets).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        answers = module.main(guard)
        assert set(answers) == {"r-1", "r-2"}
        assert all(a.startswith("The triage agent is over its budget") for a in answers.values())
        for run_id in answers:
            (row,) = [r for r in guard.status(run=run_id).ceilings if "run" in r.labels]
            assert 0 < row.spent <= row.limit  # the first request was admitted and committed; the second refused
            assert row.reserved == 0
        guard.flush()
        assert len(guard.audit(decision="commit")) == 2  # one request per run reached the model
        assert len(guard.audit(decision="blocked")) == 2
    finally:
        guard.close()
        asyncio.set_event_loop(None)
        loop.close()
