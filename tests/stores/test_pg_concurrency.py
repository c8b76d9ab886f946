"""PostgreSQL's server functions under concurrency. A process's concurrent reserves and settles on the
same counters go to the server as one statement (stores/_combine.py), each applied in order exactly as
alone, and a batch that wrote anything but quiet refusals is flushed to the WAL before it answers. A
reserve whose reply was lost reaches the server late — a frozen server runs it when it resumes, after
the client gave up — while the guard's release of that id is on its way: whichever runs first, the
reservation ends released."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from conftest import drop_tables, store_url_for
from costguard import engine
from costguard.engine import CommitOutcome, ReservePlan
from costguard.model import Ceiling, Limit, Period, Unit, make_match
from costguard.stores import open_store
from costguard.stores.sql import SQLStore

pytestmark = pytest.mark.postgres

NOW = 1_780_000_000.0
HOT = Ceiling(make_match({"feature": "hot"}), (Limit(Period.DAY, Unit.USD, 100_000),))  # room for 10


def plan() -> ReservePlan:
    return engine.plan_reservation(
        reservation_id=uuid.uuid4().hex,
        ceilings=[HOT],
        overrides={},
        labels={"feature": "hot"},
        amounts={Unit.USD: 10_000},
        now=NOW,
        tz=ZoneInfo("UTC"),
        thresholds=(0.8, 1.0),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    # A generous store timeout: these tests hold calls back on purpose, and a loaded machine must not
    # turn that into a statement timeout.
    url = store_url_for("postgres", tmp_path) + "&timeout_ms=10000"
    opened = open_store(url)
    assert isinstance(opened, SQLStore)
    yield opened
    opened.close()
    drop_tables(url)


def _wait_queued(combiner: Any, count: int) -> None:
    """Until `count` callers wait in the combiner's lanes (behind the batch in flight)."""
    deadline = time.monotonic() + 10
    while sum(len(lane.waiting) for lane in combiner._lanes.values()) < count:
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.001)


def test_32_threads_on_one_counter_go_in_two_statements_and_exactly_10_fit(store: SQLStore) -> None:
    sent: list[tuple[str, int]] = []
    first = threading.Event()
    go = threading.Event()
    real_call = store._sessions.call

    def counted(function: str, doc: str) -> Any:
        sent.append((function, len(json.loads(doc)) if function.endswith("_many") else 1))
        if len(sent) == 1:
            first.set()
            go.wait(10)  # the first reserve is in flight while the other 31 arrive
        return real_call(function, doc)

    store._sessions.call = counted  # type: ignore[method-assign]
    plans = [plan() for _ in range(32)]
    allowed: list[bool] = [False] * 32

    def reserve(i: int) -> None:
        allowed[i] = store.reserve(plans[i], None).allowed

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(32)]
    threads[0].start()
    assert first.wait(10)
    for thread in threads[1:]:
        thread.start()
    _wait_queued(store._server._reserves, 31)
    go.set()
    for thread in threads:
        thread.join(10)
    assert sent == [("reserve", 1), ("reserve_many", 31)]
    assert allowed[0] and sum(allowed) == 10  # in order: the batch's first nine fit, the rest don't

    sent.clear()
    first.clear()
    go.clear()
    admitted = [p for p, ok in zip(plans, allowed, strict=True) if ok]
    settlers = [
        threading.Thread(target=store.settle, args=(p.reservation_id, {Unit.USD: 7_000}, NOW + 1, None))
        for p in admitted
    ]
    settlers[0].start()
    assert first.wait(10)
    for thread in settlers[1:]:
        thread.start()
    _wait_queued(store._server._settles, 9)
    go.set()
    for thread in settlers:
        thread.join(10)
    assert sent == [("settle", 1), ("settle_many", 9)]  # the same counters: one lane
    (row,) = store.list_counters({Period.DAY: plans[0].counters[0].bucket})
    assert (row.committed, row.reserved) == (70_000, 0)


def test_a_batch_with_a_reservation_in_it_waits_for_the_wal(store: SQLStore) -> None:
    """A quiet refusal alone skips the WAL flush (it wrote only its audit line); in a batch with an
    admitted reserve the transaction is flushed as any reserve is."""
    full = [plan() for _ in range(10)]
    for p in full:
        assert store.reserve(p, None).allowed
    docs: dict[str, str] = {}
    real_call = store._sessions.call

    def keep(function: str, doc: str) -> Any:
        docs[function] = doc
        return real_call(function, doc)

    store._sessions.call = keep  # type: ignore[method-assign]
    refused = plan()
    assert not store.reserve(refused, None).allowed
    refusal = docs["reserve"]

    def setting_after(batch: list[str]) -> str:
        with store.engine.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"SELECT {store.prefix}reserve_many(%s::jsonb)", ("[" + ",".join(batch) + "]",))
            return str(conn.exec_driver_sql("SELECT current_setting('synchronous_commit')").scalar())

    def fresh(doc: str) -> str:
        return json.dumps({**json.loads(doc), "id": uuid.uuid4().hex})

    assert setting_after([fresh(refusal), fresh(refusal)]) == "off"  # full: two quiet refusals
    assert store.settle(full[0].reservation_id, None, NOW + 1, None).applied  # room for one again
    assert setting_after([fresh(refusal), fresh(refusal)]) == "on"  # the first is admitted


def _release_waits(conn: sa.Connection, statement: str = "%%settle($1%%") -> bool:
    """Whether the release's statement is waiting on a lock (the reserve's uncommitted row)."""
    rows = conn.exec_driver_sql(
        f"SELECT wait_event_type FROM pg_stat_activity WHERE query LIKE '{statement}' AND pid <> pg_backend_pid()"
    ).all()
    conn.rollback()  # the activity view is a snapshot per transaction: the next look takes a new one
    return any(row[0] == "Lock" for row in rows)


@pytest.mark.parametrize("path", ["settle", "settle_many"])
def test_a_release_meeting_its_reserve_in_flight_releases_it(store: SQLStore, path: str) -> None:
    """The release finds no reservation (the late reserve hasn't committed), waits on its row to leave a
    marker, and must then release what that reserve stored instead of leaving it reserved for good."""
    late = plan()
    sent: list[str] = []

    class Lost(Exception):
        pass

    def lose(function: str, doc: str) -> dict[str, Any]:
        sent.append(doc)  # the request as it went out; its reply never comes back
        raise Lost

    store._sessions.ensure_schema()
    real_call = store._sessions.call
    store._sessions.call = lose  # type: ignore[method-assign]
    with pytest.raises(Lost):
        store.reserve(late, None)
    store._sessions.call = real_call  # type: ignore[method-assign]
    (doc,) = sent

    with store.engine.connect() as server_side:
        trans = server_side.begin()
        server_side.execute(sa.text(f"SELECT {store.prefix}reserve(CAST(:doc AS jsonb))"), {"doc": doc})
        released: list[CommitOutcome] = []

        def release() -> None:
            if path == "settle":  # a release made on the call's path
                released.append(store.settle(late.reservation_id, None, NOW + 1, None))
            else:  # an abandoned reserve's release, written in a background batch (it leaked before)
                (outcome,) = store.settle_many([(late.reservation_id, None, NOW + 1, None)])
                assert isinstance(outcome, CommitOutcome)
                released.append(outcome)

        releasing = threading.Thread(target=release)
        releasing.start()
        waits_on = "%%settle($%%" if path == "settle" else "%%INSERT INTO%%reservations%%ON CONFLICT%%"
        with store.engine.connect() as watcher:
            deadline = time.monotonic() + 10
            while not _release_waits(watcher, waits_on):
                assert time.monotonic() < deadline, "the release never met the reserve in flight"
                time.sleep(0.01)
        trans.commit()  # the late reserve lands while the release waits on its row
        releasing.join(10)
    assert not releasing.is_alive()
    assert released and released[0].applied
    (row,) = store.list_counters({late.counters[0].period: late.counters[0].bucket})
    assert (row.committed, row.reserved) == (0, 0)
