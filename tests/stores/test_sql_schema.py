"""The SQL stores' schema on a database an earlier version created."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from conftest import STORE_KINDS, drop_tables, store_url_for
from costguard import engine
from costguard.engine import ReservePlan
from costguard.model import Ceiling, Limit, Period, Unit, make_match
from costguard.stores import open_store
from costguard.stores._sql_schema import schema_fingerprint
from costguard.stores.sql import SQLStore

NOW = 1_780_000_000.0
RUN = Ceiling(make_match({"run": "*"}), (Limit(Period.TOTAL, Unit.USD, 1_000_000),), ttl_s=3600)


@pytest.fixture(params=[STORE_KINDS[1], STORE_KINDS[2]])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = store_url_for(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_tables(url)


def plan(now: float) -> ReservePlan:
    return engine.plan_reservation(
        reservation_id=uuid.uuid4().hex,
        ceilings=[RUN],
        overrides={},
        labels={"feature": "f", "run": "r1"},
        amounts={Unit.USD: 10_000},
        now=now,
        tz=ZoneInfo("UTC"),
        thresholds=(0.8, 1.0),
    )


def test_a_database_of_an_earlier_version_gets_the_new_columns_on_first_use(sql_url: str) -> None:
    """`counters.first_at` (a ttl's start) came later: a database without it gets it when a new version
    first uses it, and a counter from before starts its ttl at its next admitted call."""
    if sql_url.startswith("sqlite") and sqlite3.sqlite_version_info < (3, 35, 0):
        pytest.skip("SQLite before 3.35 can't drop a column to make an old database")
    old = open_store(sql_url)
    assert isinstance(old, SQLStore)
    assert old.reserve(plan(NOW), None).allowed
    with old.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {old.prefix}counters DROP COLUMN first_at")
        if not sql_url.startswith("sqlite"):  # an earlier version's functions carry no fingerprint of this one
            conn.exec_driver_sql(f"COMMENT ON FUNCTION {old.prefix}reserve(jsonb) IS NULL")
    old.close()
    new = open_store(sql_url)
    try:
        assert new.reserve(plan(NOW + 3600), None).allowed  # no start kept before: it starts now
        assert new.reserve(plan(NOW + 7199), None).allowed
        assert new.reserve(plan(NOW + 7200), None).expired
    finally:
        new.close()


def test_counters_of_an_earlier_version_read_as_nothing_leased(sql_url: str) -> None:
    """`counters.leased` and `holders` came later: a counter written before them reads 0 leased by 0
    slices, and a slice reserved and settled on it afterwards counts and leaves exactly."""
    if sql_url.startswith("sqlite") and sqlite3.sqlite_version_info < (3, 35, 0):
        pytest.skip("SQLite before 3.35 can't drop a column to make an old database")
    old = open_store(sql_url)
    assert isinstance(old, SQLStore)
    before = plan(NOW)
    assert old.reserve(before, None).allowed
    with old.engine.begin() as conn:
        for column in ("leased", "holders"):
            conn.exec_driver_sql(f"ALTER TABLE {old.prefix}counters DROP COLUMN {column}")
        if not sql_url.startswith("sqlite"):
            conn.exec_driver_sql(f"COMMENT ON FUNCTION {old.prefix}reserve(jsonb) IS NULL")
    old.close()
    new = open_store(sql_url)
    buckets = {Period.TOTAL: "total"}  # the run's counter (its hourly history counter rides along)
    try:
        (row,) = new.list_counters(buckets)
        assert (row.reserved, row.leased, row.holders) == (10_000, 0, 0)
        ordinary = plan(NOW + 1)
        slice_ = replace(ordinary, reservation_id=engine.leases.LEASE_PREFIX + ordinary.reservation_id)
        assert new.reserve(slice_, None).holders == (1, 1)
        (row,) = new.list_counters(buckets)
        assert (row.reserved, row.leased, row.holders) == (20_000, 10_000, 1)
        assert new.settle(slice_.reservation_id, None, NOW + 2, None).applied
        (row,) = new.list_counters(buckets)
        assert (row.reserved, row.leased, row.holders) == (10_000, 0, 0)
    finally:
        new.close()


@pytest.mark.postgres
def test_a_database_this_version_set_up_is_used_without_ddl_or_lock(tmp_path: Path) -> None:
    """The second process on a set-up database reads one fingerprint and starts: no advisory lock, no
    CREATE, no function replaced (which would make every running server process compile them again).
    A database whose fingerprint differs (another version, or functions missing) is installed again."""
    url = store_url_for("postgres", tmp_path)
    first = open_store(url)
    assert isinstance(first, SQLStore)
    assert first.reserve(plan(NOW), None).allowed
    first.close()
    try:
        second = open_store(url)
        assert isinstance(second, SQLStore)
        statements: list[str] = []
        sa.event.listen(second.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert second.reserve(plan(NOW + 1), None).allowed
        setup = [s for s in statements if "reserve(CAST" not in s]
        assert len(setup) == 1 and "obj_description" in setup[0], setup
        assert not any("advisory" in s or "CREATE" in s.upper() for s in statements)
        with second.engine.begin() as conn:
            conn.exec_driver_sql(f"COMMENT ON FUNCTION {second.prefix}reserve(jsonb) IS 'costguard schema 0'")
        second.close()

        statements.clear()
        third = open_store(url)
        assert isinstance(third, SQLStore)
        sa.event.listen(third.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert third.reserve(plan(NOW + 2), None).allowed
        assert any("pg_advisory_xact_lock" in s for s in statements)
        assert any("CREATE OR REPLACE FUNCTION" in s for s in statements)
        with third.engine.connect() as conn:
            comment = conn.execute(
                sa.text("SELECT obj_description(to_regprocedure(:f), 'pg_proc')"),
                {"f": f"{third.prefix}reserve(jsonb)"},
            ).scalar()
        assert comment == schema_fingerprint(third.prefix)
        third.close()
    finally:
        drop_tables(url)
