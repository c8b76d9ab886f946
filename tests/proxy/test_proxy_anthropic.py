"""`costguard proxy` in front of an Anthropic upstream, driven by the real `anthropic` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from proxy_helpers import VENDOR_KEY, proxy_stack, spent

from costguard.guard import Guard
from costguard.runkeys import RunKeys

MESSAGES = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def stack() -> Iterator[tuple[Guard, str, object]]:
    with proxy_stack() as parts:
        yield parts


def test_messages_are_forwarded_with_the_vendor_key_and_charged_their_usage(stack) -> None:
    guard, url, fake = stack
    issued = RunKeys(guard).issue({"run": "a-1"}, {"daily_usd": 0.025})
    with anthropic.Anthropic(base_url=f"{url}/anthropic", api_key=issued.key, max_retries=0) as agent:
        message = agent.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"x-fake-output-tokens": "5"},
        )
        assert message.content[0].text
        assert fake.requests[-1]["headers"]["x-api-key"] == VENDOR_KEY
        assert spent(guard, run="a-1") == pytest.approx(0.005)  # reserved $0.01, 5 tokens reported
        with agent.messages.stream(model="claude-3-5-haiku-latest", max_tokens=10, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
        assert text
        assert spent(guard, run="a-1") == pytest.approx(0.015)
        agent.messages.create(model="claude-3-5-haiku-latest", max_tokens=10, messages=MESSAGES)
        assert spent(guard, run="a-1") == pytest.approx(0.025)
        with pytest.raises(anthropic.RateLimitError) as caught:
            agent.messages.create(model="claude-3-5-haiku-latest", max_tokens=10, messages=MESSAGES)
        body = caught.value.response.json()
        assert body["code"] == "cap_exhausted" and body["cap_usd"] == 0.025 and body["scope"] == {"run": "a-1"}
        assert len(fake.requests) == 3


def test_an_anthropic_error_is_passed_through_and_released(stack) -> None:
    guard, url, _fake = stack
    issued = RunKeys(guard).issue({"run": "a-2"}, {"total_usd": 1})
    with anthropic.Anthropic(base_url=f"{url}/anthropic", api_key=issued.key, max_retries=0) as agent:
        with pytest.raises(anthropic.BadRequestError) as caught:
            agent.messages.create(
                model="claude-3-5-haiku-latest",
                max_tokens=10,
                messages=MESSAGES,
                extra_headers={"x-fake-status": "400"},
            )
    assert caught.value.response.json()["error"]["type"] == "invalid_request_error"
    assert spent(guard, run="a-2") == 0
