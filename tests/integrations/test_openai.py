"""`costguard.integrations.openai.guard` with the real `openai` SDK against the fake API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fake_llm import FakeLLM
from llm_helpers import GPT, estimate_of, price_micros, reserved_micros, spent_micros, usd_cap

import costguard
from costguard import BudgetExceeded, FeatureSettings, Guard, KillSwitchActive, Pricing
from costguard.integrations import openai as cg_openai
from costguard.integrations._streams import flush_abandoned
from helpers import make_guard

MESSAGES = [
    {"role": "system", "content": "You are a support agent for an online shop. Answer in one sentence."},
    {"role": "user", "content": "When will my order #4417 ship? I ordered it on Friday."},
]


def chat(client: Any, **extra: Any) -> Any:
    return client.chat.completions.create(model=GPT, messages=MESSAGES, **{"max_tokens": 200, **extra})


def respond(client: Any, **extra: Any) -> Any:
    return client.responses.create(
        model=GPT,
        instructions="Answer in one sentence.",
        input="When will order #4417 ship?",
        **{"max_output_tokens": 200, **extra},
    )


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    """A fresh fake vendor API per test (its `reported` usage is that test's alone)."""
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = make_guard(usd_cap({"feature": "chat"}, 10_000_000), features={"chat": FeatureSettings(estimate_usd=5000)})
    yield g
    g.close()


@pytest.fixture
def client(llm: FakeLLM) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(api_key="sk-test", base_url=llm.base_url, max_retries=0)
    yield c
    c.close()


def aclient(llm: FakeLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=llm.base_url, max_retries=0)


# --------------------------------------------------------------------------- plain calls


def test_chat_is_priced_with_genai_prices_to_the_micro_dollar(
    llm: FakeLLM, client: openai.OpenAI, guard: Guard
) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    first = chat(guarded)
    second = chat(guarded, extra_headers={"x-fake-cached": "16"})  # cached input is cheaper
    assert isinstance(first, openai.types.chat.ChatCompletion)
    assert first.choices[0].message.content == "Your order ships on Tuesday."
    assert second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == 16
    expected = [price_micros(r) for r in llm.reported]
    assert expected[1] < expected[0]
    assert spent_micros(guard) == sum(expected)
    assert reserved_micros(guard) == 0
    commits = guard.audit(decision="commit")
    assert [c.data["tokens"] for c in commits] == [r["usage"]["total_tokens"] for r in reversed(llm.reported)]


def test_chat_estimate_comes_from_the_request(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    chat(guarded, max_completion_tokens=500, max_tokens=openai.NOT_GIVEN)
    expected = Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=500, provider="openai")
    assert expected is not None
    assert estimate_of(guard) == expected
    chat(guarded, n=3, max_tokens=100)  # three completions of up to 100 tokens each
    assert estimate_of(guard) == Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=300, provider="openai")


def test_no_output_cap_uses_the_feature_estimate(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    guarded.chat.completions.create(model=GPT, messages=MESSAGES)
    assert estimate_of(guard) == 5000  # the feature's estimate_usd
    assert spent_micros(guard) == price_micros(llm.reported[0])


def test_explicit_estimate_wins(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    chat(cg_openai.guard(client, "chat", guard=guard, estimate=0.25))
    assert estimate_of(guard) == 250_000
    seen: list[dict[str, Any]] = []

    def by_request(**request: Any) -> float:
        seen.append(request)
        return 0.001 * len(request["messages"])

    chat(cg_openai.guard(client, "chat", guard=guard, estimate=by_request))
    assert estimate_of(guard) == 2000
    assert seen[0]["model"] == GPT
    assert spent_micros(guard) == sum(price_micros(r) for r in llm.reported)


def test_estimate_tokens_are_input_plus_output_cap(llm: FakeLLM, client: openai.OpenAI) -> None:
    tokens_cap = costguard.Ceiling(
        costguard.model.make_match({"feature": "chat"}),
        (costguard.Limit(costguard.Period.DAY, costguard.Unit.TOKENS, 1000),),
    )
    g = make_guard(tokens_cap)
    guarded = cg_openai.guard(client, "chat", guard=g)
    chat(guarded, max_tokens=200)
    # The real tokens are counted, not the estimate.
    assert spent_micros(g, unit="tokens") == llm.reported[0]["usage"]["total_tokens"]
    with pytest.raises(BudgetExceeded):
        chat(guarded, max_tokens=1000)  # its estimate (prompt + 1000) no longer fits
    assert len(llm.reported) == 1
    g.close()


def test_responses_api(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    response = respond(guarded)
    assert response.output_text == "Your order ships on Tuesday."
    expected_estimate = Pricing().estimate(
        GPT, prompt=["Answer in one sentence.", "When will order #4417 ship?"], max_output_tokens=200, provider="openai"
    )
    assert estimate_of(guard) == expected_estimate
    respond(guarded, extra_headers={"x-fake-cached": "8"})
    assert spent_micros(guard) == sum(price_micros(r) for r in llm.reported)


def test_async_chat_and_responses(llm: FakeLLM, guard: Guard) -> None:
    async def main() -> None:
        async with cg_openai.guard(aclient(llm), "chat", guard=guard) as guarded:
            completion = await chat(guarded)
            assert completion.choices[0].message.content == "Your order ships on Tuesday."
            response = await respond(guarded)
            assert response.output_text == "Your order ships on Tuesday."
            results = await asyncio.gather(*(chat(guarded) for _ in range(4)))
            assert len(results) == 4

    asyncio.run(main())
    assert len(llm.reported) == 6
    assert spent_micros(guard) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(guard) == 0


# --------------------------------------------------------------------------- streams


def test_chat_stream_commits_the_final_usage(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    stream = chat(guarded, stream=True)
    assert reserved_micros(guard) > 0  # reserved while the stream is open
    # costguard asked for usage, but the caller didn't: the usage-only chunk (no choices) is not handed over.
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "Your order ships on Tuesday."
    assert llm.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert spent_micros(guard) == price_micros(llm.reported[0])
    assert reserved_micros(guard) == 0


def test_chat_stream_respects_the_callers_stream_options(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    with chat(guarded, stream=True, stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert chunks[-1].choices == []  # asked for: handed over
    assert chunks[-1].usage is not None
    assert spent_micros(guard) == price_micros(llm.reported[0])

    with chat(guarded, stream=True, stream_options={"include_usage": False}) as stream:
        assert all(chunk.usage is None for chunk in stream)
    assert llm.requests[1]["body"]["stream_options"] == {"include_usage": False}
    # No usage reported: the estimate stands for that call.
    assert spent_micros(guard) == price_micros(llm.reported[0]) + estimate_of(guard)


def test_chat_stream_closed_after_the_first_chunk_keeps_the_estimate(
    llm: FakeLLM, client: openai.OpenAI, guard: Guard
) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    with chat(guarded, stream=True) as stream:
        first = next(stream)
        assert first.choices[0].delta.role == "assistant"
    assert spent_micros(guard) == estimate_of(guard)
    assert reserved_micros(guard) == 0
    stream.close()  # settling twice does nothing
    assert spent_micros(guard) == estimate_of(guard)


def test_abandoned_stream_is_settled_when_collected(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    stream = chat(guarded, stream=True)
    next(stream)
    del stream  # dropped without closing
    gc.collect()
    assert flush_abandoned()
    assert spent_micros(guard) == estimate_of(guard)
    assert reserved_micros(guard) == 0


def test_stream_broken_by_the_network_keeps_the_estimate(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    stream = chat(guarded, stream=True, extra_headers={"x-fake-cut-after": "3"})
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert spent_micros(guard) == estimate_of(guard)
    assert reserved_micros(guard) == 0


def test_responses_stream(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    with respond(guarded, stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert spent_micros(guard) == price_micros(llm.reported[0])

    with respond(guarded, stream=True) as stream:
        assert next(stream).type == "response.created"  # abandoned before response.completed
    assert spent_micros(guard) == price_micros(llm.reported[0]) + estimate_of(guard)


def test_async_streams(llm: FakeLLM, guard: Guard) -> None:
    async def main() -> list[str]:
        guarded = cg_openai.guard(aclient(llm), "chat", guard=guard)
        stream = await chat(guarded, stream=True)
        words = [chunk.choices[0].delta.content async for chunk in stream]
        events = await respond(guarded, stream=True)
        async with events:
            kinds = [event.type async for event in events]
        assert kinds[-1] == "response.completed"
        abandoned = await chat(guarded, stream=True)
        async with abandoned:
            await abandoned.__anext__()
        await guarded.close()
        return [w or "" for w in words]

    assert "".join(asyncio.run(main())) == "Your order ships on Tuesday."
    full = [r for r in llm.reported if r["path"] == "/v1/responses" or r is llm.reported[0]]
    assert spent_micros(guard) == sum(price_micros(r) for r in full) + estimate_of(guard)
    assert reserved_micros(guard) == 0


# --------------------------------------------------------------------------- blocked, errors


def test_cap_blocks_the_fourth_call(llm: FakeLLM, client: openai.OpenAI) -> None:
    estimate = Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=200, provider="openai")
    assert estimate is not None
    probe = make_guard()
    chat(cg_openai.guard(client, "chat", guard=probe))
    probe.close()
    actual = price_micros(llm.reported[0])
    # Three calls fit: before the fourth, 3 actuals + its estimate pass the cap.
    g = make_guard(usd_cap({"feature": "chat"}, 2 * actual + estimate))
    served: list[dict[str, Any]] = []

    def fallback(**request: Any) -> str:
        served.append(request)
        assert costguard.current_decision() is not None
        return "We'll email you."

    guarded = cg_openai.guard(client, "chat", guard=g, fallback=fallback)
    answers = [chat(guarded) for _ in range(4)]
    assert [type(a).__name__ for a in answers[:3]] == ["ChatCompletion"] * 3
    assert answers[3] == "We'll email you."
    assert served[0]["messages"] == MESSAGES
    assert len(llm.reported) == 4  # the probe and three real calls: the fourth never reached the API
    assert spent_micros(g) == 3 * actual

    with pytest.raises(BudgetExceeded) as info:
        chat(cg_openai.guard(client, "chat", guard=g))
    assert info.value.limit_usd == pytest.approx((2 * actual + estimate) / 1e6)
    assert (
        cg_openai.guard(client, "chat", guard=g, fallback="busy").responses.create(
            model=GPT, input="hi", max_output_tokens=200
        )
        == "busy"
    )
    g.close()


def test_blocked_async_call_gets_the_fallback(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 10))

    async def fallback(**request: Any) -> str:
        return f"busy: {request['model']}"

    async def main() -> tuple[Any, Any]:
        client = aclient(llm)
        served = await chat(cg_openai.guard(client, "chat", guard=g, fallback=fallback))
        try:
            await chat(cg_openai.guard(client, "chat", guard=g))
        except BudgetExceeded as exc:
            raised: Any = exc
        await client.close()
        return served, raised

    served, raised = asyncio.run(main())
    assert served == f"busy: {GPT}"
    assert isinstance(raised, BudgetExceeded)
    assert llm.reported == []
    g.close()


def test_kill_switch(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guard.killswitch.activate(reason="incident #123", actor="ops")
    with pytest.raises(KillSwitchActive):
        chat(cg_openai.guard(client, "chat", guard=guard))
    assert chat(cg_openai.guard(client, "chat", guard=guard, fallback=costguard.fallback.static("off"))) == "off"
    assert llm.requests == []


def test_sdk_error_releases_the_reservation(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    with pytest.raises(openai.BadRequestError):
        chat(guarded, extra_headers={"x-fake-status": "400"})
    with pytest.raises(openai.BadRequestError):
        chat(guarded, stream=True, extra_headers={"x-fake-status": "400"})
    assert spent_micros(guard) == 0
    assert reserved_micros(guard) == 0
    assert [r.data["why"] for r in guard.audit(decision="release")] == ["call raised", "call raised"]


def test_sdk_error_keeps_the_estimate_with_on_call_error_keep(llm: FakeLLM, client: openai.OpenAI) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 1_000_000), features={"chat": FeatureSettings(on_call_error="keep")})

    async def main() -> None:
        client = aclient(llm)
        with pytest.raises(openai.BadRequestError):
            await chat(cg_openai.guard(client, "chat", guard=g), extra_headers={"x-fake-status": "400"})
        await client.close()

    with pytest.raises(openai.BadRequestError):
        chat(cg_openai.guard(client, "chat", guard=g), extra_headers={"x-fake-status": "400"})
    asyncio.run(main())
    estimate = Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=200, provider="openai")
    assert estimate is not None
    assert spent_micros(g) == 2 * estimate
    g.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_eight_threads_never_overshoot_the_cap(llm: FakeLLM, store: str, tmp_path: Any) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'cg.db'}"
    estimate = Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=2000, provider="openai")
    assert estimate is not None
    cap = 10 * estimate
    g = make_guard(usd_cap({"feature": "chat"}, cap), store=url)
    llm.delay_s = 0.005  # calls overlap
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with openai.OpenAI(api_key="sk-test", base_url=llm.base_url, max_retries=0) as c:
            guarded = cg_openai.guard(c, "chat", guard=g, fallback="blocked")
            for _ in range(6):
                # Each call uses nearly all of its output cap: actual just below the estimate.
                result = chat(guarded, max_tokens=2000, extra_headers={"x-fake-output-tokens": "1900"})
                with lock:
                    outcomes.append("blocked" if result == "blocked" else "ok")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = outcomes.count("ok")
    assert len(outcomes) == 48
    assert allowed == len(llm.reported)
    assert 10 <= allowed <= 11  # every actual is just below its estimate: cap / estimate calls fit, or one more
    assert outcomes.count("blocked") > 0
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported) <= cap
    g.close()


# --------------------------------------------------------------------------- labels, passthrough, odd cases


def test_labels_merge_with_the_context(llm: FakeLLM, client: openai.OpenAI) -> None:
    per_customer = usd_cap({"customer": "*"}, 1_000_000)
    per_user = usd_cap({"user": "*", "team": "search"}, 1_000_000)
    g = make_guard(per_customer, per_user)
    guarded = cg_openai.guard(client, "chat", guard=g, labels=lambda **req: {"user": req["user"], "team": "search"})
    with costguard.context(customer="acme"):
        chat(guarded, user="u-17")
    chat(guarded, user="u-18")
    assert spent_micros(g, customer="acme") == price_micros(llm.reported[0])
    assert spent_micros(g, user="u-17") == price_micros(llm.reported[0])
    assert spent_micros(g, user="u-18") == price_micros(llm.reported[1])
    mapped = cg_openai.guard(client, "chat", guard=g, labels={"customer": "globex"})
    chat(mapped)
    assert spent_micros(g, customer="globex") == price_micros(llm.reported[2])
    g.close()


def test_other_attributes_pass_through(llm: FakeLLM, client: openai.OpenAI, guard: Guard) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    assert [m.id for m in guarded.models.list()] == [GPT]
    assert guarded.api_key == "sk-test"
    assert str(guarded.base_url) == str(client.base_url)
    assert "chat" in dir(guarded)
    assert "costguard guarded" in repr(guarded)
    faster = guarded.with_options(timeout=5)  # a new client, guarded the same way
    chat(faster)
    chat(guarded.copy(max_retries=0))
    assert spent_micros(guard) == sum(price_micros(r) for r in llm.reported)
    assert len(guard.audit(decision="commit")) == 2  # both calls went through costguard


def test_max_call_usd_refuses_a_runaway_request(llm: FakeLLM, client: openai.OpenAI) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, 10_000_000), features={"chat": FeatureSettings(max_call_usd=10_000)})
    guarded = cg_openai.guard(client, "chat", guard=g, fallback=lambda **request: "too big")
    assert chat(guarded, max_tokens=200) != "too big"
    assert chat(guarded, max_tokens=100_000) == "too big"  # 100k output tokens: $0.06 > $0.01
    assert len(llm.reported) == 1
    assert g.audit(decision="blocked")[0].data["reason"] == "max_call_usd"
    g.close()


def test_unknown_model_warns_once_and_keeps_the_estimate(
    llm: FakeLLM, client: openai.OpenAI, guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = cg_openai.guard(client, "chat", guard=guard)
    with caplog.at_level(logging.WARNING, logger="costguard"):
        for _ in range(2):
            guarded.chat.completions.create(model="acme-support-llm-7", messages=MESSAGES, max_tokens=200)
    assert caplog.text.count("no price for model 'acme-support-llm-7'") == 1
    assert spent_micros(guard) == 2 * 5000  # the feature's estimate, twice
    tokens = [c.data["tokens"] for c in guard.audit(decision="commit")]
    assert tokens == [r["usage"]["total_tokens"] for r in llm.reported]


def test_duck_typed_client_needs_no_sdk() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}

    class Completions:
        def create(self, **request: Any) -> dict[str, Any]:
            return {"model": request["model"], "usage": usage}

    class AsyncResponses:
        async def create(self, **request: Any) -> dict[str, Any]:
            return {"model": request["model"], "usage": {"input_tokens": 1000, "output_tokens": 500}}

    class Client:
        chat = type("Chat", (), {"completions": Completions()})()
        responses = AsyncResponses()

    g = make_guard(usd_cap({"feature": "f"}, 1_000_000))
    guarded = cg_openai.guard(Client(), "f", guard=g)
    assert guarded.chat.completions.create(model=GPT, messages=[], max_tokens=500)["usage"] == usage
    asyncio.run(guarded.responses.create(model=GPT, input="x", max_output_tokens=500))
    assert spent_micros(g) == 2 * round(1000 * 0.15 + 500 * 0.6)
    g.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="feature name"):
        cg_openai.guard(object(), "")
    with pytest.raises(TypeError, match="labels"):
        cg_openai.guard(object(), "f", labels=["customer"])  # type: ignore[arg-type]


def test_default_guard_is_looked_up_at_call_time(llm: FakeLLM, client: openai.OpenAI) -> None:
    guarded = cg_openai.guard(client, "chat")  # no guard configured yet: wrapping touches nothing
    g = make_guard(usd_cap({"feature": "chat"}, 1_000_000))
    costguard.configure(g)
    try:
        chat(guarded)
    finally:
        costguard.configure(None)
    assert spent_micros(g) == price_micros(llm.reported[0])
    g.close()
