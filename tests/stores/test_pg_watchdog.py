"""A connection the watchdog cut at the deadline is dropped alone: the server answered nothing on it in
time, which says nothing about the pool's other connections. Reconnecting them all (what a real
disconnect does) would hit an overloaded server with a burst of new sessions, each a forked backend —
the feedback loop that turned a slow burst into timeouts."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import drop_tables, store_url_for
from costguard import engine
from costguard.errors import StoreTimeout
from costguard.model import Ceiling, Limit, Period, Unit, make_match
from costguard.stores import open_store
from costguard.stores.sql import SQLStore

pytestmark = pytest.mark.postgres

UTC = __import__("zoneinfo").ZoneInfo("UTC")
CAP = Ceiling(make_match({"feature": "f"}), (Limit(Period.MONTH, Unit.USD, 1_000_000),))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    url = store_url_for("postgres", tmp_path)
    opened = open_store(url, timeout_ms=400)
    assert isinstance(opened, SQLStore)
    yield opened
    opened.close()
    drop_tables(url)


def plan() -> engine.ReservePlan:
    return engine.plan_reservation(
        reservation_id=uuid.uuid4().hex,
        ceilings=[CAP],
        overrides={},
        labels={"feature": "f"},
        amounts={Unit.USD: 10_000, Unit.CALLS: 1, Unit.TOKENS: 0},
        now=1_780_000_000.0,
        tz=UTC,
        thresholds=(0.8, 1.0),
    )


def backend_pid(connection: object) -> int:
    return int(connection.driver_connection.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[attr-defined]


def test_a_connection_cut_by_the_watchdog_leaves_the_others_in_the_pool(store: SQLStore) -> None:
    assert store.reserve(plan(), None).allowed  # schema installed, functions prepared
    pool = store.engine.pool
    first, second = store.engine.raw_connection(), store.engine.raw_connection()
    first_pid, second_pid = backend_pid(first), backend_pid(second)
    first.close()  # the pool hands connections out first in, first out: `first` goes next
    second.close()
    invalidated_before = pool._invalidate_time  # type: ignore[attr-defined]
    os.kill(first_pid, signal.SIGSTOP)  # this one backend stops answering; the server goes on
    try:
        with pytest.raises(StoreTimeout):
            store.reserve(plan(), None)
    finally:
        os.kill(first_pid, signal.SIGCONT)
    assert pool._invalidate_time == invalidated_before  # type: ignore[attr-defined]
    assert store.reserve(plan(), None).allowed
    pooled = [store.engine.raw_connection(), store.engine.raw_connection()]
    try:
        pids = {backend_pid(connection) for connection in pooled}
    finally:
        for connection in pooled:
            connection.close()
    assert second_pid in pids and first_pid not in pids  # the other session kept; the cut one replaced
    with store.engine.connect() as conn:  # the cut session is gone from the server
        alive = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": first_pid})
        assert alive.scalar_one() in (0, 1)  # its backend exits once it reads the closed socket
