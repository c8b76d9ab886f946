"""A reserve whose reply was lost reaches PostgreSQL late — a frozen server runs it when it resumes,
after the client gave up — while the guard's release of that reservation id is already on its way.
Whichever the server runs first, the reservation ends released: nothing stays reserved."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sql_schema import NOW, plan

from conftest import drop_tables, store_url_for
from costguard.engine import CommitOutcome
from costguard.stores import open_store
from costguard.stores.sql import SQLStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    url = store_url_for("postgres", tmp_path)
    opened = open_store(url)
    assert isinstance(opened, SQLStore)
    yield opened
    opened.close()
    drop_tables(url)


def _release_waits(conn: sa.Connection) -> bool:
    """Whether the release's statement is waiting on a lock (the reserve's uncommitted row)."""
    rows = conn.exec_driver_sql(
        "SELECT wait_event_type FROM pg_stat_activity WHERE query LIKE '%%settle($1%%' AND pid <> pg_backend_pid()"
    ).all()
    conn.rollback()  # the activity view is a snapshot per transaction: the next look takes a new one
    return any(row[0] == "Lock" for row in rows)


def test_a_release_meeting_its_reserve_in_flight_releases_it(store: SQLStore) -> None:
    """The release finds no reservation (the late reserve hasn't committed), waits on its row to leave a
    marker, and must then release what that reserve stored instead of leaving it reserved for good."""
    late = plan(NOW)
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
        releasing = threading.Thread(
            target=lambda: released.append(store.settle(late.reservation_id, None, NOW + 1, None))
        )
        releasing.start()
        with store.engine.connect() as watcher:
            deadline = time.monotonic() + 10
            while not _release_waits(watcher):
                assert time.monotonic() < deadline, "the release never met the reserve in flight"
                time.sleep(0.01)
        trans.commit()  # the late reserve lands while the release waits on its row
        releasing.join(10)
    assert not releasing.is_alive()
    assert released and released[0].applied
    (row,) = store.list_counters({late.counters[0].period: late.counters[0].bucket})
    assert (row.committed, row.reserved) == (0, 0)
