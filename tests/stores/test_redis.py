"""Redis store specifics on fakeredis and a real Redis: round trips, keys, expiry, audit, errors, async."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster
from redis_helpers import record_commands
from redis_server import free_port
from test_contract import NOW, ceiling, plan, usd

from costguard import BudgetExceeded, Guard, StoreError, StoreUnavailable, engine
from costguard.engine import LimitOverride
from costguard.errors import ConfigError
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Ceiling, Limit, Period, Unit, make_match
from costguard.stores import KillSwitchState, check_store_url, open_store
from costguard.stores._redis_conn import Breaker, parse_options
from costguard.stores.redis import RedisStore
from costguard.testing import FakeClock

CEILINGS_3X2 = (
    ceiling({"feature": "f"}, usd(Period.MONTH, 100), usd(Period.DAY, 10)),
    ceiling({"customer": "*"}, usd(Period.MONTH, 50), usd(Period.DAY, 5)),
    ceiling({"feature": "f", "team": "*"}, usd(Period.MONTH, 20), usd(Period.DAY, 2)),
)


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def redis_url(request: pytest.FixtureRequest, redis_urls: Any) -> str:
    """A fresh namespace on fakeredis, then on the real Redis (COSTGUARD_TEST_REDIS_URL)."""
    return str(redis_urls.new(request.param))


@pytest.fixture
def rstore(redis_url: str, redis_urls: Any) -> Iterator[RedisStore]:
    store = redis_urls.open(redis_url)
    assert isinstance(store, RedisStore)
    yield store
    store.close()


def raw(store: RedisStore) -> Any:
    """The store's own sync client, for looking at keys directly."""
    return store._client()


def test_reserve_and_commit_are_one_evalsha_each(rstore: RedisStore) -> None:
    """3 ceilings x 2 periods: 6 counters, still one round trip to reserve and one to commit."""
    guard = Guard(rstore, ceilings=CEILINGS_3X2, clock=FakeClock(NOW))
    with guard.reserve("f", customer="acme", team="search", estimate_usd=0.01) as first:
        first.commit(0.02)  # the first call also reads the kill switches (then cached)
    recording = record_commands(rstore)
    with guard.reserve("f", customer="acme", team="search", estimate_usd=0.01) as second:
        limited = [op for op in second.plan.counters if not op.key.startswith(engine.HISTORY_PREFIX)]
        assert len(limited) == 6  # (+ 3 hourly history counters for forecasts, in the same script)
        assert recording.commands == ["EVALSHA"]
        second.commit(0.02)
    assert recording.commands == ["EVALSHA", "EVALSHA"]
    assert rstore.totals([op.key for op in limited]) == [40_000] * 6
    guard.close()


def test_every_key_of_a_namespace_is_in_one_cluster_slot(rstore: RedisStore) -> None:
    recording = record_commands(rstore)
    ceilings = [*CEILINGS_3X2, ceiling({"run": "*"}, usd(Period.TOTAL, 1), expire=3600)]
    weird = {"customer": "a:b{c}\n}{", "team": "ü" * 300, "run": "{x}"}
    p = plan(ceilings, **weird)
    rec = AuditRecord(NOW, "reserve", dict(p.labels), p.reservation_id)
    rstore.reserve(p, rec)
    rstore.settle(p.reservation_id, {Unit.USD: 5}, NOW, rec)
    rstore.set_killswitch(KillSwitchState((("customer", "a:b{c}"),), "r", None, NOW), True, rec)
    rstore.set_override(LimitOverride((("feature", "f"),), Period.DAY, Unit.USD, 5, "r"), False, rec)
    rstore.append([rec])
    rstore.purge(NOW + 10 * 86_400)
    keys = recording.evalsha_keys()
    assert len(keys) > 20
    assert all(key.startswith("{" + rstore.namespace + "}:") for key in keys)
    assert {redis.cluster.key_slot(key.encode()) for key in keys} == {redis.cluster.key_slot(keys[0].encode())}


def test_special_label_values_are_kept_apart_and_read_back_exactly(redis_url: str) -> None:
    pair = Ceiling(make_match({"a": "*", "b": "*"}), (Limit(Period.DAY, Unit.USD, 20_000),))
    guard = Guard(redis_url, ceilings=[pair], clock=FakeClock(NOW), max_label_length=20_000)
    values = [("x:y", "z"), ("x", "y:z"), ("{", "}"), ("}{", "\n"), ("é€😀", "\x01\t"), ("k" * 10_000, "v" * 10_001)]
    for a, b in values:
        with guard.reserve("f", a=a, b=b, estimate_usd=0.02):
            pass
    rows = guard.status().ceilings
    assert sorted((row.labels["a"], row.labels["b"], row.spent) for row in rows) == sorted(
        (a, b, 0.02) for a, b in values
    )
    guard.close()


def test_a_settle_from_another_process_reads_the_reservation_first(redis_url: str, redis_urls: Any) -> None:
    mine, other = redis_urls.open(redis_url), redis_urls.open(redis_url)
    assert isinstance(other, RedisStore)
    p = plan([*CEILINGS_3X2], customer="acme", team="t", estimate=20_000)
    assert mine.reserve(p, None).allowed
    recording = record_commands(other)
    outcome = other.settle(p.reservation_id, {Unit.USD: 15_000, Unit.CALLS: 1}, NOW, None)
    assert recording.commands == ["GET", "EVALSHA"]
    assert outcome.applied
    assert outcome.counters == p.counters  # rebuilt from engine.op_to_json, field for field
    assert outcome.totals == (15_000,) * 6
    assert not mine.settle(p.reservation_id, {Unit.USD: 15_000}, NOW, None).applied
    mine.close()
    other.close()


def test_a_lost_reservation_is_never_settled(rstore: RedisStore) -> None:
    """The reservation key is gone (Redis restarted without persistence): the commit must not count."""
    p = plan([ceiling({"feature": "f"}, usd(Period.DAY, 1))], estimate=20_000)
    rstore.reserve(p, None)
    raw(rstore).execute_command("DEL", rstore.prefix + "r:" + p.reservation_id)
    assert not rstore.settle(p.reservation_id, {Unit.USD: 20_000}, NOW, None).applied
    assert rstore.totals([p.counters[0].key]) == [20_000]


def test_a_kill_is_cleared_once_even_when_the_new_counter_is_lost(rstore: RedisStore) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.02))
    rstore.reserve(plan([cap], estimate=20_000), None)  # kill claimed today
    tomorrow = plan([cap], estimate=1, now=NOW + 86_400)
    assert [c.reason for c in rstore.reserve(tomorrow, None).crossings] == ["new period"]
    raw(rstore).execute_command("DEL", rstore.prefix + "c:" + tomorrow.counters[0].key)
    assert rstore.reserve(plan([cap], estimate=1, now=NOW + 86_400), None).crossings == ()


def test_expiries_are_relative_and_settled_reservations_kept_a_day(rstore: RedisStore) -> None:
    run = ceiling({"run": "*"}, usd(Period.TOTAL, 1), expire=3 * 86_400)
    forever = ceiling({"team": "*"}, usd(Period.TOTAL, 1))
    p = plan([FEATURE_DAY, run, forever], run="r", team="t")
    rstore.reserve(p, None)
    client = raw(rstore)
    ttl = {
        op.period.value + op.ceiling_id: client.execute_command("PTTL", rstore.prefix + "c:" + op.key)
        for op in p.counters
    }
    # NOW is months before the real clock: expiries count from the call's own time, not Redis's.
    day_left = (p.counters[0].expires_at or 0) - NOW
    assert abs(ttl["dayfeature=f"] / 1000 - day_left) < 60
    assert abs(ttl["totalrun=*"] / 1000 - 3 * 86_400) < 60
    assert ttl["totalteam=*"] == -1
    reservation = rstore.prefix + "r:" + p.reservation_id
    assert client.execute_command("PTTL", reservation) >= 2 * 86_400_000 - 60_000
    rstore.settle(p.reservation_id, None, NOW, None)
    assert 86_400_000 - 60_000 <= client.execute_command("PTTL", reservation) <= 86_400_000
    assert client.execute_command("GET", reservation) == b"1"  # its counters are no longer needed


FEATURE_DAY = ceiling({"feature": "f"}, usd(Period.DAY, 1))


def test_purge_follows_the_callers_clock_and_trims_the_indexes(rstore: RedisStore) -> None:
    run = ceiling({"run": "*"}, usd(Period.TOTAL, 1), expire=3600)
    day = plan([FEATURE_DAY], estimate=10)
    runs = [plan([run], run=f"r{i}") for i in range(3)]
    for p in (day, *runs):
        rstore.reserve(p, None)
    buckets = {Period.DAY: day.counters[0].bucket, Period.TOTAL: "total"}
    assert len(rstore.list_counters(buckets)) == 4
    assert rstore.purge(NOW + 60) == 0
    assert rstore.purge(NOW + 7200) == 3
    assert [row.period for row in rstore.list_counters(buckets)] == [Period.DAY]
    client = raw(rstore)
    assert client.execute_command("SCARD", rstore.prefix + "i:total:total") == 0
    assert client.execute_command("ZCARD", rstore.prefix + "exp") == 1
    assert rstore.purge(NOW + 10 * 86_400) == 1
    assert rstore.list_counters(buckets) == []


def test_audit_pages_back_with_before_id_and_filters(rstore: RedisStore) -> None:
    records = [
        AuditRecord(NOW + i, "commit" if i % 3 else "blocked", {"feature": "f" if i % 2 else "g", "customer": "c"})
        for i in range(1, 251)
    ]
    rstore.append(records)
    newest = rstore.audit(AuditQuery(limit=100))
    assert [r.id for r in newest] == list(range(250, 150, -1))
    seen = list(newest)
    for _ in range(5):
        page = rstore.audit(AuditQuery(limit=100, before_id=seen[-1].id))
        if not page:
            break
        assert all(r.id is not None and r.id < (seen[-1].id or 0) for r in page)
        seen += page
    assert [r.at for r in seen] == [r.at for r in reversed(records)]
    blocked_g = rstore.audit(AuditQuery(feature="g", decision="blocked", limit=5, since=NOW + 100, until=NOW + 200))
    assert [r.at for r in blocked_g] == [NOW + t for t in (198, 192, 186, 180, 174)]
    assert rstore.audit(AuditQuery(customer="nobody")) == []
    assert rstore.audit(AuditQuery(before_id=1)) == []


def test_audit_ids_keep_increasing_when_the_sequence_key_is_lost(rstore: RedisStore) -> None:
    rstore.append([AuditRecord(NOW, "a"), AuditRecord(NOW, "b")])
    raw(rstore).execute_command("DEL", rstore.prefix + "audit:seq")
    rstore.append([AuditRecord(NOW, "c")])
    assert [(r.id, r.decision) for r in rstore.audit(AuditQuery())] == [(3, "c"), (2, "b"), (1, "a")]


def test_the_stream_is_capped_at_maxlen(redis_url: str, redis_urls: Any) -> None:
    store = redis_urls.open(redis_url, maxlen=100)
    store.append([AuditRecord(NOW, "x", data={"i": i}) for i in range(1000)])
    assert isinstance(store, RedisStore)
    length = raw(store).execute_command("XLEN", store.prefix + "audit")
    assert 100 <= length < 1000
    assert store.audit(AuditQuery(limit=1))[0].data == {"i": 999}
    store.close()


def test_a_blocked_reserve_is_audited_as_the_engine_writes_it(rstore: RedisStore) -> None:
    cap = ceiling({"customer": "*"}, usd(Period.DAY, 0.01))
    p = plan([FEATURE_DAY, cap], customer="a:b", estimate=20_000)
    record = AuditRecord(NOW, "reserve", dict(p.labels), p.reservation_id, {"estimate_usd": 0.02, "fallback": None})
    outcome = rstore.reserve(p, record)
    assert not outcome.allowed
    (stored,) = rstore.audit(AuditQuery())
    expected = engine.reserve_record(p, outcome, record)
    assert stored == AuditRecord(expected.at, "blocked", expected.labels, p.reservation_id, expected.data, id=1)
    assert stored.data["scope"] == {"customer": "a:b"}
    assert stored.data["spent"] == 0.0
    assert stored.data["limit"] == 0.01


def test_killswitch_changes_are_audited_atomically(rstore: RedisStore) -> None:
    switch = KillSwitchState((), "incident", "ops", NOW)
    on = AuditRecord(NOW, "killswitch_activated", {}, None, {"reason": "incident"})
    assert rstore.set_killswitch(switch, True, on)
    assert not rstore.set_killswitch(switch, True, on)  # no change, no record
    assert not rstore.set_killswitch(KillSwitchState((("feature", "x"),), "", None, NOW), False, on)
    assert [r.decision for r in rstore.audit(AuditQuery())] == ["killswitch_activated"]
    assert rstore.control().killswitches == (switch,)


def test_cache_holds_binary_values_with_an_expiry(rstore: RedisStore) -> None:
    value = bytes(range(256)) * 10
    rstore.cache_set("key:{x}\n", value, NOW + 10)
    assert rstore.cache_get("key:{x}\n", NOW + 9.9) == value
    assert rstore.cache_get("key:{x}\n", NOW + 10) is None
    pttl = raw(rstore).execute_command("PTTL", (rstore.prefix + "k:key:{x}\n").encode())
    assert 0 < pttl <= 60_000  # Redis drops it on its own clock (NOW is in the past) a minute later


def test_a_script_failure_is_a_store_error_not_an_outage(rstore: RedisStore) -> None:
    p = plan([FEATURE_DAY])
    raw(rstore).execute_command("SET", rstore.prefix + "c:" + p.counters[0].key, "not a hash")
    with pytest.raises(StoreError) as raised:
        rstore.reserve(p, None)
    assert not isinstance(raised.value, StoreUnavailable)
    assert "during reserve" in str(raised.value)
    assert rstore.where in str(raised.value)
    assert not rstore._breaker.is_open
    assert rstore.reserve(plan([ceiling({"feature": "f"}, usd(Period.MONTH, 1))]), None).allowed


def test_settle_of_unknown_ids_costs_one_read(rstore: RedisStore) -> None:
    recording = record_commands(rstore)
    assert not rstore.settle("nope", {Unit.USD: 1}, NOW, None).applied
    assert recording.commands == ["GET"]


# ----------------------------------------------------------------------------- async


def test_async_methods_use_the_async_client_not_threads(rstore: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_threads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a native async method ran in a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))

    async def main() -> None:
        recording = record_commands(rstore)
        p = plan([cap], estimate=30_000)
        assert (await rstore.areserve(p, None)).allowed
        blocked = await rstore.areserve(plan([cap], estimate=30_000), None)
        assert (blocked.allowed, [c.threshold for c in blocked.crossings]) == (False, [1.0])
        settled = await rstore.asettle(p.reservation_id, {Unit.USD: 50_000}, NOW, None)
        assert settled.applied
        assert [c.threshold for c in settled.crossings] == [0.8]
        assert (await rstore.asettle("unknown", None, NOW, None)).applied is False
        await rstore.acache_set("k", b"\x00v", NOW + 5)
        assert await rstore.acache_get("k", NOW) == b"\x00v"
        assert (await rstore.acontrol()).killswitches == ()
        # The release of an unknown id leaves a tombstone (GET, SET NX), so its reserve can't count late.
        assert recording.commands == ["EVALSHA", "EVALSHA", "EVALSHA", "GET", "SET", "SET", "GET", "HGETALL"]
        await rstore.aclose()

    asyncio.run(main())
    assert rstore.totals([plan([cap]).counters[0].key]) == [50_000]


def test_async_guarded_calls_race_a_cap_exactly(redis_url: str) -> None:
    guard = Guard(
        redis_url,
        ceilings=[Ceiling(make_match({"feature": "f"}), (Limit(Period.DAY, Unit.USD, 1_000_000),))],
        on_store_error="closed",  # a store error ends a task instead of letting calls through unbudgeted
        store_options={"timeout_ms": 30_000},  # a loaded CI machine is not an outage
    )
    store = guard.store
    assert isinstance(store, RedisStore)

    async def one() -> int:
        for done in range(300):
            try:
                async with guard.areserve("f", estimate_usd=0.004) as reservation:
                    await reservation.acommit(0.004)
            except BudgetExceeded:
                return done
        raise AssertionError("never blocked")

    async def main() -> int:
        counts = await asyncio.gather(*(one() for _ in range(64)))
        await store.aclose()
        return sum(counts)

    assert asyncio.run(main()) == 250
    assert guard.status(feature="f").ceilings[0].spent == 1.0
    guard.close()


def test_close_closes_async_clients_of_idle_loops(rstore: RedisStore) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(rstore.areserve(plan([FEATURE_DAY]), None))
        assert len(rstore._async) == 1
        rstore.close()  # the loop is idle but open: its client is closed on it
        assert rstore._async == {}
    finally:
        loop.close()
    gc.collect()  # an unclosed connection would warn (an error here) when collected


# ----------------------------------------------------------------------------- unreachable, breaker, options


def test_an_unreachable_redis_fails_fast_and_the_guard_follows_on_store_error(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?namespace=down&breaker_s=30"
    with caplog.at_level(logging.WARNING, logger="costguard"):
        store = open_store(url)
    assert "calls follow on_store_error" in caplog.text
    assert "circuit open" not in caplog.text
    for _ in range(2):  # refused at once, and counted: the third failure in a row opens the circuit
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="unavailable during reserve"):
            store.reserve(plan([FEATURE_DAY]), None)
        assert time.perf_counter() - started < 0.5
    took = []
    for _ in range(20):  # the breaker answers without the network: the fastest of 20 (a busy machine
        started = time.perf_counter()  # may deschedule any single one)
        with pytest.raises(StoreUnavailable, match="circuit open after 3 connection failures in a row"):
            store.reserve(plan([FEATURE_DAY]), None)
        took.append(time.perf_counter() - started)
    assert min(took) < 0.005
    guard = Guard(store, ceilings=[FEATURE_DAY], on_store_error="open", spool_dir=False)
    with guard.reserve("f", estimate_usd=0.01) as reservation:
        assert reservation.decision.reason == "store_error"
    assert guard.pending == 1  # kept until Redis answers
    guard.close(timeout=0.1)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_fails_fast_then_lets_one_probe_through(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("costguard.stores._redis_conn.time.monotonic", clock)
    breaker = Breaker(1.0, "h:1 (namespace 'n')")
    breaker.check()
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # an answer in between: the failures were not in a row
    breaker.failed()
    breaker.failed()
    breaker.check()  # two in a row: not yet an outage
    breaker.failed()
    with pytest.raises(StoreUnavailable, match=r"h:1 \(namespace 'n'\).*circuit open.*retrying in 1.00 s"):
        breaker.check()
    clock.now += 1.0
    breaker.check()  # this caller probes
    with pytest.raises(StoreUnavailable, match="circuit open"):
        breaker.check()  # others still fail fast while the probe is out
    breaker.failed()  # the probe failed: another cool-down
    clock.now += 0.5
    with pytest.raises(StoreUnavailable):
        breaker.check()
    clock.now += 0.5
    breaker.check()
    breaker.succeeded()
    breaker.check()
    breaker.check()
    assert not breaker.is_open
    clock.now += 10
    for _ in range(3):
        breaker.failed()
    clock.now += 1.0
    breaker.check()
    clock.now += 5.0  # a probe that never reported back doesn't wedge the breaker
    breaker.check()


def test_breaker_can_be_switched_off() -> None:
    breaker = Breaker(0, "h")
    breaker.failed()
    breaker.check()


def test_url_options() -> None:
    options = parse_options(
        "rediss://user:secret@cache.internal:6380/2?namespace=shop.eu&timeout_ms=250&breaker_s=0.5"
        "&maxlen=5000&ssl_cert_reqs=none"
    )
    assert options.client_url == "rediss://user:secret@cache.internal:6380/2?ssl_cert_reqs=none"
    assert options.where == "cache.internal:6380"
    assert (options.namespace, options.timeout_s, options.connect_timeout_s) == ("shop.eu", 0.25, 0.25)
    assert (options.breaker_s, options.maxlen, options.cluster) == (0.5, 5000, False)
    defaults = parse_options("redis://localhost")
    assert (defaults.namespace, defaults.timeout_s, defaults.breaker_s, defaults.maxlen) == (
        "costguard",
        2.0,
        1.0,
        1_000_000,
    )
    cluster = parse_options("redis+cluster://10.0.0.1:7000?connect_timeout_ms=500", timeout_ms=50)
    assert (cluster.cluster, cluster.client_url, cluster.timeout_s, cluster.connect_timeout_s) == (
        True,
        "redis://10.0.0.1:7000",
        0.05,
        0.5,
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:hunter2@h/0?timeout_ms=0", "timeout_ms in redis://:\\*\\*\\*@h/0"),
        ("redis://h/0?timeout_ms=fast", "timeout_ms .* must be a number"),
        ("redis://h/0?maxlen=1.5", "maxlen .* must be a whole number"),
        ("redis://h/0?breaker_s=-1", "breaker_s"),
        ("redis://h/0?namespace=a{b}", "namespace 'a{b}' .* hash tag"),
        ("redis://h/0?namespace=", "namespace ''"),
        ("redis://h:port/0", "bad port"),
    ],
)
def test_bad_url_options_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        open_store(url)
    assert raised.value.path == "store"
    assert "hunter2" not in str(raised.value)


def test_store_urls_accept_every_redis_form() -> None:
    for url in ("redis://h", "rediss://h:6380/1", "redis+cluster://h:7000", "rediss+cluster://h"):
        check_store_url(url)
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        check_store_url("redis+sentinel://h")


def test_a_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "costguard.stores.redis", raising=False)
    monkeypatch.delitem(sys.modules, "costguard.stores._redis_conn", raising=False)
    with pytest.raises(ConfigError, match=r'pip install "costguard-ai\[redis\]"'):
        open_store("redis://127.0.0.1:1/0")


def test_reserve_ops_json_is_op_to_json(rstore: RedisStore) -> None:
    """The cached-fragment encoding of a reservation's counters reads back as engine.op_to_json."""
    ceilings = [
        *CEILINGS_3X2,
        ceiling({"run": "*"}, usd(Period.TOTAL, 1), expire=7 * 86_400),
        ceiling({"vendor": "*"}, usd(Period.TOTAL, 1), enforcement="soft"),
    ]
    for estimate in (0, 7, 10**15):
        p = plan(ceilings, estimate=estimate, customer="c\u2028\"'", team="t", run="r", vendor="v")
        _, args = rstore.codec.reserve_call(p, None)
        assert json.loads(args[3]) == json.loads(json.dumps([engine.op_to_json(op) for op in p.counters]))


def test_namespaces_are_isolated(redis_url: str, redis_urls: Any) -> None:
    first = redis_urls.open(redis_url)
    kind = "fakeredis" if "127.0.0.1:1/" in redis_url else "redis"
    other_url = redis_urls.new(kind, same_server_as=redis_url)
    second = redis_urls.open(other_url)
    p = plan([FEATURE_DAY], estimate=30_000)
    first.reserve(p, None)
    assert second.totals([p.counters[0].key]) == [0]
    assert first.totals([p.counters[0].key]) == [30_000]
    first.close()
    second.close()


def test_settle_many_pipelines_a_batch(redis_url: str, redis_urls: Any) -> None:
    mine, other = redis_urls.open(redis_url), redis_urls.open(redis_url)
    assert isinstance(mine, RedisStore)
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 1))
    here, there, twice = (plan([cap], estimate=10_000) for _ in range(3))
    broken = plan([ceiling({"feature": "f"}, usd(Period.MONTH, 1))], estimate=10_000)
    for p in (here, twice, broken):
        mine.reserve(p, None)
    other.reserve(there, None)
    mine.settle(twice.reservation_id, None, NOW, None)
    # A counter that is not a hash: that item's script fails before writing anything.
    raw(mine).execute_command("SET", mine.prefix + "c:" + broken.counters[0].key, "x")
    if "127.0.0.1:1/" in redis_url:  # fakeredis: lose the scripts (not on a shared server)
        raw(mine).execute_command("SCRIPT", "FLUSH")
    recording = record_commands(mine)
    commit = {Unit.USD: 20_000}
    items = [(p.reservation_id, commit, NOW, None) for p in (here, there, twice, broken)]
    out = mine.settle_many([*items, ("unknown", commit, NOW, None)])
    assert [getattr(o, "applied", type(o).__name__) for o in out] == [True, True, False, "StoreError", False]
    assert recording.log[0][1:] == ("GET",) * 3  # only what this process didn't reserve (or settled)
    assert recording.log[1][1:] == ("EVALSHA",) * 3  # unknown and settled ones need no script
    if "127.0.0.1:1/" in redis_url:
        assert recording.commands == ["<PIPELINE>", "<PIPELINE>", "SCRIPT", "<PIPELINE>"]
    else:
        assert recording.commands == ["<PIPELINE>", "<PIPELINE>"]
    assert mine.totals([here.counters[0].key]) == [20_000 + 20_000]
    # The failed item is still open: fixed, it settles on the next try.
    raw(mine).execute_command("DEL", mine.prefix + "c:" + broken.counters[0].key)
    (retried,) = mine.settle_many([items[3]])
    assert getattr(retried, "applied", None) is True
    mine.close()
    other.close()


def test_settle_many_reports_an_outage_for_every_item() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0?namespace=down&breaker_s=0")
    out = store.settle_many([("a", None, NOW, None), ("b", None, NOW, None)])
    assert len(out) == 2
    assert all(isinstance(o, StoreUnavailable) for o in out)
    store.close()


def test_async_connections_pack_commands_like_redis_py() -> None:
    """The asyncio client packs with hiredis (much faster for a reserve's ~130 arguments), byte for byte."""
    from redis.asyncio.connection import Connection

    from costguard.stores._redis_conn import async_client

    client = async_client(parse_options("redis://127.0.0.1:1/0"))
    fast_class = client.connection_pool.connection_class  # type: ignore[attr-defined]
    assert fast_class.__name__ == "HiredisPackingConnection"
    fast, plain = fast_class(), Connection()
    for args in [
        ("EVALSHA", "ab" * 20, 2, "{ns}:c:k|é", b"\x00\xff", "10", -5, "", "😀" * 3),
        ("CONFIG GET", "maxmemory-policy"),
        (b"SCRIPT LOAD", "return 1"),
    ]:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0?namespace=pw&breaker_s=0"
    with caplog.at_level(logging.WARNING, logger="costguard"):
        guard = Guard(url, ceilings=[FEATURE_DAY])
    with pytest.raises(StoreUnavailable) as raised:
        guard.store.reserve(plan([FEATURE_DAY]), None)
    assert guard.store.url == url.replace("s3cret-pw", "***")
    for shown in (repr(guard), repr(guard.store), str(raised.value), caplog.text):
        assert "s3cret-pw" not in shown
    guard.close()


def test_close_from_inside_the_loop_closes_its_connections(rstore: RedisStore) -> None:
    """`guard.close()` called from a coroutine (an app's shutdown hook) as the loop's last act."""

    async def main() -> None:
        await rstore.areserve(plan([FEATURE_DAY]), None)
        rstore.close()

    asyncio.run(main())
    assert rstore._async == {}
    gc.collect()  # an unclosed connection would warn (an error here) when collected
