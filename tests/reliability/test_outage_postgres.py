"""A real PostgreSQL outage: the test runs its own cluster on a spare loopback port, kills it mid-run
(SIGKILL of the postmaster and its backends) and starts it again on the same port and data directory.

The Redis version is test_outage.py; this one reuses its guards, costs and calls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from test_outage import COSTS, call, make

from costguard import Ceiling, FeatureSettings, Guard, Limit, Period, Unit
from costguard.fallback import static
from costguard.model import make_match
from stores.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

TIMEOUT_MS = 300
# A call during the outage makes a few store attempts (kill switch read, reserve, settle); a killed
# server refuses each at once, so the statement timeout plus scheduling slack bounds the whole call.
CALL_BOUND_S = TIMEOUT_MS / 1000 + 0.7
RECOVERY_S = 10.0


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as running:
        yield running


@pytest.fixture
def url(server: PostgresServer) -> Iterator[str]:
    """The private server with a fresh table prefix; running again after the test whatever happened."""
    yield f"{server.url}?timeout_ms={TIMEOUT_MS}&prefix=t{uuid.uuid4().hex[:10]}_"
    server.start()


def chat_guard(url: str, policy: str, *, killswitch_cache_ms: float = 50, buffer_size: int = 10_000) -> Guard:
    """A guard with only test_outage's `chat` feature, for the options `make` does not take."""
    ceilings = [Ceiling(make_match({"feature": "chat"}), (Limit(Period.MONTH, Unit.USD, 100_000_000),))]
    features = {"chat": FeatureSettings(estimate_usd=20_000, fallback=static("busy"), on_store_error=policy)}  # type: ignore[arg-type]
    return Guard(
        url, ceilings=ceilings, features=features, killswitch_cache_ms=killswitch_cache_ms, buffer_size=buffer_size
    )


def spent_micros(guard: Guard) -> tuple[int, int]:
    """The chat feature's monthly spend and in-flight reservations, in micro-dollars, read from the store."""
    (row,) = [c for c in guard.status(feature="chat").ceilings if c.period == "month"]
    return micros(row.spent), micros(row.reserved)


def drain(guard: Guard) -> None:
    """Flush until the buffer is empty: the first attempt after the restart may meet a dead pooled connection."""
    deadline = time.monotonic() + RECOVERY_S
    while not guard.flush(1.0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert guard.pending == 0


def test_postgres_outage_open_buffers_closed_falls_back_and_nothing_is_lost(server: PostgresServer, url: str) -> None:
    opened, closed = make(url, "open"), make(url, "closed")
    try:
        for cost in COSTS:
            assert call(opened, cost)[0] == "answer"
        assert opened.pending == 0  # written straight away while the server is up
        opened.killswitch.activate(reason="incident", actor="ops", scope={"feature": "ks"})
        switch_guard = opened.with_kill_switch("ks")(lambda: "ran")
        assert switch_guard() == "off"  # this process has seen the switch on

        server.kill()
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
        assert max(durations) < CALL_BOUND_S, durations  # no call waits on the dead server
        assert opened.pending == len(COSTS)  # the outage's costs wait in the buffer
        assert closed.pending == 0  # a call that fell back cost nothing

        server.start()
        drain(opened)
        assert spent_micros(opened) == (2 * sum(map(micros, COSTS)), 0)  # every call, before and during
        assert switch_guard() == "off"  # the switch survived the crash

        # The closed guard recovers by itself: at most one call meets a connection that died with the server.
        results = [call(closed, COSTS[0])[0] for _ in range(2)]
        assert results[-1] == "answer" and results.count("busy") <= 1, results
        expected = 2 * sum(map(micros, COSTS)) + results.count("answer") * micros(COSTS[0])
        assert spent_micros(closed) == (expected, 0)
    finally:
        opened.close(timeout=1)
        closed.close(timeout=1)


def test_postgres_restart_between_calls_fails_at_most_one_call(server: PostgresServer, url: str) -> None:
    """Killed and back before anyone noticed: each pool still holds a connection to the dead server.

    The kill switch view is cached for a minute, so no control read meets the dead connection
    first: the reserve does. Closed: that one call falls back and the pool is invalidated, the next
    reconnects. Open: that call goes through unreserved and its cost is written on a new connection.
    """
    opened = chat_guard(url, "open", killswitch_cache_ms=60_000)
    closed = chat_guard(url, "closed", killswitch_cache_ms=60_000)
    try:
        for cost in COSTS[:3]:
            assert call(opened, cost)[0] == "answer"
            assert call(closed, cost)[0] == "answer"
        server.kill()
        server.start()

        closed_results = [call(closed, cost)[0] for cost in COSTS[3:]]
        assert closed_results.count("busy") <= 1 and "busy" not in closed_results[1:], closed_results
        for cost in COSTS[3:]:
            assert call(opened, cost)[0] == "answer"
        drain(opened)
        drain(closed)  # each process gives its slices of the hot counter back
        answered = sum(
            micros(cost) for cost, result in zip(COSTS[3:], closed_results, strict=True) if result == "answer"
        )
        before = 2 * sum(map(micros, COSTS[:3]))
        assert spent_micros(opened) == (before + sum(map(micros, COSTS[3:])) + answered, 0)
    finally:
        opened.close(timeout=1)
        closed.close(timeout=1)


def test_postgres_outage_a_full_spool_refuses_calls_and_drops_no_cost(server: PostgresServer, url: str) -> None:
    """Room for 8 writes: each call admitted while the server is down takes two (its forced reserve,
    then its commit), so 4 are admitted and the rest get the fallback — none is admitted and lost."""
    guard = chat_guard(url, "open", buffer_size=8)
    try:
        assert call(guard, COSTS[0])[0] == "answer"
        server.kill()
        results = [call(guard, cost)[0] for cost in COSTS[1:]]
        assert results == ["answer"] * 4 + ["busy"] * (len(COSTS) - 5)
        assert guard.pending == 4  # bounded: the spool never holds more than buffer_size writes
        assert guard.dropped_records == len(COSTS) - 5  # each refusal counted (and alerted), nothing dropped

        server.start()
        drain(guard)
        assert spent_micros(guard) == (sum(map(micros, COSTS[:5])), 0)  # every admitted call, exactly
    finally:
        guard.close(timeout=1)
