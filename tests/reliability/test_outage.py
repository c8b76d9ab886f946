"""A real store outage: the test runs its own redis-server (with an append-only file so data survives
the restart), kills it mid-run and starts it again on the same port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from costguard import Ceiling, FeatureSettings, Guard, Limit, Period, Unit
from costguard.fallback import static
from costguard.model import make_match
from stores.redis_server import RedisServer

pytestmark = pytest.mark.redis

COSTS = [0.011, 0.012, 0.013, 0.014, 0.015, 0.016, 0.017, 0.018, 0.019, 0.02]


def make(url: str, policy: str) -> Guard:
    ceilings = [
        Ceiling(make_match({"feature": "chat"}), (Limit(Period.MONTH, Unit.USD, 100_000_000),)),
        Ceiling(make_match({"feature": "ks"}), (Limit(Period.MONTH, Unit.USD, 100_000_000),)),
    ]
    features = {
        "chat": FeatureSettings(estimate_usd=20_000, fallback=static("busy"), on_store_error=policy),  # type: ignore[arg-type]
        "ks": FeatureSettings(estimate_usd=20_000, fallback=static("off")),
    }
    # Per-call reservations: these tests count what each call leaves in the buffer (leases during an
    # outage: test_leases_reliability.py).
    return Guard(url, ceilings=ceilings, features=features, killswitch_cache_ms=50, leases=False)


def call(guard: Guard, cost: float) -> tuple[str, float]:
    @guard.with_kill_switch("chat", cost=cost)
    def chat() -> str:
        return "answer"

    started = time.monotonic()
    result = chat()
    return result, time.monotonic() - started


def test_outage_open_buffers_closed_falls_back_and_nothing_is_lost(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path, extra=("--appendonly", "yes", "--appendfsync", "always")).start()
    url = f"{server.url}?timeout_ms=100&breaker_s=0.5"
    opened, closed = make(url, "open"), make(url, "closed")
    try:
        for cost in COSTS:
            assert call(opened, cost)[0] == "answer"
        opened.killswitch.activate(reason="incident", actor="ops", scope={"feature": "ks"})
        switch_guard = opened.with_kill_switch("ks")(lambda: "ran")
        assert switch_guard() == "off"  # this process has seen the switch on

        server.stop()
        durations = []
        for cost in COSTS:
            result, took = call(opened, cost)
            assert result == "answer"  # open: the call goes through
            durations.append(took)
            result, took = call(closed, cost)
            assert result == "busy"  # closed: the fallback, no exception
            durations.append(took)
        time.sleep(0.1)  # past the kill switch cache: the store must be asked, and it is down
        assert switch_guard() == "off"  # fail-closed from known-active
        assert max(durations) < 1.0, durations  # the store timeout (100 ms) and the breaker bound each call
        assert opened.pending == len(COSTS)  # the outage's costs wait in the buffer

        server.start()
        deadline = time.monotonic() + 10
        while not opened.flush(1.0) and time.monotonic() < deadline:
            time.sleep(0.2)  # the breaker lets a probe through after breaker_s
        assert opened.pending == 0
        (row,) = [c for c in opened.status(feature="chat").ceilings if c.period == "month"]
        assert row.spent == pytest.approx(2 * sum(COSTS))  # every call's cost, before and during the outage
        assert row.reserved == 0
    finally:
        opened.close(timeout=1)
        closed.close(timeout=1)
        server.stop()
