"""`costguard.integrations.litellm` with the real LiteLLM SDK against the fake API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

# LiteLLM's price map from the package, never fetched; no telemetry.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
litellm = pytest.importorskip("litellm")

from fake_llm import FakeLLM  # noqa: E402
from llm_helpers import GPT, estimate_of, price_micros, reserved_micros, spent_micros, usd_cap  # noqa: E402

import costguard  # noqa: E402
from costguard import BudgetExceeded, FeatureSettings, Guard, KillSwitchActive, Pricing  # noqa: E402
from costguard.integrations import litellm as cg_litellm  # noqa: E402
from helpers import make_guard  # noqa: E402

# LiteLLM's own types trip a pydantic warning when it builds them lazily, in the first call.
# and its stream handler reads a pydantic attribute the deprecated way.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning"),
    pytest.mark.filterwarnings("ignore:Accessing the 'model_(computed_)?fields' attribute:DeprecationWarning"),
    # LiteLLM's sync client leaves a connection open when the vendor answers an error (its AuthenticationError
    # path): the socket's ResourceWarning comes whenever the collector runs — see _collect_litellms_sockets.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]


@pytest.fixture(autouse=True)
def _collect_litellms_sockets() -> Iterator[None]:
    """Collect what LiteLLM left open after each test, its warnings ignored, so they never surface in a
    later test of another module (which the suite's `filterwarnings = error` would fail)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


MODEL = f"openai/{GPT}"
MESSAGES = [
    {"role": "system", "content": "You are a support agent for an online shop. Answer in one sentence."},
    {"role": "user", "content": "When will my order #4417 ship? I ordered it on Friday."},
]
ANSWER = "Your order ships on Tuesday."


@pytest.fixture(autouse=True, scope="module")
def _close_litellms_stray_event_loops() -> Iterator[None]:
    """A sync stream followed by an async call leaves an event loop of LiteLLM's own unclosed (its logging
    worker's); closed here, or its ResourceWarning fails whichever later test the collector runs in."""
    yield
    for obj in gc.get_objects():
        # type(), not isinstance: isinstance asks a lazy object (Django's storages) for its class and sets it up
        if issubclass(type(obj), asyncio.BaseEventLoop) and not obj.is_running() and not obj.is_closed():
            obj.close()


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


def ask(guarded: Any, llm: FakeLLM, **extra: Any) -> Any:
    options = {"max_tokens": 200, "api_base": llm.base_url, "api_key": "sk-test", **extra}
    return guarded.completion(MODEL, MESSAGES, **options)


def aask(guarded: Any, llm: FakeLLM, **extra: Any) -> Any:
    options = {"max_tokens": 200, "api_base": llm.base_url, "api_key": "sk-test", **extra}
    return guarded.acompletion(MODEL, MESSAGES, **options)


def refusal(reply: Any) -> str | None:
    """Why costguard refused the call this reply answers (None: the model answered)."""
    decision = reply._hidden_params.get("costguard_blocked")
    return None if decision is None else decision.reason


@pytest.fixture
def full() -> Iterator[Guard]:
    guard_ = make_guard(usd_cap({"feature": "chat"}, 0))  # no room: every call is refused
    yield guard_
    guard_.close()


def the_estimate(max_tokens: int = 200) -> int:
    estimate = Pricing().estimate(GPT, prompt=MESSAGES, max_output_tokens=max_tokens, provider="openai")
    assert estimate is not None
    return estimate


def test_completion_commits_exactly_the_reported_usage(llm: FakeLLM, g: Guard) -> None:
    guarded = cg_litellm.guard("chat", guard=g)
    reply = ask(guarded, llm)
    assert reply.choices[0].message.content == ANSWER
    assert estimate_of(g) == the_estimate()  # "openai/gpt-4o-mini": LiteLLM names the provider, costguard prices
    ask(guarded, llm, extra_headers={"x-fake-cached": "16"})
    expected = [price_micros(r) for r in llm.reported]
    assert expected[1] < expected[0]
    assert spent_micros(g) == sum(expected)
    assert reserved_micros(g) == 0
    tokens = [c.data["tokens"] for c in reversed(g.audit(decision="commit"))]
    assert tokens == [r["usage"]["total_tokens"] for r in llm.reported]


def test_litellm_reported_cost_by_option(llm: FakeLLM, g: Guard) -> None:
    reply = ask(cg_litellm.guard("chat", guard=g, cost="litellm"), llm, max_tokens=1000)
    reported = reply._hidden_params["response_cost"]
    assert reported > 0
    assert spent_micros(g) == round(reported * 1_000_000 + 0.4999999)  # LiteLLM's figure, rounded up
    with pytest.raises(ValueError, match="cost must be"):
        cg_litellm.guard("chat", cost="openai")  # type: ignore[arg-type]


def test_async_and_streams(llm: FakeLLM, g: Guard) -> None:
    guarded = cg_litellm.guard("chat", guard=g)
    stream = ask(guarded, llm, stream=True)
    assert reserved_micros(g) > 0  # held while the stream is open
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == ANSWER
    assert llm.requests[0]["body"]["stream_options"] == {"include_usage": True}

    async def main() -> list[str]:
        reply = await aask(guarded, llm)
        replies = await asyncio.gather(*(aask(guarded, llm) for _ in range(3)))
        astream = await aask(guarded, llm, stream=True)
        words = [chunk.choices[0].delta.content or "" async for chunk in astream if chunk.choices]
        return [reply.choices[0].message.content, *(r.choices[0].message.content for r in replies), "".join(words)]

    assert asyncio.run(main()) == [ANSWER] * 5
    assert len(llm.reported) == 6
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported)
    assert reserved_micros(g) == 0


def test_an_async_stream_closed_with_aclose_is_settled_at_once(llm: FakeLLM, g: Guard) -> None:
    """`aclose()` (LiteLLM's and async generators' name) settles like `close()`: nothing stays reserved."""
    guarded = cg_litellm.guard("chat", guard=g)

    async def main() -> None:
        astream = await aask(guarded, llm, stream=True)
        await astream.__anext__()  # output began
        assert reserved_micros(g) > 0
        await astream.aclose()
        assert reserved_micros(g) == 0
        assert spent_micros(g) > 0  # settled from what was streamed

    asyncio.run(main())


def test_a_cap_admits_exactly_what_fits_then_the_fallback(llm: FakeLLM) -> None:
    probe = make_guard()
    ask(cg_litellm.guard("chat", guard=probe), llm)
    probe.close()
    actual = price_micros(llm.reported[0])
    g = make_guard(usd_cap({"feature": "chat"}, 2 * actual + the_estimate()))  # three calls fit
    seen: list[dict[str, Any]] = []

    def fallback(**request: Any) -> str:
        seen.append(request)
        assert costguard.current_decision() is not None
        return "We'll email you."

    guarded = cg_litellm.guard("chat", guard=g, fallback=fallback)
    answers = [ask(guarded, llm) for _ in range(5)]
    assert all(isinstance(a, litellm.ModelResponse) for a in answers)  # refused too: LiteLLM's own shape
    assert [a.choices[0].message.content for a in answers] == [ANSWER] * 3 + ["We'll email you."] * 2
    assert [refusal(a) for a in answers] == [None] * 3 + ["budget_exceeded"] * 2
    assert seen[0]["messages"] == MESSAGES
    assert len(llm.reported) == 4  # the probe and three admitted calls
    assert spent_micros(g) == 3 * actual
    with pytest.raises(BudgetExceeded):
        ask(cg_litellm.guard("chat", guard=g), llm)
    with pytest.raises(BudgetExceeded):  # a fallback that raises: raised, unchanged
        ask(cg_litellm.guard("chat", guard=g, fallback=costguard.fallback.raise_()), llm)

    async def main() -> list[str]:
        astream = await aask(cg_litellm.guard("chat", guard=g, fallback="busy"), llm, stream=True)
        return [chunk.choices[0].delta.content or "" async for chunk in astream if chunk.choices]

    assert "".join(asyncio.run(main())) == "busy"
    assert len(llm.reported) == 4
    g.close()


def test_a_refused_completion_is_a_model_response(llm: FakeLLM, full: Guard) -> None:
    reply = ask(cg_litellm.guard("chat", guard=full, fallback="busy"), llm)
    assert isinstance(reply, litellm.ModelResponse)
    assert reply.choices[0].message.content == "busy"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == GPT  # the model as LiteLLM names it in its responses ("openai/" is the provider)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (0, 0, 0)
    blocked = reply._hidden_params["costguard_blocked"]
    assert (blocked.reason, blocked.allowed, blocked.feature) == ("budget_exceeded", False, "chat")
    assert reply._hidden_params["response_cost"] == 0.0
    assert "costguard_blocked" not in reply.model_dump_json()  # served on as JSON, it is LiteLLM's shape alone
    # Not text: JSON of the value. A response of the fallback's own (or a dict shaped like one): as it is.
    assert ask(cg_litellm.guard("chat", guard=full, fallback={"eta": 2}), llm).choices[0].message.content == (
        '{"eta": 2}'
    )
    own = litellm.ModelResponse(model="mine", choices=[{"message": {"role": "assistant", "content": "mine"}}])
    for value in (own, own.model_dump()):
        served = ask(cg_litellm.guard("chat", guard=full, fallback=value), llm)
        assert (served.model, served.choices[0].message.content, refusal(served)) == ("mine", "mine", "budget_exceeded")
    assert "costguard_blocked" not in own._hidden_params  # a copy is marked, never the shared static response
    assert llm.requests == []


def test_a_refused_stream_yields_litellm_chunks(llm: FakeLLM, full: Guard) -> None:
    guarded = cg_litellm.guard("chat", guard=full, fallback="Support chat is busy.")
    chunks = list(ask(guarded, llm, stream=True))
    assert all(isinstance(chunk, litellm.ModelResponseStream) for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "Support chat is busy."
    assert [chunk.choices[0].delta.content for chunk in chunks] == ["Support chat is busy.", None]
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, "stop"]
    assert {refusal(chunk) for chunk in chunks} == {"budget_exceeded"}
    assert litellm.stream_chunk_builder(chunks).choices[0].message.content == "Support chat is busy."
    # Usage asked for in `stream_options`: a last chunk of zero tokens, as the model's stream would end.
    *_, last = ask(guarded, llm, stream=True, stream_options={"include_usage": True})
    assert (last.choices, last.usage.total_tokens) == ([], 0)
    with ask(guarded, llm, stream=True) as stream:
        assert next(stream).choices[0].delta.content == "Support chat is busy."
    assert list(stream) == []  # closed
    own = litellm.ModelResponse(model="mine", choices=[{"message": {"role": "assistant", "content": "mine"}}])
    (chunk,) = ask(cg_litellm.guard("chat", guard=full, fallback=own), llm, stream=True)  # as LiteLLM streams it
    assert (chunk.choices[0].delta.content, chunk.choices[0].finish_reason, refusal(chunk)) == (
        "mine",
        "stop",
        "budget_exceeded",
    )
    mine = cg_litellm.guard("chat", guard=full, fallback=lambda **request: iter(["a", "b"]))
    assert list(ask(mine, llm, stream=True)) == ["a", "b"]  # a stream of the fallback's own: as it is
    assert llm.requests == []


def test_a_refused_async_stream_yields_litellm_chunks(llm: FakeLLM, full: Guard) -> None:
    async def fallback(**request: Any) -> str:
        return f"busy, {request['model']}"

    async def own_stream(**request: Any) -> AsyncIterator[str]:
        yield "a"

    guarded = cg_litellm.guard("chat", guard=full, fallback=fallback)

    async def main() -> tuple[list[Any], Any]:
        astream = await aask(guarded, llm, stream=True)
        chunks = [chunk async for chunk in astream]
        reply = await aask(guarded, llm)
        async with await aask(guarded, llm, stream=True) as closed:
            pass
        assert [chunk async for chunk in closed] == []
        mine = await aask(cg_litellm.guard("chat", guard=full, fallback=own_stream), llm, stream=True)
        assert [chunk async for chunk in mine] == ["a"]  # a stream of the fallback's own: as it is
        return chunks, reply

    chunks, reply = asyncio.run(main())
    assert all(isinstance(chunk, litellm.ModelResponseStream) for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == f"busy, {MODEL}"
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, "stop"]
    assert {refusal(chunk) for chunk in chunks} == {"budget_exceeded"}
    assert (reply.choices[0].message.content, refusal(reply)) == (f"busy, {MODEL}", "budget_exceeded")
    assert llm.requests == []


def test_a_cached_fallback_serves_the_last_answer_marked(llm: FakeLLM) -> None:
    g = make_guard(usd_cap({"feature": "chat"}, the_estimate()))  # one call fits
    guarded = cg_litellm.guard("chat", guard=g, fallback=costguard.fallback.cached(ttl_s=60, otherwise="busy"))
    first = ask(guarded, llm)
    g.flush()
    again = ask(guarded, llm)
    assert (again.id, again.choices[0].message.content) == (first.id, ANSWER)  # the same request's last answer
    assert (refusal(first), refusal(again)) == (None, "budget_exceeded")
    other = ask(guarded, llm, user="u-2")  # another request: nothing cached, `otherwise`
    assert (other.choices[0].message.content, refusal(other)) == ("busy", "budget_exceeded")
    assert len(llm.reported) == 1
    g.close()


def test_threads_never_overshoot(llm: FakeLLM) -> None:
    cap = 10 * the_estimate(2000)
    g = make_guard(usd_cap({"feature": "chat"}, cap))
    llm.delay_s = 0.005
    guarded = cg_litellm.guard("chat", guard=g, fallback="blocked")
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            result = ask(guarded, llm, max_tokens=2000, extra_headers={"x-fake-output-tokens": "1900"})
            with lock:
                outcomes.append("blocked" if refusal(result) else "ok")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == len(llm.reported)
    assert 10 <= outcomes.count("ok") <= 11
    assert spent_micros(g) == sum(price_micros(r) for r in llm.reported) <= cap
    g.close()


def test_errors_release_and_the_kill_switch_blocks(llm: FakeLLM, g: Guard) -> None:
    guarded = cg_litellm.guard("chat", guard=g)
    with pytest.raises(litellm.BadRequestError):
        ask(guarded, llm, extra_headers={"x-fake-status": "400"})
    assert spent_micros(g) == 0
    assert reserved_micros(g) == 0
    assert [r.data["why"] for r in g.audit(decision="release")] == ["call raised"]
    g.killswitch.activate(reason="incident #123", actor="ops")
    with pytest.raises(KillSwitchActive):
        ask(guarded, llm)
    reply = ask(cg_litellm.guard("chat", guard=g, fallback="off"), llm)
    assert (reply.choices[0].message.content, refusal(reply)) == ("off", "kill_switch")
    assert len(llm.requests) == 1


def test_labels_and_no_output_cap(llm: FakeLLM) -> None:
    g = make_guard(
        usd_cap({"customer": "*"}, 1_000_000),
        usd_cap({"user": "*"}, 1_000_000),
        features={"chat": FeatureSettings(estimate_usd=5000)},
    )
    guarded = cg_litellm.guard("chat", guard=g, labels=lambda **request: {"user": request["user"]})
    with costguard.context(customer="acme"):
        guarded.completion(MODEL, MESSAGES, api_base=llm.base_url, api_key="sk-test", user="u-17")
    assert estimate_of(g) == 5000  # no max_tokens: the feature's estimate
    assert spent_micros(g, customer="acme") == price_micros(llm.reported[0])
    assert spent_micros(g, user="u-17") == price_micros(llm.reported[0])
    g.close()
    with pytest.raises(ValueError, match="feature name"):
        cg_litellm.guard("")
    with pytest.raises(TypeError, match="labels"):
        cg_litellm.guard("chat", labels=["user"])  # type: ignore[arg-type]
