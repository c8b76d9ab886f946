"""`costguard.integrations.anthropic.guard` with the real `anthropic` SDK against the fake API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from fake_llm import FakeLLM
from llm_helpers import CLAUDE, estimate_of, price_micros, reserved_micros, spent_micros, usd_cap

import costguard
from costguard import BudgetExceeded, Guard, Pricing
from costguard.integrations import anthropic as cg_anthropic
from costguard.integrations._streams import flush_abandoned
from helpers import make_guard

# The SDK flags the claude-3-5 models as deprecated; the tests use one genai-prices has had for long.
pytestmark = pytest.mark.filterwarnings("ignore:The model 'claude-3-5-haiku-20241022' is deprecated:DeprecationWarning")

SYSTEM = "You are a support agent for an online shop. Answer in one sentence."
MESSAGES = [{"role": "user", "content": "When will my order #4417 ship? I ordered it on Friday."}]


def ask(client: Any, **extra: Any) -> Any:
    request = {"model": CLAUDE, "max_tokens": 300, "system": SYSTEM, "messages": MESSAGES}
    return client.messages.create(**{**request, **extra})


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    """A fresh fake vendor API per test (its `reported` usage is that test's alone)."""
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def guard() -> Iterator[Guard]:
    g = make_guard(usd_cap({"feature": "chat"}, 10_000_000))
    yield g
    g.close()


@pytest.fixture
def client(llm: FakeLLM) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(api_key="sk-ant-test", base_url=llm.anthropic_url, max_retries=0)
    yield c
    c.close()


def aclient(llm: FakeLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=llm.anthropic_url, max_retries=0)


def test_messages_priced_to_the_micro_dollar(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    message = ask(guarded)
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == "Your order ships on Tuesday."  # type: ignore[union-attr]
    ask(guarded, extra_headers={"x-fake-cached": "20"})  # cache reads are cheaper
    expected = [price_micros(r) for r in llm.reported]
    assert expected[1] < expected[0]
    assert spent_micros(guard) == sum(expected)
    assert reserved_micros(guard) == 0
    # The estimate: system + messages at the input price, max_tokens at the output price.
    assert estimate_of(guard) == Pricing().estimate(
        CLAUDE, prompt=[SYSTEM, MESSAGES], max_output_tokens=300, provider="anthropic"
    )
    usage = llm.reported[1]["usage"]
    tokens = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["output_tokens"]
    assert guard.audit(decision="commit", limit=1)[0].data["tokens"] == tokens


def test_tools_count_towards_the_estimate(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    ask(guarded)
    plain = estimate_of(guard)
    tool = {
        "name": "order_status",
        "description": "Look up the shipping status of an order by its number.",
        "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    }
    ask(guarded, tools=[tool])
    assert estimate_of(guard) > plain


def test_async_messages(llm: FakeLLM, guard: Guard) -> None:
    async def main() -> None:
        async with cg_anthropic.guard(aclient(llm), "chat", guard=guard) as guarded:
            message = await ask(guarded)
            assert message.stop_reason == "end_turn"
            await asyncio.gather(*(ask(guarded) for _ in range(3)))

    asyncio.run(main())
    assert len(llm.reported) == 4
    assert spent_micros(guard) == sum(price_micros(r) for r in llm.reported)


def test_stream_commits_input_and_final_output(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    with ask(guarded, stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert spent_micros(guard) == price_micros(llm.reported[0])
    assert reserved_micros(guard) == 0


def test_stream_cut_after_message_start_charges_input_plus_the_output_cap(
    llm: FakeLLM, client: anthropic.Anthropic, guard: Guard
) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    with ask(guarded, stream=True, extra_headers={"x-fake-cached": "10"}) as stream:
        assert next(stream).type == "message_start"
    # The input (with its cache reads) is known exactly; the output may have run on up to max_tokens.
    bound = price_micros(llm.reported[0], output_tokens=300)
    assert spent_micros(guard) == bound
    assert bound > price_micros(llm.reported[0])  # more than the finished call would have cost
    assert reserved_micros(guard) == 0


def test_stream_broken_by_the_network(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    stream = ask(guarded, stream=True, extra_headers={"x-fake-cut-after": "4"})
    with pytest.raises(Exception, match="incomplete chunked read"):  # the SDK lets the transport's error through
        for _ in stream:
            pass
    assert spent_micros(guard) == price_micros(llm.reported[0], output_tokens=300)
    # Cut after message_delta: the usage is final, whatever comes next.
    stream = ask(guarded, stream=True, extra_headers={"x-fake-cut-after": "11"})
    with pytest.raises(Exception, match="incomplete chunked read"):
        list(stream)
    assert spent_micros(guard) == price_micros(llm.reported[0], output_tokens=300) + price_micros(llm.reported[1])


def test_stream_abandoned_before_any_event_keeps_the_estimate(
    llm: FakeLLM, client: anthropic.Anthropic, guard: Guard
) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    stream = ask(guarded, stream=True)
    stream.close()
    assert spent_micros(guard) == estimate_of(guard)


def test_collected_stream_is_settled(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    stream = ask(guarded, stream=True)
    next(stream)
    del stream  # dropped without closing
    gc.collect()
    assert flush_abandoned()
    assert spent_micros(guard) == price_micros(llm.reported[0], output_tokens=300)
    assert reserved_micros(guard) == 0


def test_async_streams(llm: FakeLLM, guard: Guard) -> None:
    async def main() -> None:
        guarded = cg_anthropic.guard(aclient(llm), "chat", guard=guard)
        stream = await ask(guarded, stream=True)
        async with stream:
            text = [e.delta.text async for e in stream if e.type == "content_block_delta"]
        assert "".join(text) == "Your order ships on Tuesday."
        cut = await ask(guarded, stream=True)
        assert (await cut.__anext__()).type == "message_start"
        await cut.close()
        broken = await ask(guarded, stream=True, extra_headers={"x-fake-cut-after": "2"})
        with pytest.raises(Exception, match="incomplete chunked read"):
            async for _ in broken:
                pass
        await guarded.close()

    asyncio.run(main())
    assert flush_abandoned()  # a stream broken in an async task is settled off the event loop
    full, cut, broken = llm.reported
    expected = price_micros(full) + price_micros(cut, output_tokens=300) + price_micros(broken, output_tokens=300)
    assert spent_micros(guard) == expected
    assert reserved_micros(guard) == 0


def test_sdk_error_releases_the_reservation(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    with pytest.raises(anthropic.BadRequestError):
        ask(guarded, extra_headers={"x-fake-status": "400"})

    async def main() -> None:
        async with cg_anthropic.guard(aclient(llm), "chat", guard=guard) as aguarded:
            with pytest.raises(anthropic.BadRequestError):
                await ask(aguarded, stream=True, extra_headers={"x-fake-status": "400"})

    asyncio.run(main())
    assert spent_micros(guard) == 0
    assert reserved_micros(guard) == 0
    assert len(guard.audit(decision="release")) == 2


def test_cap_blocks_and_serves_the_fallback(llm: FakeLLM, client: anthropic.Anthropic) -> None:
    estimate = Pricing().estimate(CLAUDE, prompt=[SYSTEM, MESSAGES], max_output_tokens=300, provider="anthropic")
    assert estimate is not None
    g = make_guard(usd_cap({"feature": "chat"}, 2 * estimate))
    guarded = cg_anthropic.guard(client, "chat", guard=g, fallback=costguard.fallback.cached(ttl_s=60))
    # Each call costs a little less than its estimate: two fit, the third doesn't.
    first = ask(guarded, extra_headers={"x-fake-output-tokens": "250"})
    ask(guarded, extra_headers={"x-fake-output-tokens": "251"})
    g.flush()
    again = ask(guarded, extra_headers={"x-fake-output-tokens": "250"})
    assert again == first  # the same request's last answer, from the cached fallback
    assert len(llm.reported) == 2
    with pytest.raises(BudgetExceeded):
        ask(cg_anthropic.guard(client, "chat", guard=g))
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported) <= 2 * estimate
    g.close()


def test_threads_never_overshoot(llm: FakeLLM) -> None:
    estimate = Pricing().estimate(CLAUDE, prompt=[SYSTEM, MESSAGES], max_output_tokens=1000, provider="anthropic")
    assert estimate is not None
    g = make_guard(usd_cap({"feature": "chat"}, 6 * estimate))
    llm.delay_s = 0.005
    results: list[Any] = []

    def worker() -> None:
        with anthropic.Anthropic(api_key="k", base_url=llm.anthropic_url, max_retries=0) as c:
            guarded = cg_anthropic.guard(c, "chat", guard=g, fallback=None)
            for _ in range(3):
                try:
                    results.append(ask(guarded, max_tokens=1000, extra_headers={"x-fake-output-tokens": "990"}))
                except BudgetExceeded as exc:
                    results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = [r for r in results if not isinstance(r, BudgetExceeded)]
    assert len(results) == 24
    assert 6 <= len(allowed) == len(llm.reported) < 24
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported) <= 6 * estimate
    g.close()


def test_passthrough(llm: FakeLLM, client: anthropic.Anthropic, guard: Guard) -> None:
    guarded = cg_anthropic.guard(client, "chat", guard=guard)
    assert guarded.api_key == "sk-ant-test"
    assert guarded.messages.with_raw_response is not None  # the SDK's own, not guarded
    ask(guarded.with_options(timeout=5))
    assert spent_micros(guard) == price_micros(llm.reported[0])


def test_importing_costguard_imports_no_vendor_sdk() -> None:
    code = (
        "import sys, costguard, costguard.integrations.openai, costguard.integrations.anthropic\n"
        "assert 'openai' not in sys.modules and 'anthropic' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('openai', 'anthropic')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
