"""The LiteLLM example, on its own costguard.yaml and LiteLLM's mock_response (no network)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("litellm")

import costguard
from costguard.pricing import Pricing, TokenUsage

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore:Accessing the 'model_(computed_)?fields' attribute:DeprecationWarning"),
]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costguard_litellm_example", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summaries_until_the_ceiling_then_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    module = load_example()
    guard = costguard.Guard.from_yaml(HERE / "costguard.yaml")
    try:
        summaries = module.main(guard)
        paused = "Summaries are paused for today."
        served = [s for s in summaries if s != paused]
        assert len(served) == 3
        assert summaries[3:] == [paused] * 2
        assert all(s.startswith("[summary of:") for s in served)
        # LiteLLM's mock reports 10 prompt and 20 completion tokens; spend is that, priced by costguard.
        each = Pricing().micros(TokenUsage("gpt-4o-mini", "openai", 10, 20))
        assert each is not None
        (row,) = guard.status(feature="summaries").ceilings
        assert round(row.spent * 1_000_000) == 3 * each
        assert row.reserved == 0
    finally:
        guard.close()
        for obj in gc.get_objects():  # LiteLLM's own stray event loops (see tests/integrations/test_litellm.py)
            # type(), not isinstance: isinstance would set up lazy objects (Django's storages)
            if issubclass(type(obj), asyncio.BaseEventLoop) and not obj.is_running() and not obj.is_closed():
                obj.close()
