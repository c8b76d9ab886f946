"""A proxy served by uvicorn on 127.0.0.1 in a thread, in front of the fake OpenAI/Anthropic server."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integrations"))

from fake_llm import FakeLLM

from costguard.config import parse_config
from costguard.guard import Guard
from costguard.proxy import ProxyApp

__all__ = [
    "OPERATOR_TOKEN",
    "READ_TOKEN",
    "VENDOR_KEY",
    "Clock",
    "FakeLLM",
    "build",
    "free_port",
    "proxy_stack",
    "serve",
]

VENDOR_KEY = "sk-vendor-secret-0123456789"
OPERATOR_TOKEN = "op-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
# Priced so a call's cost is exact: nothing for input, $0.001 per output token (max_tokens=10 → $0.01).
PRICING = {"models": {"gpt-4o-mini*": {"output_per_mtok": 1000}, "claude-*": {"output_per_mtok": 1000}}}


class Clock:
    """A clock tests move by hand (key expiry)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(
    fake: FakeLLM,
    store: str = "memory://",
    clock: Clock | None = None,
    upstream_timeout_s: float | None = None,
    upstream_options: dict[str, dict[str, Any]] | None = None,
    **extra: Any,
) -> tuple[Guard, Any]:
    """A guard and the config's `proxy:` section, with an openai and an anthropic upstream at the fake
    (`upstream_options`: more options by upstream name, or a new upstream)."""
    data: dict[str, Any] = {
        "store": store,
        "spool_dir": False,
        "pricing": PRICING,
        "admin": {
            "tokens": [
                {"name": "ops", "token": OPERATOR_TOKEN, "role": "operator"},
                {"name": "viewer", "token": READ_TOKEN, "role": "read"},
            ]
        },
        "proxy": {
            "upstreams": {
                "openai": {"kind": "openai", "url": fake.anthropic_url, "api_key": VENDOR_KEY},
                "anthropic": {"kind": "anthropic", "url": fake.anthropic_url, "api_key": VENDOR_KEY},
                "stripe": {
                    "kind": "generic",
                    "url": fake.anthropic_url,
                    "api_key": VENDOR_KEY,
                    "amount": {"json": "amount", "scale": 0.01},
                },
                "twilio": {"kind": "generic", "url": fake.anthropic_url, "api_key": VENDOR_KEY, "price_usd": 0.02},
            }
        },
        **extra,
    }
    if upstream_timeout_s is not None:
        data["proxy"]["upstreams"]["openai"]["timeout_s"] = upstream_timeout_s
    for name, options in (upstream_options or {}).items():
        data["proxy"]["upstreams"].setdefault(name, {}).update(options)
    config = parse_config(data)
    return config.build(clock=clock), config.proxy


def wait_settled(guard: Guard, timeout: float = 5.0) -> None:
    """Wait until nothing is reserved: the proxy settles a call just after its answer is sent."""
    deadline = time.monotonic() + timeout
    while any(row["reserved_usd"] for row in guard.status().to_dict()["ceilings"]):
        assert time.monotonic() < deadline, guard.status().to_dict()
        time.sleep(0.01)


def spent(guard: Guard, **labels: str) -> float:
    """USD spent by the ceiling on exactly `labels`, once every call has been settled."""
    wait_settled(guard)
    rows = [c for c in guard.status(**labels).to_dict()["ceilings"] if c["labels"] == labels and c["unit"] == "usd"]
    assert rows, f"no ceiling on {labels}"
    return float(rows[0]["spent_usd"])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def proxy_stack(
    store: str = "memory://",
    clock: Clock | None = None,
    upstream_timeout_s: float | None = None,
    upstream_options: dict[str, dict[str, Any]] | None = None,
    **extra: Any,
) -> Iterator[tuple[Guard, str, FakeLLM]]:
    """The fake vendor, a guard and a proxy in front of it: (guard, proxy URL, fake)."""
    fake = FakeLLM().start()
    guard, config = build(fake, store, clock, upstream_timeout_s, upstream_options, **extra)
    try:
        with serve(ProxyApp(guard, config)) as url:
            yield guard, url, fake
    finally:
        guard.close()
        fake.stop()
