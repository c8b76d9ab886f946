"""Streams pass through event by event (no buffering), and one the agent abandons is settled at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from proxy_helpers import PRICING, serve, spent

from costguard.config import parse_config
from costguard.model import Period
from costguard.proxy import ProxyApp
from costguard.runkeys import RunKeys

PAUSE_S = 1.5
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}


async def slow_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One event at once, then a pause, then the rest with usage (an OpenAI chat stream)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}

    def event(data: object) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    first = {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    await send({"type": "http.response.body", "body": event(first), "more_body": True})
    await asyncio.sleep(PAUSE_S)
    last = {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}
    usage = {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    body = event(last) + event(usage) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": False})


def proxy_for(upstream_url: str) -> tuple[Any, ProxyApp]:
    config = parse_config(
        {
            "store": "memory://",
            "spool_dir": False,
            "pricing": PRICING,
            "proxy": {"upstreams": {"openai": {"kind": "openai", "url": upstream_url, "api_key": "sk-x"}}},
        }
    )
    guard = config.build()
    return guard, ProxyApp(guard, config.proxy)


def test_the_first_event_arrives_before_the_stream_ends_and_the_usage_is_committed() -> None:
    with serve(slow_upstream) as upstream_url:
        guard, app = proxy_for(upstream_url)
        key = RunKeys(guard).issue({"run": "s-1"}, {"total_usd": 1}).key
        with serve(app) as url, httpx.Client(timeout=10) as http:
            started = time.monotonic()
            headers = {"authorization": f"Bearer {key}"}
            with http.stream("POST", f"{url}/openai/v1/chat/completions", json=BODY, headers=headers) as response:
                chunks = response.iter_raw()
                first = next(chunks)
                first_at = time.monotonic() - started
                rest = b"".join(chunks)
            assert b"Hel" in first
            assert first_at < PAUSE_S / 2  # not held back until the stream ends
            assert b"[DONE]" in rest and b'"usage"' not in rest  # the usage chunk the agent didn't ask for
            assert spent(guard, run="s-1") == 0.002  # 2 output tokens reported, of the 10 reserved
        guard.close()


def test_a_stream_the_agent_leaves_is_settled_without_waiting_for_its_end() -> None:
    with serve(slow_upstream) as upstream_url:
        guard, app = proxy_for(upstream_url)
        key = RunKeys(guard).issue({"run": "s-2"}, {"total_usd": 1}).key
        with serve(app) as url:
            with httpx.Client(timeout=10) as http:
                headers = {"authorization": f"Bearer {key}"}
                with http.stream("POST", f"{url}/openai/v1/chat/completions", json=BODY, headers=headers) as response:
                    next(response.iter_raw())
            left_at = time.monotonic()
            while True:
                rows = [
                    r for r in guard.store.list_counters({Period.TOTAL: "total"}) if dict(r.scope) == {"run": "s-2"}
                ]
                if rows and rows[0].reserved == 0:
                    break
                assert time.monotonic() - left_at < PAUSE_S / 2, "settled only when the upstream finished"
                time.sleep(0.01)
            assert rows[0].committed == 10_000  # no usage yet: the whole output cap (it may have run on)
        guard.close()
