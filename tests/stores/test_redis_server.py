"""The Redis store against private redis-servers it may stop, pause, flush and reconfigure (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisCluster, RedisServer, free_port
from test_contract import NOW, ceiling, plan, usd

from costguard import Guard, StoreUnavailable
from costguard.errors import StoreTimeout
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit
from costguard.stores import KillSwitchState, open_store
from costguard.stores._redis_conn import SCRIPTS
from costguard.stores.redis import RedisStore
from costguard.testing import FakeClock

pytestmark = pytest.mark.redis

CEILINGS_3X2 = (
    ceiling({"feature": "f"}, usd(Period.MONTH, 100), usd(Period.DAY, 10)),
    ceiling({"customer": "*"}, usd(Period.MONTH, 50), usd(Period.DAY, 5)),
    ceiling({"feature": "f", "team": "*"}, usd(Period.MONTH, 20), usd(Period.DAY, 2)),
)
DAY_CAP = ceiling({"feature": "f"}, usd(Period.DAY, 1))


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture
def url(server: RedisServer) -> Iterator[str]:
    yield f"{server.url}?namespace=t{uuid.uuid4().hex[:8]}"
    with server.client() as client:
        client.flushall()
        client.config_set("maxmemory-policy", "noeviction")


class Monitor:
    """The commands clients send to the server (MONITOR), without those scripts run inside Redis."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client() as client, client.monitor() as monitor:
            self._ready.set()
            sent: list[tuple[object, str]] = []
            while True:
                seen = monitor.next_command()
                if seen["command"] == "ECHO monitor-stop":
                    # Leave out the stopping client's own commands (its connection handshake).
                    self.commands = [name for port, name in sent if port != seen.get("client_port")]
                    return
                if seen.get("client_type") != "lua":
                    sent.append((seen.get("client_port"), seen["command"].split(" ", 1)[0].upper()))

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.server.client() as client:
            client.echo("monitor-stop")
        self._thread.join(5)


def test_a_guarded_call_is_two_evalsha_on_the_server(server: RedisServer, url: str) -> None:
    """MONITOR: 3 ceilings x 2 periods reserve and commit with nothing but two EVALSHA (without leases)."""
    guard = Guard(url, ceilings=CEILINGS_3X2, clock=FakeClock(NOW), leases=False)
    with guard.reserve("f", customer="acme", team="t", estimate_usd=0.01):
        pass  # warms the kill switch cache
    with Monitor(server) as monitor:
        for _ in range(10):
            with guard.reserve("f", customer="acme", team="t", estimate_usd=0.01) as reservation:
                reservation.commit(0.005)
    assert monitor.commands == ["EVALSHA"] * 20
    guard.close()


def test_a_hot_feature_with_leases_makes_few_store_operations(server: RedisServer, url: str) -> None:
    """MONITOR: with leases (the default), 1 000 calls of one hot feature under 3 ceilings x 2 periods
    make at most 0.05 store operations per call — and the store has exactly what they cost."""
    ceilings = (  # far from their caps (a slice takes at most 1/64 of the headroom)
        ceiling({"feature": "f"}, usd(Period.MONTH, 100_000), usd(Period.DAY, 10_000)),
        ceiling({"customer": "*"}, usd(Period.MONTH, 50_000), usd(Period.DAY, 5_000)),
        ceiling({"feature": "f", "team": "*"}, usd(Period.MONTH, 20_000), usd(Period.DAY, 2_000)),
    )
    guard = Guard(url, ceilings=ceilings, clock=FakeClock(NOW))
    with guard.reserve("f", customer="acme", team="t", estimate_usd=0.01):
        pass  # warms the kill switch cache
    with Monitor(server) as monitor:
        for _ in range(1000):
            with guard.reserve("f", customer="acme", team="t", estimate_usd=0.01) as reservation:
                reservation.commit(0.005)
        guard.close()  # slices go back, audit batches are written
    assert 0 < len(monitor.commands) <= 50, monitor.commands
    check = Guard(url, ceilings=ceilings, clock=FakeClock(NOW), leases=False)
    rows = check.status().ceilings
    assert len(rows) == 6
    assert {(row.spent, row.reserved) for row in rows} == {(5.01, 0.0)}
    assert len(check.audit(feature="f", decision="commit", limit=1000)) == 1000
    check.close()


def test_lost_scripts_are_loaded_again_and_the_call_counts_once(server: RedisServer, url: str) -> None:
    store = open_store(url)
    first = plan([DAY_CAP], estimate=10_000)
    store.reserve(first, None)
    with server.client() as client:
        client.script_flush()
        client.config_resetstat()
    second = plan([DAY_CAP], estimate=10_000)
    assert store.reserve(second, None).allowed
    with server.client() as client:
        stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] + stats["cmdstat_evalsha"].get("rejected_calls", 0) == 2
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert store.totals([first.counters[0].key]) == [20_000]
    store.close()


def test_a_restart_fails_fast_then_recovers_with_the_scripts_reloaded(tmp_path: Path) -> None:
    port = free_port()
    first = RedisServer(port, workdir=tmp_path).start()
    url = f"redis://127.0.0.1:{port}/0?namespace=restart&breaker_s=0.3"
    guard = Guard(url, ceilings=[DAY_CAP], clock=FakeClock(NOW), on_store_error="open", outage_allowance_usd=0.05)
    store = guard.store
    assert isinstance(store, RedisStore)
    with guard.reserve("f", estimate_usd=0.01):
        pass
    first.stop()

    for _ in range(3):  # refused at once; three in a row are an outage
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}.*namespace 'restart'"):
            store.reserve(plan([DAY_CAP]), None)
        assert time.perf_counter() - started < 0.5
    took = []
    for _ in range(100):  # while down, the breaker answers in microseconds (the median: a busy machine
        started = time.perf_counter()  # may deschedule a few)
        with pytest.raises(StoreUnavailable, match="circuit open"):
            store.reserve(plan([DAY_CAP]), None)
        took.append(time.perf_counter() - started)
    assert sorted(took)[50] < 0.002
    with guard.reserve("f", estimate_usd=0.02) as during:
        assert during.decision.reason == "store_error"  # on_store_error: open, the cost buffered
    assert guard.pending == 1

    with RedisServer(port, workdir=tmp_path) as second:  # a new, empty server: no data, no scripts
        deadline = time.monotonic() + 10
        while True:
            try:
                outcome = store.reserve(plan([DAY_CAP], estimate=5_000), None)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert outcome.allowed
        with second.client() as client:
            assert client.script_exists(SCRIPTS["reserve"].sha) == [True]
        assert guard.flush()
        assert guard.pending == 0
        assert store.totals([plan([DAY_CAP]).counters[0].key]) == [25_000]  # 5_000 + the buffered 0.02
        guard.close()


def test_an_allkeys_eviction_policy_is_warned_about(
    server: RedisServer, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with server.client() as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.WARNING, logger="costguard"):
        open_store(url).close()
    (warning,) = [r for r in caplog.records if r.name == "costguard"]
    assert warning.levelno == logging.WARNING
    assert "allkeys-lru" in warning.getMessage()
    assert "silently reset" in warning.getMessage()
    assert "noeviction" in warning.getMessage()
    caplog.clear()
    with server.client() as client:
        client.config_set("maxmemory-policy", "volatile-lru")
    with caplog.at_level(logging.WARNING, logger="costguard"):
        open_store(url).close()
    assert [r for r in caplog.records if r.name == "costguard"] == []


def test_a_stalled_server_times_out_within_the_socket_timeout_and_never_opens_the_breaker(
    server: RedisServer, url: str
) -> None:
    store = open_store(url + "&timeout_ms=100&breaker_s=5")
    stalled = plan([DAY_CAP], estimate=10_000)
    with server.client() as client:
        client.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        try:
            for attempt in range(4):
                started = time.perf_counter()
                with pytest.raises(StoreTimeout, match="did not answer reserve in time"):
                    store.reserve(stalled, None)
                assert 0.09 < time.perf_counter() - started < 0.5, attempt
            # A slow reply is overload, not an outage: the breaker stays closed, and the next call
            # waits for Redis again instead of failing fast.
            assert not store._breaker.is_open
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
    # The server may still run the EVALSHAs it had received: asked again with the same id, the store
    # answers with the first outcome and counts it once whatever happened.
    deadline = time.monotonic() + 5
    while True:
        try:
            again = store.reserve(stalled, None)
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert again.allowed
    assert store.totals([stalled.counters[0].key]) == [10_000]
    assert store.reserve(plan([DAY_CAP], estimate=1), None).totals == (10_001,)  # no stale reply read
    store.close()


@pytest.mark.slow
def test_the_store_runs_on_a_redis_cluster(tmp_path: Path) -> None:
    with RedisCluster(tmp_path) as cluster:
        url = f"{cluster.url}?namespace=c{uuid.uuid4().hex[:6]}&timeout_ms=2000"
        store = open_store(url)
        assert isinstance(store, RedisStore)
        p = plan([*CEILINGS_3X2], customer="a{b}:c", team="t", estimate=10_000)
        record = AuditRecord(NOW, "reserve", dict(p.labels), p.reservation_id)
        assert store.reserve(p, record).allowed
        settled = store.settle_many([(p.reservation_id, {Unit.USD: 20_000}, NOW, record)])
        assert getattr(settled[0], "applied", None) is True
        assert store.totals([op.key for op in p.counters]) == [20_000] * 6
        buckets = {op.period: op.bucket for op in p.counters}
        assert len(store.list_counters(buckets)) == 6
        assert store.set_killswitch(KillSwitchState((), "drill", "ops", NOW), True, record)
        assert len(store.control().killswitches) == 1
        assert [r.id for r in store.audit(AuditQuery())] == [3, 2, 1]
        store.cache_set("k", b"v", NOW + 5)
        assert store.cache_get("k", NOW) == b"v"
        assert store.purge(NOW + 100 * 86_400) == 6

        async def main() -> None:
            q = plan([DAY_CAP], estimate=1_000)
            assert (await store.areserve(q, None)).allowed
            assert (await store.asettle(q.reservation_id, None, NOW, None)).applied
            assert (await store.acontrol()).killswitches
            await store.aclose()

        asyncio.run(main())
        # Every key of the namespace lives on one node.
        counts = []
        for node in cluster.nodes:
            with node.client() as client:
                counts.append(len(client.keys("{" + store.namespace + "}:*")))
        assert sorted(counts)[:2] == [0, 0]
        assert sorted(counts)[2] > 0
        store.close()
