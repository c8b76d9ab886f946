"""`max_instances`: random ids can't mint counters without end.

A wildcard ceiling (`customer: '*'`) with `max_instances: N` admits N distinct instances a period;
past it a new instance shares one overflow instance (`overflow: share`, under the same limits) or
is refused (`overflow: refuse`, reason `max_instances`). Known instances are never affected, and
the count is exact under concurrency on every store.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from costguard import Blocked, BudgetExceeded, Ceiling, ConfigError, Guard, Limit, Period, Unit
from costguard.engine import INSTANCES_PREFIX
from costguard.model import OVERFLOW, make_match
from costguard.stores import MemoryStore
from costguard.stores.redis import RedisStore
from costguard.stores.sql import SQLStore
from costguard.testing import FakeClock, RecordingNotifier
from helpers import make_guard


def capped(max_instances: int, overflow: str = "share", usd: float = 1.0) -> Ceiling:
    return Ceiling(
        make_match({"feature": "chat", "customer": "*"}),
        (Limit(Period.DAY, Unit.USD, round(usd * 1_000_000)),),
        max_instances=max_instances,
        overflow=overflow,  # type: ignore[arg-type]
    )


def spend(guard: Guard, customer: str, usd: float) -> None:
    with guard.reserve("chat", estimate_usd=usd, customer=customer) as r:
        r.commit(usd)


def counter_keys(guard: Guard) -> set[str]:
    """The keys of the store's counters of the capped ceiling (history and registry counters left out)."""
    store = guard.store
    if isinstance(store, MemoryStore):
        keys = set(store._counters)
    elif isinstance(store, SQLStore):
        with store.engine.connect() as conn:
            keys = {row.key for row in conn.execute(store.t["counters"].select())}
    else:
        assert isinstance(store, RedisStore)
        client = store._client()
        keys = {k.decode()[len(store.prefix) + 2 :] for k in client.scan_iter(match=store.prefix + "c:*")}
    return {k for k in keys if k.startswith("customer=*")}


def customers_in(keys: set[str]) -> set[str]:
    return {key.split("|")[1].partition("customer=")[2].partition(",")[0] for key in keys}


def test_new_instances_past_the_cap_share_one_overflow_instance(store_url: str) -> None:
    guard = make_guard(capped(3), store=store_url)
    for name in ("a", "b", "c"):
        spend(guard, name, 0.1)
    spend(guard, "d", 0.6)  # a fourth customer: into the overflow instance
    spend(guard, "e", 0.3)  # shares it: $0.90 of $1.00
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve("chat", estimate_usd=0.2, customer="f")
    assert refused.value.scope == {"feature": "chat", "customer": OVERFLOW}
    assert refused.value.decision.reason == "budget_exceeded"
    assert refused.value.spent_usd == pytest.approx(0.9)
    spend(guard, "a", 0.5)  # a known customer keeps its own instance and budget
    spend(guard, "f", 0.1)
    assert customers_in(counter_keys(guard)) == {"a", "b", "c", "%28overflow%29"}
    status = guard.status(feature="chat", customer="a")
    assert [(c.labels.get("customer"), c.spent) for c in status.ceilings] == [("a", pytest.approx(0.6))]
    guard.close()


def test_past_the_cap_new_instances_are_refused_until_the_next_period(store_url: str) -> None:
    clock = FakeClock("2026-05-12T10:00:00Z")
    notifier = RecordingNotifier()
    guard = make_guard(capped(2, "refuse"), store=store_url, clock=clock, notifier=notifier)
    spend(guard, "a", 0.1)
    spend(guard, "b", 0.1)
    for _ in range(3):
        with pytest.raises(BudgetExceeded) as refused:
            guard.reserve("chat", estimate_usd=0.1, customer="c")
        decision = refused.value.decision
        assert decision.reason == "max_instances"
        assert decision.scope == {"feature": "chat", "customer": "c"}
        assert (decision.spent, decision.limit, decision.unit, decision.period) == (2.0, 2.0, "calls", "day")
        assert "max_instances 2" in str(refused.value)
        assert refused.value.retry_after_s == pytest.approx(14 * 3600)
    spend(guard, "a", 0.1)  # known: still served
    assert customers_in(counter_keys(guard)) == {"a", "b"}  # a refusal mints nothing
    clock.set("2026-05-13T10:00:00Z")
    spend(guard, "c", 0.1)  # a new day, a new count
    assert guard.flush(10)
    assert not [e for e in notifier.events if e.kind == "kill"]  # refusing an id is not a budget kill
    guard.close()


def test_the_decorator_serves_the_fallback_for_a_refused_instance() -> None:
    guard = make_guard(capped(1, "refuse"))

    @guard.with_kill_switch("chat", estimate=0.1, fallback="busy", labels=lambda q, customer: {"customer": customer})
    def answer(question: str, customer: str) -> str:
        return f"answer to {question}"

    assert answer("q", customer="a") == "answer to q"
    assert answer("q", customer="b") == "busy"
    guard.close()


@pytest.mark.parametrize("overflow", ["share", "refuse"])
def test_the_instance_count_is_exact_under_concurrency(shared_store_url: str, overflow: str) -> None:
    """32 threads (more than cores) each bring 8 new ids at once: exactly `max_instances` get their own."""
    guard = make_guard(capped(5, overflow, usd=1000.0), store=shared_store_url)
    allowed: list[str] = []
    refused: list[str] = []
    reasons: set[str] = set()
    lock = threading.Lock()
    start = threading.Barrier(32)

    def run(worker: int) -> None:
        start.wait()
        for index in range(8):
            name = f"w{worker:02d}-{index}"
            for _ in range(20):
                try:
                    spend(guard, name, 0.01)
                except BudgetExceeded as exc:
                    with lock:
                        refused.append(name)
                        reasons.add(exc.decision.reason)
                except Blocked as exc:  # an overloaded store (a slow machine): asked again, as after a 503
                    if exc.decision.reason != "store_busy":
                        raise
                    continue
                else:
                    with lock:
                        allowed.append(name)
                break

    threads = [threading.Thread(target=run, args=(w,)) for w in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    own = customers_in(counter_keys(guard)) - {"%28overflow%29"}
    assert len(own) == 5
    if overflow == "share":
        assert (len(allowed), refused) == (256, [])
        total = guard.status(feature="chat", customer=OVERFLOW).ceilings[0].spent
        assert total == pytest.approx(0.01 * (256 - 5))
    else:
        assert sorted(allowed) == sorted(own) and len(refused) == 256 - 5
        assert reasons == {"max_instances"}
    guard.close()


@pytest.mark.parametrize("store_url", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
def test_random_ids_cost_a_bounded_number_of_keys(store_url: str) -> None:
    """500 random 256-character ids: the keys naming a customer stay at (10 + overflow) * 2."""
    guard = make_guard(capped(10), store=store_url)
    for _ in range(500):
        spend(guard, secrets.token_hex(128), 0.001)  # 490 of them share one $1.00: none refused
    store = guard.store
    assert isinstance(store, RedisStore)
    names = [k.decode() for k in store._client().scan_iter(match=store.prefix + "c:*")]
    assert len([n for n in names if "customer=" in n and INSTANCES_PREFIX not in n]) == (10 + 1) * 2
    guard.close()


# ----------------------------------------------------------------------------------------- config
@pytest.fixture
def load(tmp_path: Path) -> Iterator[object]:
    made: list[Guard] = []

    def build(text: str) -> Guard:
        path = tmp_path / "costguard.yaml"
        path.write_text("store: memory://\n" + text)
        guard = Guard.from_yaml(path)
        made.append(guard)
        return guard

    yield build
    for guard in made:
        guard.close()


def test_config_sets_max_instances_on_wildcard_ceilings_only(load) -> None:  # type: ignore[no-untyped-def]
    guard = load(
        "features:\n  chat:\n    per_customer: {daily_usd: 1, max_instances: 2, overflow: refuse}\n"
        "ceilings:\n  - match: {team: '*'}\n    daily_usd: 5\n    max_instances: 100\n"
    )
    by_match = {c.id: c for c in guard.ceilings}
    assert (by_match["customer=*,feature=chat"].max_instances, by_match["customer=*,feature=chat"].overflow) == (
        2,
        "refuse",
    )
    assert (by_match["team=*"].max_instances, by_match["team=*"].overflow) == (100, "share")
    with pytest.raises(ConfigError, match=r"features\.chat\.max_instances: max_instances caps the distinct values"):
        load("features:\n  chat: {daily_usd: 1, max_instances: 2}\n")
    with pytest.raises(ConfigError, match=r"max_instances"):
        load("features:\n  chat:\n    per_customer: {daily_usd: 1, max_instances: 0}\n")
    with pytest.raises(ConfigError, match=r"overflow"):
        load("features:\n  chat:\n    per_customer: {daily_usd: 1, max_instances: 2, overflow: drop}\n")


def test_a_ceiling_checks_max_instances_when_built() -> None:
    match = make_match({"feature": "chat"})
    with pytest.raises(ValueError, match=r"wildcard \('\*'\) label; this ceiling has none \(feature=chat\)"):
        Ceiling(match, (), max_instances=3)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_instances must be a whole number of at least 1"):
            capped(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overflow must be 'share' or 'refuse'"):
        capped(3, "drop")
