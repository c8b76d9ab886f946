"""The pieces every integration shares (`costguard._web`): replies, Retry-After, exempt paths, guarded bodies."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from scenario import exhausted, guarded_calls, web_guard

from costguard import Blocked, BudgetExceeded, Ceiling, FeatureSettings, KillSwitchActive, Limit, Period, Unit
from costguard._web import (
    GuardedBody,
    Reply,
    Request,
    aguarded_chunks,
    blocked_reply,
    find_blocked,
    is_exempt,
    labels_scope,
    retry_after,
)
from costguard.current import current_labels
from costguard.model import make_match
from costguard.stores import Control, MemoryStore
from costguard.testing import FakeClock
from helpers import START, make_guard

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(None, None), (0.0, "0"), (0.2, "1"), (3.0001, "4"), (50400.0, "50400"), (-1.0, "0")],
)
def test_retry_after_rounds_up_to_whole_seconds(seconds: float | None, header: str | None) -> None:
    assert retry_after(seconds) == header


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/health", True),
        ("/health/", True),
        ("/health/db", True),
        ("/healthz", False),
        ("/costguard/v1/status", True),
        ("/api/health", False),
        ("/", False),
    ],
)
def test_exempt_paths_match_whole_segments(path: str, exempt: bool) -> None:
    assert is_exempt(path, ["/health", "/costguard/"]) is exempt


def test_a_root_prefix_exempts_everything() -> None:
    assert is_exempt("/anything", ["/"])


def test_budget_reply_body_and_headers() -> None:
    reply = blocked_reply(exhausted(web_guard()))
    assert reply.status == 429
    assert reply.status_line == "429 Too Many Requests"
    assert dict(reply.headers) == {"Retry-After": "50400"}
    assert reply.body["code"] == "cap_exhausted"
    assert reply.body["scope"] == {"customer": "c", "feature": "chat"}
    assert (reply.body["period"], reply.body["spent_usd"], reply.body["limit_usd"]) == ("day", 0.03, 0.03)
    assert reply.all_headers()[:2] == [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(reply.content))),
    ]


def test_a_calls_ceiling_over_all_time_has_no_usd_and_no_retry_after() -> None:
    calls = Ceiling(make_match({"feature": "chat"}), (Limit(Period.TOTAL, Unit.CALLS, 1),))
    guard = make_guard(calls, clock=FakeClock(START))
    ask, _ = guarded_calls(guard)
    ask()
    with pytest.raises(BudgetExceeded) as caught:
        ask()
    reply = blocked_reply(caught.value)
    assert reply.status == 429
    assert reply.headers == ()
    assert (reply.body["spent_usd"], reply.body["limit_usd"]) == (None, None)
    assert (reply.body["unit"], reply.body["spent"], reply.body["limit"], reply.body["period"]) == (
        "calls",
        1.0,
        1.0,
        "total",
    )


def test_a_kill_switch_reply_carries_the_operators_reason() -> None:
    guard = web_guard()
    guard.killswitch.activate(reason="runaway agent", scope="feature:chat")
    ask, _ = guarded_calls(guard)
    with pytest.raises(KillSwitchActive) as caught:
        ask()
    reply = blocked_reply(caught.value)
    assert reply == Reply(
        503,
        {"code": "kill_switch_active", "reason": "runaway agent", "scope": {"feature": "chat"}},
        (("X-CostGuard-Kill-Switch", "active"),),
    )
    # The reason travels on the error (KillSwitchActive.reason): no guard's view is needed to answer.
    assert "runaway agent" in blocked_reply(caught.value).body["reason"]


def test_find_blocked_unwraps_single_exception_groups_only() -> None:
    exc = exhausted(web_guard())
    assert find_blocked(exc) is exc
    assert find_blocked(ExceptionGroup("outer", [ExceptionGroup("inner", [exc])])) is exc
    assert find_blocked(ExceptionGroup("two", [exc, ValueError()])) is None
    assert find_blocked(ValueError()) is None
    assert find_blocked(KeyboardInterrupt()) is None


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.control_reads = 0

    def control(self) -> Control:
        self.control_reads += 1
        return super().control()


def test_the_kill_switch_gate_reads_the_store_once_per_cache_window() -> None:
    store = CountingStore()
    clock = FakeClock(START)
    guard = make_guard(store=store, clock=clock, killswitch_cache_ms=500)
    request = Request("/chat", "acme", None)
    for _ in range(5):
        assert request.gate(guard) == ({"customer": "acme"}, None)
        assert asyncio.run(request.agate(guard)) == ({"customer": "acme"}, None)
    assert store.control_reads == 1
    clock.advance(0.5)
    request.gate(guard)
    assert store.control_reads == 2
    assert Request("/health", None, None, "skip").gate(guard) == ({}, None)
    assert store.control_reads == 2


def test_labels_merge_customer_and_extras_and_strip_the_header() -> None:
    guard = web_guard()
    assert Request("/", "  acme ", {"plan": "pro", "user": None}).labels(guard) == {"customer": "acme", "plan": "pro"}
    assert Request("/", "", None).labels(guard) == {"customer": "anonymous"}  # one shared instance, still capped
    assert Request("/", " ", None, "skip").labels(guard) == {}
    assert Request("/", "acme", {"customer": "override"}).labels(guard) == {"customer": "override"}


def test_labels_scope_sets_and_leaves_and_tolerates_another_context() -> None:
    leave = labels_scope({"customer": "a"})
    assert current_labels() == {"customer": "a"}
    leave()
    leave()
    assert current_labels() == {}
    leave_elsewhere = labels_scope({"customer": "b"})
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            leave_elsewhere()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors == []
    leave_elsewhere()
    assert current_labels() == {}


class Body:
    """A WSGI-style body that records the labels each chunk was made under and whether it was closed."""

    def __init__(self, chunks: list[bytes | BaseException]) -> None:
        self.chunks = chunks
        self.seen: list[dict[str, object]] = []
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.seen.append(dict(current_labels()))
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    def close(self) -> None:
        self.closed = True


def test_guarded_body_makes_each_chunk_inside_the_labels_and_closes_the_inner_body() -> None:
    inner = Body([b"a", b"b"])
    body = GuardedBody(inner, {"customer": "acme"})
    assert list(body) == [b"a", b"b"]
    assert inner.seen == [{"customer": "acme"}, {"customer": "acme"}]
    assert current_labels() == {}
    body.close()
    assert inner.closed
    assert list(body) == []


def test_guarded_body_closes_the_inner_body_even_if_never_iterated() -> None:
    inner = Body([b"a"])
    GuardedBody(inner, {}).close()
    assert inner.closed


def test_guarded_body_blocked_before_the_first_chunk_gets_the_replacement() -> None:
    exc = exhausted(web_guard())
    body = GuardedBody(Body([b"", exc]), {}, on_blocked=lambda blocked: [b"429 body"])
    assert list(body) == [b"", b"429 body"]


def test_guarded_body_blocked_after_a_chunk_ends_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    exc = exhausted(web_guard())
    replaced: list[Blocked] = []
    body = GuardedBody(Body([b"a", exc, b"never"]), {}, on_blocked=lambda b: replaced.append(b) or [b"x"])
    assert list(body) == [b"a"]
    assert replaced == []
    assert "ended early" in caplog.text


def test_guarded_body_lets_other_errors_through() -> None:
    with pytest.raises(ZeroDivisionError):
        list(GuardedBody(Body([b"a", ZeroDivisionError()]), {}))


def test_async_guarded_chunks() -> None:
    exc = exhausted(web_guard())
    closed: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield str(dict(current_labels())).encode()
            raise exc
        finally:
            closed.append(True)

    async def collect(source: Any) -> list[bytes]:
        return [chunk async for chunk in aguarded_chunks(source, {"customer": "acme"})]

    assert asyncio.run(collect(chunks())) == [b"{'customer': 'acme'}"]
    assert closed == [True]

    async def failing() -> AsyncIterator[bytes]:
        yield b"x"
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        asyncio.run(collect(failing()))


def test_feature_settings_exist_for_the_scenario() -> None:
    assert web_guard().feature("chat") == FeatureSettings(estimate_usd=10_000)


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("costguard.flask", "flask", "flask"),
        ("costguard.fastapi", "fastapi", "fastapi"),
        ("costguard.django", "django.conf", "django"),
    ],
)
def test_a_missing_framework_says_which_extra_to_install(
    module: str, package: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf'pip install "costguard-ai\[{extra}\]"'):
        importlib.import_module(module)
