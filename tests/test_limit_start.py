"""Every count right: a limit set at run time on a scope that spent money this period starts from that
spend when the store can tell, and says so when it can't (Python, log, CLI, admin API)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from costguard import BudgetExceeded, Guard
from costguard.cli import main
from costguard.stores.sql import SQLStore
from helpers import make_guard, usd_ceiling


def _spend(guard: Guard, feature: str, usd: float, times: int = 3, **labels: str) -> None:
    for _ in range(times):
        with guard.reserve(feature, estimate_usd=usd, **labels) as r:
            r.commit(usd)


def _fits(guard: Guard, feature: str, usd: float) -> bool:
    try:
        with guard.reserve(feature, estimate_usd=usd):
            pass
    except BudgetExceeded:
        return False
    return True


def test_a_limit_on_a_scope_no_ceiling_covered_starts_from_its_spend_or_says_it_cannot(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`feature=x` spent $1.50 this month with no ceiling on it; a $2 monthly limit set now leaves $0.50 —
    on a SQL store, which sums its audit log. Memory and Redis keep no history of a scope no ceiling
    covered: the limit starts from $0 and the answer (and the log) says so."""
    guard = make_guard(usd_ceiling({"feature": "other"}, month=100.0), store=store_url)
    _spend(guard, "x", 0.5)
    start = guard.set_limit({"feature": "x"}, period="month", usd=2, reason="cap x", actor="ops")
    if isinstance(guard.store, SQLStore):
        assert (start.known, start.spent, start.source) == (True, 1.5, "audit log")
        assert "starts from 1.5, what feature=x spent since 2026-05-01 00:00 UTC (audit log)" in start.note
        assert not _fits(guard, "x", 0.6)
        assert _fits(guard, "x", 0.5)
    else:
        assert (start.known, start.spent, start.source) == (False, None, None)
        assert "starts from 0" in start.note
        assert "can't tell what feature=x spent earlier this month" in start.note
        assert "starts from 0" in caplog.text
        assert _fits(guard, "x", 0.6)
    (row,) = guard.status(feature="x").ceilings
    assert row.limit == 2.0
    guard.close()


def test_a_new_period_on_a_ceiling_starts_from_its_spend_history_on_every_store(store_url: str) -> None:
    """A daily limit added to a feature that only had a monthly one: its spend today is in the hourly
    history every store keeps (SQL stores read their audit log), so the new counter starts from it —
    and setting the limit again never counts it twice."""
    guard = make_guard(usd_ceiling({"feature": "x"}, month=100.0), store=store_url)
    _spend(guard, "x", 0.5)
    start = guard.set_limit({"feature": "x"}, period="day", usd=2, reason="a daily brake")
    source = "audit log" if isinstance(guard.store, SQLStore) else "spend history"
    assert (start.known, start.spent, start.source) == (True, 1.5, source)
    assert not _fits(guard, "x", 0.6)
    again = guard.set_limit({"feature": "x"}, period="day", usd=3, reason="a bit more")
    assert (again.known, again.spent, again.source) == (True, 1.5, "counter")
    assert "already counts: 1.5 so far" in again.note
    day = next(row for row in guard.status(feature="x").ceilings if row.period == "day")
    assert (day.spent, day.limit) == (1.5, 3.0)
    raised = guard.set_limit({"feature": "x"}, period="month", usd=200, reason="the monthly one, already counting")
    assert (raised.known, raised.spent, raised.source) == (True, 1.5, "counter")
    guard.close()


def test_a_limit_on_every_instance_of_a_new_wildcard_scope_says_its_start_is_not_known() -> None:
    guard = make_guard(usd_ceiling({"feature": "x"}, month=100.0))
    _spend(guard, "x", 0.5, team="a")
    start = guard.set_limit({"team": "*"}, period="day", usd=1, reason="per team")
    assert (start.known, start.spent) == (False, None)
    assert "counts each instance from 0 at its next call" in start.note


def test_the_cli_says_what_the_limit_counts_from(tmp_path: Path) -> None:
    db = (tmp_path / "spend.db").as_posix()
    config = tmp_path / "costguard.yaml"
    config.write_text(f"store: sqlite:///{db}\nfeatures:\n  other:\n    daily_usd: 1\n", encoding="utf-8")
    guard = Guard.from_yaml(config)
    _spend(guard, "x", 0.25)
    guard.close()
    args = ["limits", "set", "feature=x", "--usd", "2", "--config", str(config), "--reason", "cap x"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "counting from $0.7500 already spent this month (audit log)" in result.stdout
    memory = tmp_path / "memory.yaml"
    memory.write_text("store: memory://\nfeatures:\n  other:\n    daily_usd: 1\n", encoding="utf-8")
    result = CliRunner().invoke(main, [*args[:5], "--config", str(memory), "--reason", "cap x"])
    assert result.exit_code == 0, result.output
    assert "start not known: the new month usd counter of feature=x starts from 0" in result.stdout
