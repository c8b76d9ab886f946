"""Unknown values are refused like unknown parameters, not answered with an empty success."""

from __future__ import annotations

from pathlib import Path

import pytest
from admin_helpers import bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures `client`, `guard`)
from click.testing import CliRunner
from fastapi.testclient import TestClient

from costguard import Guard
from costguard.cli import main
from costguard.events import AUDIT_DECISIONS


def test_the_api_refuses_an_unknown_audit_decision(client: TestClient) -> None:
    response = client.get("/v1/audit", params={"decision": "blokked"}, headers=bearer("read"))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert "decision" in response.json()["message"] and "blocked" in response.json()["message"]
    assert client.get("/v1/audit", params={"decision": "blocked"}, headers=bearer("read")).status_code == 200


def test_python_refuses_an_unknown_audit_decision(guard: Guard) -> None:
    with pytest.raises(ValueError, match=r"unknown decision 'blokked'.*blocked"):
        guard.audit(decision="blokked")
    for decision in AUDIT_DECISIONS:
        guard.audit(decision=decision)


def test_the_cli_refuses_an_unknown_audit_decision(tmp_path: Path) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(f"store: sqlite:///{(tmp_path / 'spend.db').as_posix()}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["audit", "--config", str(config), "--decision", "blokked"])
    assert result.exit_code == 2, result.output
    assert "blokked" in result.output and "blocked" in result.output
