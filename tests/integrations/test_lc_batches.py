"""A LangChain completion model's batch: the request's usage is on its first prompt's run, `{}` on the
others whether or not the provider reported any. Empty usage is $0 only when the first run reported the
request's usage; otherwise each prompt keeps its estimate — never $0 on a guess, never left held."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.outputs import Generation, LLMResult
from llm_helpers import spent_micros

from costguard import FeatureSettings
from costguard.integrations import _lc_batches
from costguard.integrations._lc_batches import Batches
from costguard.integrations.langchain import CostGuardCallback
from costguard.reservation import Reservation
from helpers import make_guard, usd_ceiling

ESTIMATE = 5_000  # micro-dollars: the feature's estimate (the model has no output cap here)


def batch_of(handler: CostGuardCallback, size: int) -> list[uuid.UUID]:
    runs = [uuid.uuid4() for _ in range(size)]
    for run_id in runs:
        handler.on_llm_start(
            {}, ["Hi"], run_id=run_id, invocation_params={"model_name": "gpt-4o-mini"}, batch_size=size
        )
    return runs


def ended(
    handler: CostGuardCallback, runs: list[uuid.UUID], llm_output: dict[str, Any] | None, order: list[int]
) -> None:
    """End the runs in `order` with what `LLMResult.flatten` gives each (the first prompt's run keeps
    `llm_output`, the others get its copy with `token_usage: {}`)."""
    result = LLMResult(generations=[[Generation(text="ok")] for _ in runs], llm_output=llm_output)
    flat = result.flatten()
    for index in order:
        handler.on_llm_end(flat[index], run_id=runs[index])


def guarded() -> tuple[Any, CostGuardCallback]:
    g = make_guard(
        usd_ceiling({"feature": "chat"}, month=100.0), features={"chat": FeatureSettings(estimate_usd=ESTIMATE)}
    )
    return g, CostGuardCallback("chat", guard=g)


USAGE = {"token_usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}, "model_name": "gpt-4o-mini"}


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]], ids=["first-first", "first-between", "first-last"])
def test_a_batch_whose_first_run_reported_usage_is_counted_once_in_any_order(order: list[int]) -> None:
    g, handler = guarded()
    runs = batch_of(handler, 3)
    ended(handler, runs, USAGE, order)
    alone, solo = guarded()
    ended(solo, batch_of(solo, 1), USAGE, [0])
    assert spent_micros(g) == spent_micros(alone) > 0  # the request's usage, once
    assert g.status().ceilings[0].reserved == 0
    g.close()
    alone.close()


@pytest.mark.parametrize("llm_output", [None, {"model_name": "some-completion-model"}], ids=["none", "no-usage"])
def test_a_batch_with_no_usage_reported_keeps_every_prompts_estimate(llm_output: dict[str, Any] | None) -> None:
    g, handler = guarded()
    runs = batch_of(handler, 3)
    ended(handler, runs, llm_output, [1, 0, 2])
    assert spent_micros(g) == 3 * ESTIMATE  # never counted at $0 on a guess
    assert g.status().ceilings[0].reserved == 0
    g.close()


def test_runs_whose_first_run_never_ends_keep_their_estimates_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lc_batches, "WAIT_S", 0.05)
    settled: list[tuple[Any, bool]] = []
    batches = Batches(lambda reservation, counted: settled.append((reservation, counted)))
    first, second = object(), object()
    batches.other(first)  # type: ignore[arg-type]
    batches.other(second)  # type: ignore[arg-type]
    assert settled == []
    deadline = time.monotonic() + 5
    while len(settled) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert settled == [(first, False), (second, False)]
    batches.first(3, True)  # too late for them: what it leaves expires unused
    time.sleep(0.1)
    late: Reservation = object()  # type: ignore[assignment]
    batches.other(late)
    assert settled[2:] == []  # waits for its own first run, not the stale settlement
