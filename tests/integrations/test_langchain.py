"""`costguard.integrations.langchain` with real LangChain (langchain-openai's `ChatOpenAI`) against the fake API."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain_core")
langchain_openai = pytest.importorskip("langchain_openai")

import httpx  # noqa: E402
import openai  # noqa: E402
from fake_llm import FakeLLM  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from llm_helpers import GPT, estimate_of, price_micros, reserved_micros, spent_micros, usd_cap  # noqa: E402

import costguard  # noqa: E402
from costguard import BudgetExceeded, FeatureSettings, Guard, KillSwitchActive, Pricing  # noqa: E402
from costguard.integrations.langchain import CostGuardCallback, guard  # noqa: E402
from helpers import make_guard  # noqa: E402

SYSTEM = "You are a support agent for an online shop. Answer in one sentence."
QUESTION = "When will my order #4417 ship? I ordered it on Friday."
MESSAGES = [SystemMessage(SYSTEM), HumanMessage(QUESTION)]
ANSWER = "Your order ships on Tuesday."


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def g() -> Iterator[Guard]:
    guard_ = make_guard(usd_cap({"feature": "chat"}, 10_000_000), features={"chat": FeatureSettings(estimate_usd=5000)})
    yield guard_
    guard_.close()


def chat_model(llm: FakeLLM, **extra: Any) -> Any:
    options = {"max_tokens": 200, **extra}
    return langchain_openai.ChatOpenAI(
        model=GPT, api_key="sk-test", base_url=llm.base_url, max_retries=0, stream_usage=True, **options
    )


def the_estimate(max_tokens: int = 200) -> int:
    estimate = Pricing().estimate(GPT, prompt=[SYSTEM, QUESTION], max_output_tokens=max_tokens, provider="openai")
    assert estimate is not None
    return estimate


# --------------------------------------------------------------------------- counting


def test_callback_commits_exactly_the_reported_usage(llm: FakeLLM, g: Guard) -> None:
    handler = CostGuardCallback("chat", guard=g)
    model = chat_model(llm)
    first = model.invoke(MESSAGES, config={"callbacks": [handler]})
    assert first.content == ANSWER
    assert estimate_of(g) == the_estimate()  # the prompt's tokens plus max_tokens, at costguard's price
    cached = chat_model(llm, default_headers={"x-fake-cached": "16"})
    cached.invoke(MESSAGES, config={"callbacks": [handler]})
    expected = [price_micros(r) for r in llm.reported]
    assert expected[1] < expected[0]  # cache reads are priced as such
    assert spent_micros(g) == sum(expected)
    assert reserved_micros(g) == 0
    tokens = [c.data["tokens"] for c in reversed(g.audit(decision="commit"))]
    assert tokens == [r["usage"]["total_tokens"] for r in llm.reported]


def test_every_model_call_of_a_chain_is_counted(llm: FakeLLM, g: Guard) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
    chain = prompt | chat_model(llm) | StrOutputParser()
    handler = CostGuardCallback("chat", guard=g)
    answers = chain.batch([{"question": QUESTION}, {"question": "Do you ship to Norway?"}], {"callbacks": [handler]})
    assert answers == [ANSWER, ANSWER]
    assert len(llm.reported) == 2
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0


def test_no_output_cap_reserves_the_feature_estimate(llm: FakeLLM, g: Guard) -> None:
    model = langchain_openai.ChatOpenAI(model=GPT, api_key="sk-test", base_url=llm.base_url, max_retries=0)
    model.invoke(MESSAGES, config={"callbacks": [CostGuardCallback("chat", guard=g)]})
    assert estimate_of(g) == 5000
    assert spent_micros(g) == price_micros(llm.reported[0])


def test_sync_and_async_streams_commit_the_final_usage(llm: FakeLLM, g: Guard) -> None:
    model = guard(chat_model(llm), "chat", guard=g)
    assert "".join(str(chunk.content) for chunk in model.stream(MESSAGES)) == ANSWER

    async def main() -> list[str]:
        words = [str(chunk.content) async for chunk in model.astream(MESSAGES)]
        reply = await model.ainvoke(MESSAGES)
        replies = await asyncio.gather(*(model.ainvoke(MESSAGES) for _ in range(3)))
        return [*words, str(reply.content), *(str(r.content) for r in replies)]

    assert asyncio.run(main())[-1] == ANSWER
    assert llm.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert len(llm.reported) == 6
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0


def test_concurrent_runs_never_mix_and_never_overshoot(llm: FakeLLM) -> None:
    estimate = the_estimate(2000)
    cap = 10 * estimate
    g = make_guard(usd_cap({"feature": "chat"}, cap))
    llm.delay_s = 0.005  # calls overlap: reservations are told apart by LangChain's run_id
    model = guard(
        chat_model(llm, max_tokens=2000, default_headers={"x-fake-output-tokens": "1900"}),
        "chat",
        guard=g,
        fallback="blocked",
    )
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            answer = model.invoke(MESSAGES)
            with lock:
                outcomes.append("blocked" if answer.content == "blocked" else "ok")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 30
    assert outcomes.count("ok") == len(llm.reported)
    assert 10 <= outcomes.count("ok") <= 11
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported) <= cap
    assert reserved_micros(g) == 0
    g.close()


# --------------------------------------------------------------------------- blocked


def test_a_cap_admits_exactly_what_fits_then_the_fallback_answers(llm: FakeLLM) -> None:
    probe = make_guard()
    chat_model(llm).invoke(MESSAGES, config={"callbacks": [CostGuardCallback("chat", guard=probe)]})
    probe.close()
    actual = price_micros(llm.reported[0])
    g = make_guard(usd_cap({"feature": "chat"}, 2 * actual + the_estimate()))  # three calls fit
    seen: list[Any] = []

    def fallback(messages: Any) -> str:
        seen.append(messages)
        decision = costguard.current_decision()
        assert decision is not None
        assert not decision.allowed
        return "We'll email you."

    model = guard(chat_model(llm), "chat", guard=g, fallback=fallback)
    answers = [model.invoke(MESSAGES) for _ in range(5)]
    assert [a.content for a in answers] == [ANSWER] * 3 + ["We'll email you."] * 2
    assert isinstance(answers[-1], AIMessage)
    assert seen[0] == MESSAGES  # a callable fallback gets the model's input
    assert len(llm.reported) == 4  # the probe and three admitted calls: the refused ones never reached the API
    assert spent_micros(g) == 3 * actual
    assert reserved_micros(g) == 0
    assert len(g.audit(decision="blocked")) == 2
    g.close()


def test_blocked_streams_and_async_calls_get_the_fallback(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 10))

    async def busy(messages: Any) -> str:
        return "busy (async)"

    model = guard(chat_model(llm), "chat", guard=g, fallback="busy")
    assert [str(c.content) for c in model.stream(MESSAGES)] == ["busy"]

    async def main() -> list[str]:
        chunks = [str(c.content) async for c in model.astream(MESSAGES)]
        reply = await guard(chat_model(llm), "chat", guard=g, fallback=busy).ainvoke(MESSAGES)
        return [*chunks, str(reply.content)]

    assert asyncio.run(main()) == ["busy", "busy (async)"]
    assert llm.requests == []
    g.close()


def test_a_refusal_is_not_logged_as_a_broken_callback(llm: FakeLLM, caplog: pytest.LogCaptureFixture) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 10))
    with caplog.at_level(logging.WARNING):
        assert guard(chat_model(llm), "chat", guard=g, fallback="busy").invoke(MESSAGES).content == "busy"
        with pytest.raises(openai.BadRequestError):  # a real error is still LangChain's to report
            chat_model(llm, default_headers={"x-fake-status": "400"}).invoke(
                MESSAGES, config={"callbacks": [_Failing()]}
            )
    assert "BudgetExceeded" not in caplog.text
    assert "Error in _Failing.on_llm_error callback" in caplog.text
    g.close()


class _Failing(BaseCallbackHandler):
    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        raise RuntimeError("a broken handler")


def test_the_feature_fallback_and_no_fallback(llm: FakeLLM) -> None:
    g = make_guard(
        usd_cap({"feature": "chat"}, 10),
        features={"chat": FeatureSettings(fallback=costguard.fallback.static("configured"))},
    )
    assert guard(chat_model(llm), "chat", guard=g).invoke(MESSAGES).content == "configured"
    bare = make_guard(usd_cap({"feature": "chat"}, 10))
    with pytest.raises(BudgetExceeded):
        guard(chat_model(llm), "chat", guard=bare).invoke(MESSAGES)
    chain = chat_model(llm) | StrOutputParser()
    with pytest.raises(BudgetExceeded):  # the handler alone: a refused call raises out of the chain
        chain.invoke(MESSAGES, config={"callbacks": [CostGuardCallback("chat", guard=bare)]})
    assert llm.requests == []
    g.close()
    bare.close()


def test_kill_switch(llm: FakeLLM, g: Guard) -> None:
    g.killswitch.activate(reason="incident #123", actor="ops")
    with pytest.raises(KillSwitchActive):
        chat_model(llm).invoke(MESSAGES, config={"callbacks": [CostGuardCallback("chat", guard=g)]})
    assert guard(chat_model(llm), "chat", guard=g, fallback="off").invoke(MESSAGES).content == "off"
    assert llm.requests == []


def test_an_error_releases_the_reservation(llm: FakeLLM, g: Guard) -> None:
    failing = chat_model(llm, default_headers={"x-fake-status": "400"})
    handler = CostGuardCallback("chat", guard=g)
    with pytest.raises(openai.BadRequestError):
        failing.invoke(MESSAGES, config={"callbacks": [handler]})

    async def main() -> None:
        with pytest.raises(openai.BadRequestError):
            await failing.ainvoke(MESSAGES, config={"callbacks": [handler]})

    asyncio.run(main())
    assert spent_micros(g) == 0
    assert reserved_micros(g) == 0
    assert [r.data["why"] for r in g.audit(decision="release")] == ["call raised", "call raised"]


def test_a_stream_cut_after_output_began_keeps_the_estimate(llm: FakeLLM, g: Guard) -> None:
    model = guard(chat_model(llm, default_headers={"x-fake-cut-after": "3"}), "chat", guard=g)
    with pytest.raises(openai.APIError):
        for _ in model.stream(MESSAGES):
            pass
    assert spent_micros(g) == the_estimate()  # the call ran and may have cost up to its estimate
    assert reserved_micros(g) == 0


# --------------------------------------------------------------------------- agents, labels


def test_an_agent_counts_each_model_call_and_ends_on_the_fallback(llm: FakeLLM) -> None:
    agents = pytest.importorskip("langchain.agents")
    calls: list[str] = []

    def order_status() -> str:
        """Where order #4417 is."""
        calls.append("order_status")
        return "shipped on Monday"

    g = make_guard(usd_cap({"feature": "chat"}, 10_000_000))
    model = guard(chat_model(llm, default_headers={"x-fake-tool-call": "order_status"}), "chat", guard=g)
    agent = agents.create_agent(model, tools=[order_status])
    result = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    assert result["messages"][-1].content == ANSWER
    assert calls == ["order_status"]
    assert len(llm.reported) == 2  # a tool call, then the answer: two model calls, both counted
    assert llm.requests[0]["body"]["tools"][0]["function"]["name"] == "order_status"
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)

    # The second model call no longer fits: the agent ends with the fallback as the model's answer.
    tight = make_guard(usd_cap({"feature": "chat"}, price_micros(llm.reported[0]) + 1))
    model = guard(
        chat_model(llm, max_tokens=1, default_headers={"x-fake-tool-call": "order_status"}),
        "chat",
        guard=tight,
        fallback="Our agent is busy; we'll email you.",
        estimate=price_micros(llm.reported[0]) / 1e6,
    )
    result = agents.create_agent(model, tools=[order_status]).invoke({"messages": [{"role": "user", "content": "?"}]})
    assert result["messages"][-1].content == "Our agent is busy; we'll email you."
    assert len(llm.reported) == 3  # only the first call of this run reached the API
    g.close()
    tight.close()


def test_labels_from_the_context_and_the_run_metadata(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"customer": "*"}, 1_000_000), usd_cap({"user": "*"}, 1_000_000))
    handler = CostGuardCallback("chat", guard=g, labels=lambda metadata: {"user": metadata.get("user", "anon")})
    model = chat_model(llm)
    with costguard.context(customer="acme"):
        model.invoke(MESSAGES, config={"callbacks": [handler], "metadata": {"user": "u-17"}})
    assert spent_micros(g, customer="acme") == price_micros(llm.reported[0])
    assert spent_micros(g, user="u-17") == price_micros(llm.reported[0])

    async def main() -> None:
        with costguard.context(customer="globex"):  # the async run carries the context into the handler
            await guard(model, "chat", guard=g, labels={"user": "u-18"}).ainvoke(MESSAGES)

    asyncio.run(main())
    assert spent_micros(g, customer="globex") == price_micros(llm.reported[1])
    assert spent_micros(g, user="u-18") == price_micros(llm.reported[1])
    g.close()


def test_default_guard_and_bad_arguments(llm: FakeLLM) -> None:
    model = guard(chat_model(llm), "chat")  # nothing configured yet: wrapping touches no guard
    g = make_guard(usd_cap({"feature": "chat"}, 1_000_000))
    costguard.configure(g)
    try:
        model.invoke(MESSAGES)
    finally:
        costguard.configure(None)
    assert spent_micros(g) == price_micros(llm.reported[0])
    g.close()
    with pytest.raises(ValueError, match="feature name"):
        CostGuardCallback("")
    with pytest.raises(TypeError, match="labels"):
        CostGuardCallback("chat", labels=["customer"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cached"):
        guard(chat_model(llm), "chat", fallback=costguard.fallback.cached())


# --------------------------------------------------------------------------- completion models (on_llm_start)

INSTRUCT = "gpt-3.5-turbo-instruct"
PROMPT = f"{SYSTEM}\nCustomer: {QUESTION}\nAgent:"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The sync HTTP client of completion models (unlike ChatOpenAI, each would make its own and leave it open)."""
    with httpx.Client() as client:
        yield client


def completion_model(llm: FakeLLM, **extra: Any) -> Any:
    options = {"max_tokens": 200, **extra}
    return langchain_openai.OpenAI(model=INSTRUCT, api_key="sk-test", base_url=llm.base_url, max_retries=0, **options)


def test_a_completion_model_commits_exactly_the_reported_usage(llm: FakeLLM, g: Guard, http: httpx.Client) -> None:
    handler = CostGuardCallback("chat", guard=g)
    assert completion_model(llm, http_client=http).invoke(PROMPT, config={"callbacks": [handler]}) == ANSWER
    estimate = Pricing().estimate(INSTRUCT, prompt=PROMPT, max_output_tokens=200, provider="openai")
    assert estimate_of(g) == estimate  # the prompt's tokens plus max_tokens, at costguard's price
    assert spent_micros(g) == price_micros(llm.reported[0])

    async def main() -> str:
        async with httpx.AsyncClient() as client:
            model = completion_model(llm, http_async_client=client)
            return str(await model.ainvoke(PROMPT, config={"callbacks": [handler]}))

    assert asyncio.run(main()) == ANSWER
    assert [r["path"] for r in llm.reported] == ["/v1/completions"] * 2
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0
    tokens = [c.data["tokens"] for c in reversed(g.audit(decision="commit"))]
    assert tokens == [r["usage"]["total_tokens"] for r in llm.reported]


def test_a_batch_sent_as_one_request_is_counted_once(llm: FakeLLM, g: Guard, http: httpx.Client) -> None:
    handler = CostGuardCallback("chat", guard=g)
    prompts = [PROMPT, "Do you ship to Norway?", "Hi"]
    assert completion_model(llm, http_client=http).batch(prompts, config={"callbacks": [handler]}) == [ANSWER] * 3

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            model = completion_model(llm, http_async_client=client)
            return list(await model.abatch(prompts, config={"callbacks": [handler]}))

    assert asyncio.run(main()) == [ANSWER] * 3
    assert len(llm.reported) == 2  # one request per batch, its usage reported on the first prompt's run
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0
    reported = sorted(r["usage"]["total_tokens"] for r in llm.reported)
    assert sorted(c.data["tokens"] for c in g.audit(decision="commit")) == [0] * 4 + reported


def test_a_blocked_completion_model_answers_with_the_fallback_text(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 10))
    model = guard(completion_model(llm), "chat", guard=g, fallback="busy")
    assert model.invoke(PROMPT) == "busy"  # a string, as the model answers
    assert list(model.stream(PROMPT)) == ["busy"]
    assert asyncio.run(model.ainvoke(PROMPT)) == "busy"
    g.killswitch.activate(reason="incident #123", actor="ops")
    assert model.invoke(PROMPT) == "busy"
    with pytest.raises(KillSwitchActive):
        guard(completion_model(llm), "chat", guard=g).invoke(PROMPT)
    assert llm.requests == []  # refused calls never open a connection
    assert len(g.audit(decision="blocked")) == 5
    g.close()


def test_a_completion_stream_cut_after_output_began_keeps_the_estimate(
    llm: FakeLLM, g: Guard, http: httpx.Client
) -> None:
    model = guard(completion_model(llm, http_client=http, default_headers={"x-fake-cut-after": "3"}), "chat", guard=g)
    with pytest.raises(openai.APIError):
        for _ in model.stream(PROMPT):
            pass
    assert spent_micros(g) == estimate_of(g)  # the call ran and may have cost up to its estimate
    assert reserved_micros(g) == 0
