"""One scenario every web integration is run through: a guarded `chat` feature with 3 calls per customer a day.

Each framework's test module builds the same small app (`/health`, `/chat` sync, `/achat` async, a stream,
`/labels`) around a guard from `web_guard()` and runs these checks through its test client and a real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import costguard
from costguard import Blocked, FeatureSettings, Guard
from costguard.current import current_labels
from costguard.testing import FakeClock
from helpers import START, make_guard, usd_ceiling

ESTIMATE_USD = 0.01
CAP_USD = 0.03  # 3 calls per customer per day
RETRY_AFTER = "50400"  # START is 10:00 UTC: the day resets in 14 h
CHUNKS = 3


@dataclass(frozen=True)
class Resp:
    """A response as every client shows it: status, lower-case headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())


class Fetch(Protocol):
    """GET `path`, with the customer header when given and extra headers (`X_Plan="pro"`)."""

    def __call__(self, path: str, customer: str | None = None, **headers: str) -> Resp: ...


def web_guard(store: str = "memory://", cap_usd: float = CAP_USD) -> Guard:
    """Per-customer daily cap on `chat`, $0.01 a call, `/health` exempt from the kill switch."""
    return make_guard(
        usd_ceiling({"feature": "chat", "customer": "*"}, day=cap_usd),
        store=store,
        features={"chat": FeatureSettings(estimate_usd=round(ESTIMATE_USD * 1_000_000))},
        exempt_paths=["/health"],
        clock=FakeClock(START),
    )


def guarded_calls(guard: Guard) -> tuple[Callable[[], str], Callable[[], Any]]:
    """The sync and async guarded functions the apps' handlers call (no fallback: `Blocked` escapes)."""

    @guard.with_kill_switch("chat")
    def ask() -> str:
        return "answer"

    @guard.with_kill_switch("chat")
    async def aask() -> str:
        return "answer"

    return ask, aask


def exhausted(guard: Guard, customer: str = "c") -> Blocked:
    """The `BudgetExceeded` a customer meets on the fourth call of the day."""
    ask, _ = guarded_calls(guard)
    with costguard.context(customer=customer):
        for _ in range(3):
            ask()
        try:
            ask()
        except Blocked as exc:
            return exc
    raise AssertionError("the fourth call was allowed")


def labels_now() -> dict[str, str]:
    """What `/labels` returns: the labels guarded calls would get right now."""
    return {str(k): str(v) for k, v in current_labels().items()}


def plan_label(value: str | None) -> dict[str, object]:
    """The apps' `labels=` callables all read `X-Plan` and return this."""
    return {"plan": value}


# ----------------------------------------------------------------------------- checks


def check_killswitch(fetch: Fetch, guard: Guard, path: str = "/chat") -> None:
    """A global switch answers 503 before the app runs, except on exempt paths; lifting it lets calls through."""
    guard.killswitch.activate(reason="incident #7", actor="test")
    refused = fetch(path, "k1")
    assert refused.status == 503
    assert refused.header("X-CostGuard-Kill-Switch") == "active"
    assert refused.header("Content-Type") == "application/json"
    assert refused.json() == {"code": "kill_switch_active", "reason": "incident #7", "scope": {}}
    assert fetch("/health", "k1").status == 200
    assert fetch("/health/deep").status == 200
    guard.killswitch.deactivate(actor="test")
    assert fetch(path, "k1").status == 200


def check_customer_switch(fetch: Fetch, guard: Guard, path: str = "/chat") -> None:
    """A customer's switch refuses that customer's requests only."""
    guard.killswitch.activate(reason="abuse", scope="customer:mallory")
    refused = fetch(path, "mallory")
    assert refused.status == 503
    assert refused.json()["scope"] == {"customer": "mallory"}
    assert fetch(path, "alice").status == 200
    guard.killswitch.deactivate(scope="customer:mallory")


def check_feature_switch(fetch: Fetch, guard: Guard, path: str = "/chat") -> None:
    """A feature's switch is met inside the handler (KillSwitchActive) and still answers 503 with the header."""
    guard.killswitch.activate(reason="model outage", scope="feature:chat")
    refused = fetch(path, "f1")
    assert refused.status == 503
    assert refused.header("X-CostGuard-Kill-Switch") == "active"
    assert refused.json() == {"code": "kill_switch_active", "reason": "model outage", "scope": {"feature": "chat"}}
    assert fetch("/labels", "f1").status == 200
    guard.killswitch.deactivate(scope="feature:chat")


def check_customer_cap(fetch: Fetch, path: str) -> None:
    """Three calls fit a customer's day; the fourth is a 429 with Retry-After; another customer still gets 200."""
    customer = f"acme{path.replace('/', '-')}"
    for _ in range(3):
        ok = fetch(path, customer)
        assert ok.status == 200, ok.body
        assert ok.json() == {"answer": "answer"}
    refused = fetch(path, customer)
    assert refused.status == 429
    assert refused.header("Retry-After") == RETRY_AFTER
    body = refused.json()
    assert body["code"] == "cap_exhausted"
    assert body["scope"] == {"customer": customer, "feature": "chat"}
    assert body["period"] == "day"
    assert body["spent_usd"] == CAP_USD
    assert body["limit_usd"] == CAP_USD
    assert fetch(path, f"globex{path.replace('/', '-')}").status == 200


def check_labels(fetch: Fetch) -> None:
    """The customer header and the `labels=` callable reach guarded code; a bad value is a 400, not a 500."""
    assert fetch("/labels", "acme", X_Plan="pro").json() == {"customer": "acme", "plan": "pro"}
    assert fetch("/labels").json() == {"customer": "anonymous"}  # no customer: the shared one, still capped
    too_long = fetch("/labels", "x" * 300)
    assert too_long.status == 400
    assert too_long.json()["code"] == "bad_label"
    assert "customer" in too_long.json()["reason"]
    assert fetch("/health", "x" * 300).status == 200


def check_stream(fetch: Fetch, path: str) -> None:
    """A streamed body passes through untouched; a `Blocked` mid-stream ends it cleanly (no 429, no hang)."""
    full = fetch(path, "s1")
    assert full.status == 200
    assert full.body == b"chunk\n" * CHUNKS
    fetch("/chat", "s2")
    fetch("/chat", "s2")
    cut = fetch(path, "s2")
    assert cut.status == 200
    assert cut.body == b"chunk\n"


def check_all(fetch: Fetch, guard: Guard, *, stream: str = "/stream") -> None:
    """Every check on one app (each uses its own customers)."""
    check_labels(fetch)
    check_customer_cap(fetch, "/chat")
    check_customer_cap(fetch, "/achat")
    check_stream(fetch, stream)
    check_killswitch(fetch, guard)
    check_customer_switch(fetch, guard)
    check_feature_switch(fetch, guard)
