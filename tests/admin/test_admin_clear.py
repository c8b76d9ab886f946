"""Clearing a run-time limit that is not set is an error everywhere: Python, the API (404), the CLI (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from admin_helpers import bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures `client`, `guard`)
from click.testing import CliRunner
from fastapi.testclient import TestClient

from costguard import Guard, LimitNotFound
from costguard.cli import main
from costguard.testing import RecordingNotifier
from helpers import make_guard, usd_ceiling


def test_clearing_what_is_not_there_raises_and_changes_nothing() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), notifier=notifier)
    with pytest.raises(LimitNotFound, match="no run-time day usd limit is set for feature=nosuch"):
        guard.clear_limit({"feature": "nosuch"}, period="day", reason="cleanup")
    with pytest.raises(LimitNotFound, match=r"a limit from costguard\.yaml is changed in the file"):
        guard.clear_limit({"feature": "f"}, period="day", reason="the config's own limit is not a run-time one")
    guard.flush()
    assert guard.audit(decision="limit_changed") == []
    assert [e.kind for e in notifier.events] == []


def test_clearing_a_set_limit_still_works_once() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    guard.set_limit({"feature": "f"}, period="day", usd=0.5, reason="incident")
    guard.clear_limit({"feature": "f"}, period="day", reason="over")
    assert guard.current_limit({"feature": "f"}, "day") == 1.0
    with pytest.raises(LimitNotFound):
        guard.clear_limit({"feature": "f"}, period="day", reason="twice")


def test_the_api_answers_404_and_changes_nothing(client: TestClient, guard: Guard) -> None:
    before = len(guard.audit(decision="limit_changed"))
    response = client.put(
        "/v1/budget/limits",
        json={"scope": {"feature": "nosuch"}, "period": "day", "usd": None, "reason": "cleanup"},
        headers=bearer("admin"),
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "limit_not_found"
    assert "nothing to clear" in response.json()["message"]
    assert len(guard.audit(decision="limit_changed")) == before


def test_the_cli_exits_1_and_says_nothing_was_cleared(tmp_path: Path) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(
        f"store: sqlite:///{(tmp_path / 'spend.db').as_posix()}\nfeatures:\n  f:\n    daily_usd: 1\n", encoding="utf-8"
    )
    result = CliRunner().invoke(
        main, ["limits", "clear", "feature=nosuch", "--period", "day", "--config", str(config), "--reason", "x"]
    )
    assert result.exit_code == 1, result.output
    assert "nothing to clear" in result.output and "cleared (" not in result.output
    audit = CliRunner().invoke(main, ["audit", "--config", str(config), "--json", "--decision", "limit_changed"])
    assert audit.exit_code == 0 and not [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
