"""`costguard.integrations.litellm` with the real LiteLLM SDK against the fake API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from collections.abc import Iterator
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
    assert [a if isinstance(a, str) else a.choices[0].message.content for a in answers] == [ANSWER] * 3 + [
        "We'll email you."
    ] * 2
    assert seen[0]["messages"] == MESSAGES
    assert len(llm.reported) == 4  # the probe and three admitted calls
    assert spent_micros(g) == 3 * actual
    with pytest.raises(BudgetExceeded):
        ask(cg_litellm.guard("chat", guard=g), llm)

    async def main() -> Any:
        return await aask(cg_litellm.guard("chat", guard=g, fallback="busy"), llm, stream=True)

    assert asyncio.run(main()) == "busy"
    assert len(llm.reported) == 4
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
                outcomes.append("blocked" if result == "blocked" else "ok")

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
    assert ask(cg_litellm.guard("chat", guard=g, fallback="off"), llm) == "off"
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
