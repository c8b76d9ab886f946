"""Cardinality: many distinct customers in a day cost a bounded number of keys each, and all of it expires.

The guard under test has the ceilings a per-customer budget usually has:

- `FEATURE`: feature `chat`, a month and a day USD limit (shared by every customer);
- `PER_CUSTOMER`: `{"feature": "chat", "customer": "*"}`, a day USD limit of $0.01 (one instance per customer).

Each customer makes one call; every `BLOCKED_EVERY`-th asks for more than its cap and is refused. A
call touches five counters: the feature's month and day counters and its hourly history counter
(shared by all customers), and the customer's day counter and its hourly history counter (the spend
history forecasts read, `engine.history_key`). So a customer whose call was allowed costs exactly
**two counters**, plus one reservation record, which is keyed by reservation id and does not name
the customer. A refused call creates one counter only: the one that refused it (its kill is claimed
there); ids minted for each request and refused add nothing else.

Every per-customer counter expires: the day counter `EXPIRY_GRACE_S` (2 days) after its day ends,
the history counter `HISTORY_KEEP_S` (8 days) after its hour ends — the history counter is what a
customer seen once costs longest.

`COSTGUARD_CARDINALITY_CUSTOMERS` sets the customers per day of the Redis and memory tests (CI
defaults: 3 000 and 8 000; `=1000000` is the plan's "10⁶ customers in a day"). The figures
(RSS per customer, Redis bytes per customer) are logged: `-o log_cli=true --log-cli-level=INFO`.
"""

from __future__ import annotations

import gc
import logging
import math
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import timezone
from typing import Any

import pytest
import sqlalchemy as sa

from costguard import BudgetExceeded, Guard
from costguard.engine import EXPIRY_GRACE_S, HISTORY_KEEP_S, counter_key, history_key
from costguard.model import Period
from costguard.periods import bucket_for
from costguard.stores import MemoryStore
from costguard.stores.redis import RedisStore
from costguard.stores.sql import SQLStore
from costguard.testing import FakeClock
from helpers import make_guard, usd_ceiling

log = logging.getLogger(__name__)

_ENV = os.environ.get("COSTGUARD_CARDINALITY_CUSTOMERS")
REDIS_CUSTOMERS = int(_ENV or 3_000)
MEMORY_CUSTOMERS = int(_ENV or 8_000)
SQL_CUSTOMERS = 200  # rows per customer and the purge: the count doesn't change what it shows

UTC = timezone.utc  # the guard's default timezone
START = "2026-05-12T10:00:00Z"
# Nine days on, same month: past every day-1 expiry (the last: the 10:00 history hour's, 11:00 + 8
# days) and the day a settled reservation is kept, not past the month counter's (June 1 + 2 days).
DAY_2 = "2026-05-21T10:00:00Z"
FEATURE = usd_ceiling({"feature": "chat"}, month=1_000_000.0, day=100_000.0)
PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=0.01)
BLOCKED_EVERY = 7  # every 7th customer asks for $0.02 against its $0.01 cap: refused
SHARED_COUNTERS = 3  # the feature's month, day and history-hour counters
COUNTERS_PER_CUSTOMER = 2  # the customer's day counter and its history-hour counter
COUNTERS_PER_REFUSED = 1  # the day counter that refused the call
SETTLED_KEEP_MS = 86_400_000  # settle.lua: a settled reservation is kept a day (a retried commit: no-op)
OPEN_KEEP_MIN_MS = 2 * 86_400_000  # reserve.lua: an open one outlives its counters, two days at least
CUSTOMER_IN_KEY = re.compile(r"customer=([a-z]+\d{7})")


def epoch(moment: str) -> float:
    return FakeClock(moment).now


def customers(prefix: str, count: int) -> list[str]:
    """Fixed-width ids: no id is a prefix of another, and each can be read back out of a key."""
    return [f"{prefix}{index:07d}" for index in range(count)]


def refused(customer: str) -> bool:
    """Whether `drive` asks more than the cap for this customer: every `BLOCKED_EVERY`-th id."""
    return int(customer[-7:]) % BLOCKED_EVERY == BLOCKED_EVERY - 1


def drive(guard: Guard, names: Iterable[str]) -> tuple[int, int]:
    """One guarded call per customer ($0.002 estimate, $0.001 actual); returns (allowed, blocked)."""
    allowed = blocked = 0
    for customer in names:
        over = refused(customer)
        try:
            with guard.reserve("chat", estimate_usd=0.02 if over else 0.002, customer=customer) as r:
                r.commit(0.001)
        except BudgetExceeded:
            assert over, customer
            blocked += 1
        else:
            assert not over, customer
            allowed += 1
    return allowed, blocked


def customer_keys(customer: str, at: float) -> set[str]:
    """The engine's names of the counters a customer's call at `at` leaves: its day and history
    counters, or only the day counter when `drive` had it refused."""
    bound = {"customer": customer, "feature": "chat"}
    (limit,) = PER_CUSTOMER.limits
    day, hour = bucket_for(Period.DAY, at, UTC), bucket_for(Period.HOUR, at, UTC)
    if refused(customer):
        return {counter_key(PER_CUSTOMER, bound, limit, day.id)}
    return {counter_key(PER_CUSTOMER, bound, limit, day.id), history_key(PER_CUSTOMER.id, bound, hour.id)}


def counters_each(names: Iterable[str]) -> dict[str, int]:
    """How many counters each customer's call leaves (2, or 1 when refused)."""
    return {c: COUNTERS_PER_REFUSED if refused(c) else COUNTERS_PER_CUSTOMER for c in names}


def shared_keys(at: float) -> set[str]:
    """The feature-wide counters (month, day, history hour) that calls at `at` touch."""
    bound = {"feature": "chat"}
    return {
        *(counter_key(FEATURE, bound, limit, bucket_for(limit.period, at, UTC).id) for limit in FEATURE.limits),
        history_key(FEATURE.id, bound, bucket_for(Period.HOUR, at, UTC).id),
    }


def expiry(period: Period, at: float) -> float:
    """When the engine lets a counter of `period` made at `at` expire (history counters: `HOUR`)."""
    bucket = bucket_for(period, at, UTC)
    assert bucket.end is not None
    return bucket.end + (HISTORY_KEEP_S if period is Period.HOUR else EXPIRY_GRACE_S)


def ttl_ms(period: Period, at: float) -> int:
    """The Redis TTL the scripts give such a counter (lib.lua `ttl_ms`: relative to the call's time)."""
    return max(60_000, math.ceil((expiry(period, at) - at) * 1000))


def rss_kb() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# ----------------------------------------------------------------------------------------- Redis
def _expected_pttl(name: str, value: bytes | None, at: float) -> int | None:
    """The TTL (ms) a key of the namespace gets when written at `at`; None: the key has no TTL by design.

    | key | TTL |
    |---|---|
    | `c:<counter>`, `i:<period>:<bucket>` (the bucket's counter index) | the period's expiry - `at` |
    | `r:<id>` settled (`1`) | a day |
    | `r:<id>` open (its counters' JSON) | max(2 days, its longest-lived counter's TTL) |
    | `exp`, `audit`, `audit:seq` | none: one each per namespace, bounded by `purge` and `maxlen` |
    """
    kind, _, rest = name.partition(":")
    if kind == "c":
        if rest.startswith("history|"):
            return ttl_ms(Period.HOUR, at)
        return ttl_ms(Period.DAY if "|usd|day|" in rest else Period.MONTH, at)
    if kind == "i":
        period = rest.partition(":")[0]
        return ttl_ms({"hour": Period.HOUR, "day": Period.DAY, "month": Period.MONTH}[period], at)
    if kind == "r":
        if value == b"1":
            return SETTLED_KEEP_MS
        return max(OPEN_KEEP_MIN_MS, ttl_ms(Period.MONTH, at), ttl_ms(Period.HOUR, at), ttl_ms(Period.DAY, at))
    assert name in ("exp", "audit", "audit:seq"), f"unexpected key {name!r}"
    return None


def _namespace(store: RedisStore) -> dict[str, tuple[int, bytes | None]]:
    """Every key of the store's namespace (without the prefix): its PTTL and, for `r:` keys, its value."""
    client = store._client()
    names = [name.decode() for name in client.scan_iter(match=store.prefix + "*", count=1000)]
    records = [name for name in names if name.startswith(store.prefix + "r:")]
    pttls: list[int] = []
    values: list[bytes | None] = []
    for batch, command, out in ((names, "PTTL", pttls), (records, "GET", values)):
        for start in range(0, len(batch), 1000):
            pipe = client.pipeline(transaction=False)
            for name in batch[start : start + 1000]:
                pipe.execute_command(command, name)
            out.extend(pipe.execute())
    value_of = dict(zip(records, values, strict=True))
    return {name[len(store.prefix) :]: (pttl, value_of.get(name)) for name, pttl in zip(names, pttls, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
def test_redis_keys_per_customer_are_constant_and_every_one_expires(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    """N customers in a day on Redis: 2 keys each, every key but 3 namespace-wide ones has a TTL.

    Asserts, by SCAN of the namespace: exactly `COUNTERS_PER_CUSTOMER` keys name each customer (1 for
    a refused one), and they are the engine's day and history counters for it; the namespace holds exactly those, the
    3 shared counters, 3 bucket indexes (`i:month:`, `i:day:`, `i:hour:`), one `r:` record per
    allowed or open call and `exp`, `audit`, `audit:seq`. Each key's PTTL is the one
    `_expected_pttl` derives from the engine's expiry rules (at most that, and no less than that
    minus the test's wall time): per-customer day counters live until their day ends plus
    `EXPIRY_GRACE_S`, history counters until their hour ends plus `HISTORY_KEEP_S`, settled
    reservations a day, open ones as long as their longest counter. The 3 keys without a TTL are
    bounded otherwise: `exp` has one member per counter and `purge` empties it, the audit stream
    is capped at `maxlen`, `audit:seq` is one integer. After `purge` at a time past every expiry,
    no counter, index or `exp` entry is left, and no key names a customer.
    """
    real = request.node.callspec.params["store_url"] == "redis"
    n = REDIS_CUSTOMERS if real else min(REDIS_CUSTOMERS, 300)  # fakeredis: for runs without a Redis
    maxlen = 1_000
    at = epoch(START)
    # leases=False: the key census below counts one reservation per call (slices add one per slice:
    # test_slices_leave_one_settled_reservation_each, below).
    guard = make_guard(
        FEATURE, PER_CUSTOMER, store=store_url, clock=FakeClock(START), store_options={"maxlen": maxlen}, leases=False
    )
    store = guard.store
    assert isinstance(store, RedisStore)
    began = time.monotonic()
    names = customers("cust", n)
    allowed, blocked = drive(guard, names)
    assert blocked == n // BLOCKED_EVERY == sum(map(refused, names))
    held = [guard.reserve("chat", estimate_usd=0.001, customer=c) for c in customers("open", 5)]  # left open
    guard.flush()
    keys = _namespace(store)
    elapsed_ms = (time.monotonic() - began) * 1000

    everyone = [*names, *customers("open", 5)]
    per_customer = Counter(m.group(1) for name in keys for m in [CUSTOMER_IN_KEY.search(name)] if m)
    assert set(per_customer) == set(everyone)
    assert per_customer == counters_each(everyone)
    for customer in (everyone[0], everyone[BLOCKED_EVERY - 1], everyone[n // 2], everyone[-1]):
        assert {name for name in keys if customer in name} == {"c:" + k for k in customer_keys(customer, at)}
    reservations = [name for name in keys if name.startswith("r:")]
    assert len(reservations) == allowed + len(held)
    assert sum(1 for name in reservations if keys[name][1] != b"1") == len(held)
    counters = {name for name in keys if name.startswith("c:")}
    assert counters - {"c:" + k for k in shared_keys(at)} == {"c:" + k for c in everyone for k in customer_keys(c, at)}
    assert len(keys) == SHARED_COUNTERS + sum(counters_each(everyone).values()) + 3 + len(reservations) + 3

    no_ttl = []
    for name, (pttl, value) in keys.items():
        expected = _expected_pttl(name, value, at)
        if expected is None:
            no_ttl.append(name)
            assert pttl == -1, name
        else:
            assert expected - elapsed_ms - 1_000 <= pttl <= expected, (name, pttl, expected)
    assert sorted(no_ttl) == ["audit", "audit:seq", "exp"]
    client = store._client()
    assert client.zcard(store.prefix + "exp") == len(counters)
    assert int(client.get(store.prefix + "audit:seq")) == 2 * allowed + blocked + len(held)  # reserve + commit
    assert client.xlen(store.prefix + "audit") <= maxlen + 100  # MAXLEN ~ trims whole nodes of 100 entries

    if real:  # MEMORY USAGE: real Redis only
        sample = [c for c in everyone[: min(100, n)] if not refused(c)]
        counter_bytes = sum(client.memory_usage(store.prefix + "c:" + k) for c in sample for k in customer_keys(c, at))
        settled = [name for name in reservations if keys[name][1] == b"1"][:100]
        record_bytes = sum(client.memory_usage(store.prefix + name) for name in settled) / len(settled)
        indexes = [name for name in keys if name.startswith("i:") or name == "exp"]
        index_bytes = sum(client.memory_usage(store.prefix + name, samples=0) for name in indexes)
        log.info(
            "redis: %d customers, %d keys per allowed customer, %.0f bytes of counters and %.0f of index entries per "
            "customer, %.0f bytes per settled reservation record, %.1f s",
            n,
            COUNTERS_PER_CUSTOMER,
            counter_bytes / len(sample),
            index_bytes / len(everyone),
            record_bytes,
            elapsed_ms / 1000,
        )

    for reservation in held:
        reservation.release()
    removed = store.purge(at + 30 * 86400)  # past every counter's expiry, the month's included
    assert removed == len(counters)
    left = _namespace(store)
    assert not [name for name in left if CUSTOMER_IN_KEY.search(name)]
    assert {name for name in left if not name.startswith("r:")} == {"audit", "audit:seq"}  # no c:, i:, exp
    assert all(0 < pttl <= SETTLED_KEEP_MS and value == b"1" for pttl, value in left.values() if value is not None)
    guard.close()


# ---------------------------------------------------------------------------------------- memory
def _check_memory_store(store: MemoryStore, everyone: list[str], at: float, allowed: int) -> None:
    """The store holds exactly the counters and reservations of one day's customers (plain asserts
    with messages: this runs in a spawned interpreter, without pytest's assertion rewriting)."""
    per_customer = Counter(dict(c.op.scope).get("customer") for c in store._counters.values())
    shared = per_customer.pop(None, 0)
    assert shared == SHARED_COUNTERS, f"{shared} shared counters"
    assert set(per_customer) == set(everyone), f"{len(per_customer)} customers have counters, not {len(everyone)}"
    wrong = {c: k for c, k in counters_each(everyone).items() if per_customer[c] != k}
    assert not wrong, f"counters per customer: {sorted(wrong.items())[:5]}"
    expected = shared_keys(at) | {k for c in everyone for k in customer_keys(c, at)}
    assert set(store._counters) == expected, f"unexpected counters: {sorted(set(store._counters) ^ expected)[:5]}"
    for key, counter in store._counters.items():
        period = Period.HOUR if key.startswith("history|") else counter.op.period
        assert counter.op.expires_at == expiry(period, at), f"{key} expires at {counter.op.expires_at}"
    assert len(store._reservations) == allowed, f"{len(store._reservations)} reservations, not {allowed}"
    assert all(r.settled for r in store._reservations.values()), "an open reservation"
    assert len(store._audit) == 1_000, f"{len(store._audit)} audit records"


def memory_days(n: int) -> dict[str, float]:
    """Two days of `n` new customers each on one guard and memory store; returns RSS (kB) and timings.

    Runs in a fresh interpreter, so that memory freed by earlier tests can't hide day 1's growth.
    """
    clock = FakeClock(START)
    store = MemoryStore(max_audit=1_000)
    guard = make_guard(FEATURE, PER_CUSTOMER, store=store, clock=clock)
    drive(guard, ["aaaa0000000"])  # the guard's first call reads its control state, plans, starts threads
    guard.flush()
    bound = guard.calls.plans.maxsize
    for customer in customers("warm", bound):
        # Fill the guard's plan cache (an LRU of planned counters per label set) to its bound first:
        # the RSS measured below is then the store's, not the cache's (read-only calls: no counters).
        guard.check("chat", estimate_usd=0.002, customer=customer)
    assert len(guard.calls.plans._entries) == bound, "the plan cache did not fill"
    day_1, day_2 = epoch(START), epoch(DAY_2)

    rss_0 = rss_kb()
    began = time.monotonic()
    allowed_1, blocked_1 = drive(guard, customers("aaaa", n + 1)[1:])
    seconds_1 = time.monotonic() - began
    guard.flush()
    rss_1 = rss_kb()
    assert blocked_1 == sum(map(refused, customers("aaaa", n + 1))), f"{blocked_1} calls blocked"
    _check_memory_store(store, customers("aaaa", n + 1), day_1, allowed_1 + 1)

    clock.set(DAY_2)
    drive(guard, ["bbbb0000000"])  # the first call of day 2 sets off the guard's purge
    guard.flush()
    left = {k for k in shared_keys(day_1) if "|month|" in k} | shared_keys(day_2) | customer_keys("bbbb0000000", day_2)
    assert set(store._counters) == left, f"after the purge: {sorted(store._counters)[:8]}"
    assert len(store._reservations) == 1, f"{len(store._reservations)} reservations after the purge"
    rss_purged = rss_kb()

    began = time.monotonic()
    allowed_2, _ = drive(guard, customers("bbbb", n + 1)[1:])
    seconds_2 = time.monotonic() - began
    guard.flush()
    rss_2 = rss_kb()
    _check_memory_store(store, customers("bbbb", n + 1), day_2, allowed_2 + 1)
    assert len(guard.calls.plans._entries) == bound, "the plan cache outgrew its bound"
    guard.close()
    return {
        "rss_0": rss_0,
        "rss_1": rss_1,
        "rss_purged": rss_purged,
        "rss_2": rss_2,
        "seconds_1": seconds_1,
        "seconds_2": seconds_2,
    }


@pytest.mark.slow
def test_memory_store_is_bounded_by_expiry_not_by_customers_ever_seen() -> None:
    """Day 1: N customers; nine days later the guard's own purge drops them; day 2: N new ones reuse the memory.

    In a spawned interpreter (`memory_days`), asserts the store's dicts exactly: after each day, 2
    counters per customer (1 if refused; the engine's day and history counters, each expiring when the engine
    says) plus the 3 shared ones, one settled reservation per allowed call, the audit log at its
    `max_audit`; after the purge the guard runs itself (`_maintain`, on the first call 10 minutes or
    more after the last purge), only day 1's month counter besides the first day-2 call's counters
    and reservation. RSS: day 1 grows by at least 500 bytes per customer (else the measurement
    shows nothing), and day 2 — as many customers, none seen before — by less than half of what day
    1 did: memory is bounded by what has not expired, not by every customer ever seen. The audit
    log is bounded on its own (`max_audit`), small here, and the guard's plan cache is filled to
    its bound (4 096 label sets) before measuring, so that the RSS is the counters' and
    reservations'; it must still be at its bound after day 2.
    """
    n = MEMORY_CUSTOMERS
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        figures = pool.submit(memory_days, n).result(timeout=3600)
    grew_1 = figures["rss_1"] - figures["rss_0"]
    grew_2 = figures["rss_2"] - figures["rss_1"]
    log.info(
        "memory: %d customers a day; day 1 +%d kB RSS (%.0f bytes per customer, %.1f s); after the purge "
        "%+d kB; day 2 +%d kB (%.1f s)",
        n,
        grew_1,
        grew_1 * 1024 / n,
        figures["seconds_1"],
        figures["rss_purged"] - figures["rss_1"],
        grew_2,
        figures["seconds_2"],
    )
    assert grew_1 * 1024 >= 500 * n, figures
    assert grew_2 < grew_1 / 2, figures


# ------------------------------------------------------------------------------- SQLite, PostgreSQL
def _rows(store: SQLStore, table: str) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(store.t[table])))


@pytest.mark.parametrize("store_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_sql_rows_per_customer_are_constant_and_purged(store_url: str) -> None:
    """SQL stores: 2 counter rows per customer (1 if refused), each with its expiry; the purge drops them.

    After the day: counter rows are the 3 shared plus 2 per customer (the engine's keys), every row
    has `expires_at` = its period's end + grace (history: hour end + `HISTORY_KEEP_S`), and there is
    one settled reservation row per allowed call. Nine days later the first call's purge leaves the
    month counter and that call's own rows only.
    """
    clock = FakeClock(START)
    guard = make_guard(FEATURE, PER_CUSTOMER, store=store_url, clock=clock, leases=False)  # one reservation per call
    store = guard.store
    assert isinstance(store, SQLStore)
    at = epoch(START)
    names = customers("cust", SQL_CUSTOMERS)
    allowed, blocked = drive(guard, names)
    assert blocked == SQL_CUSTOMERS // BLOCKED_EVERY
    counters = {row.key: row for row in _rows(store, "counters")}
    assert set(counters) == shared_keys(at) | {k for c in names for k in customer_keys(c, at)}
    assert len(counters) == SHARED_COUNTERS + sum(counters_each(names).values())
    for key, row in counters.items():
        period = Period.HOUR if key.startswith("history|") else Period(row.period)
        assert row.expires_at == pytest.approx(expiry(period, at)), key
    reservations = _rows(store, "reservations")
    assert len(reservations) == allowed
    assert all(row.settled for row in reservations)

    clock.set(DAY_2)
    drive(guard, ["next0000000"])
    guard.flush()
    day_2 = epoch(DAY_2)
    assert {row.key for row in _rows(store, "counters")} == (
        {k for k in shared_keys(at) if "|month|" in k} | shared_keys(day_2) | customer_keys("next0000000", day_2)
    )
    assert len(_rows(store, "reservations")) == 1
    guard.close()


# ----------------------------------------------------------------------------- abandoned reservations
@pytest.mark.parametrize("store_url", ["memory", "sqlite", "postgres"], indirect=True)
def test_an_abandoned_reservation_is_purged_once_its_counters_have_expired(store_url: str) -> None:
    """A reservation never settled (its process died) goes once every counter it touched has expired.

    Redis does this by TTL (an open `r:` key lives max(2 days, its longest counter's TTL), asserted
    above); the memory and SQL stores' `purge` drops it on the same terms.
    """
    clock = FakeClock(START)
    guard = make_guard(FEATURE, PER_CUSTOMER, store=store_url, clock=clock)
    abandoned = guard.reserve("chat", estimate_usd=0.001, customer="gone0000000").id  # never settled
    clock.set("2026-07-01T10:00:00Z")  # past every counter it touched (the month's: June 3)
    drive(guard, ["next0000000"])  # sets off the guard's purge
    guard.flush()
    store = guard.store
    if isinstance(store, MemoryStore):
        left = set(store._reservations)
    else:
        assert isinstance(store, SQLStore)
        left = {row.id for row in _rows(store, "reservations")}
    guard.close()
    assert abandoned not in left


@pytest.mark.parametrize(
    "store_url",
    ["fakeredis", pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_slices_leave_one_settled_reservation_each(store_url: str) -> None:
    """With leases, N customers' calls leave one reservation per call with a cold counter plus one per
    slice of the shared feature counters — a number set by time and traffic, not by customers — and
    after `flush` every one of them is settled."""
    guard = make_guard(FEATURE, store=store_url, clock=FakeClock(START))
    leases = guard.calls.leases
    assert leases is not None
    granted: list[str] = []
    reserve = guard.store.reserve

    def counting(plan: Any, record: Any) -> Any:
        if plan.reservation_id.startswith("lease-"):
            granted.append(plan.reservation_id)
        return reserve(plan, record)

    guard.store.reserve = counting  # type: ignore[method-assign]
    names = customers("lease", 2_000)
    for customer in names:
        with guard.reserve("chat", estimate_usd=0.002, customer=customer) as r:
            r.commit(0.001)
    assert guard.flush()
    store = guard.store
    if isinstance(store, SQLStore):
        rows = _rows(store, "reservations")
        ids = {row.id for row in rows if row.id.startswith("lease-")}
        assert all(row.settled for row in rows)
    else:
        assert isinstance(store, RedisStore)
        ids = {name[2:] for name in _namespace(store) if name.startswith("r:lease-")}
    assert 1 <= len(granted) <= 20  # 2 000 calls of one feature in one process: a handful of slices
    assert ids == set(granted)
    (row,) = [c for c in guard.status(feature="chat").ceilings if c.period == "day"]
    assert (row.spent, row.reserved) == (2.0, 0.0)
    guard.close()
