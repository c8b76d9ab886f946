"""`costguard.integrations.pydantic_ai.GuardedModel` with a real pydantic-ai Agent against the fake API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

pytest.importorskip("pydantic_ai")

import openai
from fake_llm import FakeLLM
from llm_helpers import GPT, estimate_of, price_micros, reserved_micros, spent_micros, usd_cap
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import costguard
from costguard import BudgetExceeded, KillSwitchActive
from costguard.integrations.pydantic_ai import GuardedModel
from helpers import make_guard

T = TypeVar("T")
ANSWER = "Your order ships on Tuesday."
SETTINGS: Any = {"max_tokens": 200}


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def with_model(llm: FakeLLM, body: Callable[[OpenAIChatModel], Awaitable[T]], **headers: str) -> T:
    """Run `body` with a pydantic-ai OpenAI model on the fake API; its HTTP client is closed after."""

    async def main() -> T:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=llm.base_url, max_retries=0, default_headers=headers
        ) as client:
            return await body(OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client)))

    return asyncio.run(main())


def test_each_request_commits_exactly_the_reported_usage(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "agent"}, 10_000_000))

    async def body(model: OpenAIChatModel) -> list[str]:
        agent = Agent(GuardedModel(model, "agent", guard=g), model_settings=SETTINGS)
        first = await agent.run("When will my order #4417 ship?")
        second = await agent.run("And order #4418?")
        return [first.output, second.output]

    assert with_model(llm, body) == [ANSWER, ANSWER]
    assert estimate_of(g) > 0
    assert len(llm.reported) == 2
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0
    g.close()


def one_request_price(llm: FakeLLM) -> int:
    """What one request of the agent costs at the fake API's reported usage (micro-dollars), on a guard of
    its own."""
    probe = make_guard()

    async def once(model: OpenAIChatModel) -> None:
        await Agent(GuardedModel(model, "agent", guard=probe), model_settings=SETTINGS).run("When will it ship?")

    with_model(llm, once)
    probe.close()
    return price_micros(llm.reported[0])


def test_a_run_cap_admits_exactly_what_fits_then_the_fallback(llm: FakeLLM) -> None:
    actual = one_request_price(llm)
    estimate = 2 * actual  # the fake's answers cost less than this
    g = make_guard(usd_cap({"run": "*"}, 2 * actual + estimate))  # three requests of one run fit

    async def body(model: OpenAIChatModel) -> list[str]:
        guarded = GuardedModel(model, "agent", guard=g, fallback="busy", estimate=estimate / 1e6)
        agent = Agent(guarded, model_settings=SETTINGS)
        with costguard.context(run="r-42"):
            outputs = [(await agent.run("When will it ship?")).output for _ in range(5)]
        with costguard.context(run="r-43"):  # another run has its own counter
            outputs.append((await agent.run("When will it ship?")).output)
        bare = Agent(GuardedModel(model, "agent", guard=g, estimate=estimate / 1e6))
        with costguard.context(run="r-42"), pytest.raises(BudgetExceeded):
            await bare.run("When will it ship?")
        return outputs

    assert with_model(llm, body) == [ANSWER] * 3 + ["busy"] * 2 + [ANSWER]
    assert len(llm.reported) == 5  # the probe, three requests of r-42, one of r-43
    assert spent_micros(g, run="r-42") == 3 * actual
    g.close()


def test_an_error_releases(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "agent"}, 10_000_000))

    async def body(model: OpenAIChatModel) -> None:
        with pytest.raises(Exception, match="400"):
            await Agent(GuardedModel(model, "agent", guard=g), model_settings=SETTINGS).run("hi")

    with_model(llm, body, **{"x-fake-status": "400"})
    assert spent_micros(g) == 0
    assert reserved_micros(g) == 0
    assert [r.data["why"] for r in g.audit(decision="release")] == ["call raised"]
    g.close()


def test_a_stream_commits_its_usage(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "agent"}, 10_000_000))

    async def body(model: OpenAIChatModel) -> str:
        agent = Agent(GuardedModel(model, "agent", guard=g), model_settings=SETTINGS)
        async with agent.run_stream("When will it ship?") as result:
            return await result.get_output()

    assert with_model(llm, body) == ANSWER
    assert len(llm.reported) == 1
    assert spent_micros(g) == price_micros(llm.reported[0])
    assert reserved_micros(g) == 0
    g.close()


def test_a_refused_stream_answers_with_the_fallback_as_a_stream(llm: FakeLLM) -> None:
    actual = one_request_price(llm)
    estimate = 2 * actual
    g = make_guard(usd_cap({"feature": "agent"}, actual + estimate - 1))  # one request fits, the next doesn't

    async def streamed(agent: Agent[None, str]) -> tuple[list[str], str]:
        async with agent.run_stream("When will it ship?") as result:
            deltas = [text async for text in result.stream_text(delta=True)]
            return deltas, await result.get_output()

    async def body(model: OpenAIChatModel) -> list[tuple[list[str], str]]:
        guarded = GuardedModel(model, "agent", guard=g, fallback="busy", estimate=estimate / 1e6)
        agent = Agent(guarded, model_settings=SETTINGS)
        outcomes = [await streamed(agent), await streamed(agent)]  # admitted, then over the cap
        g.killswitch.activate(reason="incident #123", actor="ops")
        outcomes.append(await streamed(agent))
        bare = Agent(GuardedModel(model, "agent", guard=g, estimate=estimate / 1e6))
        with pytest.raises(KillSwitchActive):  # no fallback: refused as before
            await streamed(bare)
        return outcomes

    outcomes = with_model(llm, body)
    assert outcomes[0][1] == ANSWER
    assert outcomes[1:] == [(["busy"], "busy")] * 2
    assert len(llm.reported) == 2  # the probe and the one admitted stream: refused ones never reached the API
    assert spent_micros(g) == actual  # the fallback counts nothing
    assert reserved_micros(g) == 0
    assert len(g.audit(decision="blocked")) == 3
    g.close()


def test_a_tool_calling_run_counts_both_requests_against_the_run(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"run": "*"}, 10_000_000))
    calls: list[str] = []
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=llm.base_url,
        max_retries=0,
        default_headers={"x-fake-tool-call": "order_status"},
    )
    model = OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client))
    agent = Agent(GuardedModel(model, "agent", guard=g), model_settings=SETTINGS)

    @agent.tool_plain
    def order_status() -> str:
        """Where order #4417 is."""
        calls.append("order_status")
        return "shipped on Monday"

    loop = asyncio.new_event_loop()  # run_sync runs on the current loop: this test's, closed with its client
    asyncio.set_event_loop(loop)
    try:
        with costguard.context(run="r-7"):
            result = agent.run_sync("When will my order #4417 ship?")  # the sync face, same requests
    finally:
        loop.run_until_complete(client.close())
        asyncio.set_event_loop(None)
        loop.close()
    assert result.output == ANSWER
    assert calls == ["order_status"]
    assert len(llm.reported) == 2  # a tool call, then the answer
    assert llm.requests[0]["body"]["tools"][0]["function"]["name"] == "order_status"
    assert [m["role"] for m in llm.requests[1]["body"]["messages"]][-1] == "tool"
    assert spent_micros(g, run="r-7") == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0
    g.flush()
    assert [r.labels.get("run") for r in g.audit(decision="commit")] == ["r-7", "r-7"]
    g.close()
