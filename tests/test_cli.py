"""The `costguard` CLI: demo, check-config, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import costguard
from costguard.cli import main

GOOD = """\
store: {store}
timezone: Europe/Berlin
features:
  support_agent:
    monthly_usd: 500
    daily_usd: 40
    per_customer: {{monthly_usd: 20}}
  doc_search:
    monthly_usd: 300
"""

BAD = """\
store: memory://
features:
  support_agent:
    monthly_usd: lots
"""


def write(tmp_path: Path, text: str, name: str = "costguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner in an empty directory with no COSTGUARD_CONFIG, so only explicit configs count."""
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def sqlite_config(tmp_path: Path) -> Path:
    return write(tmp_path, GOOD.format(store=f"sqlite:///{(tmp_path / 'spend.db').as_posix()}"))


# ---------------------------------------------------------------- demo


def test_demo_tells_the_whole_story(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--seconds", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "store: sqlite:///" in out  # the config it wrote is shown
    assert "WARN 80 %" in out
    assert "KILL 100 %" in out
    assert "FALLBACK" in out
    assert "support_agent (day ceiling full): canned reply" in out
    assert "summarizer customer=globex (day ceiling full)" in out
    assert "DEGRADE" in out
    assert "KILL SWITCH ON" in out
    assert "KILL SWITCH OFF" in out
    assert "Summary" in out
    assert "audit log (guard.audit):" in out


def test_demo_rejects_a_non_positive_duration(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--seconds", "0"])
    assert result.exit_code == 2
    assert "--seconds" in result.output


def test_demo_runs_as_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "costguard.cli", "demo", "--seconds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Summary" in done.stdout
    assert done.stderr == ""  # no warnings: estimates cover every call, nothing overshoots


# ---------------------------------------------------------------- check-config


def test_check_config_summarizes_a_good_file(runner: CliRunner, tmp_path: Path) -> None:
    path = sqlite_config(tmp_path)
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: OK" in result.stdout
    assert "timezone:   Europe/Berlin" in result.stdout
    assert "ceilings:   3" in result.stdout
    assert "features:   doc_search, support_agent" in result.stdout
    assert not (tmp_path / "spend.db").exists()  # the store was not opened


def test_check_config_reports_the_key_path_and_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "features.support_agent.monthly_usd" in result.stderr
    assert str(path) in result.stderr
    assert result.stdout == ""


def test_check_config_rejects_an_unknown_store(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "store: ftp://example.com/x\n")
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert "store" in result.stderr
    assert "ftp" in result.stderr


def test_check_config_hides_the_store_password(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, 'store: "postgresql+psycopg://ops:hunter2@db.internal/costguard"\n')
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "postgresql+psycopg://ops:***@db.internal/costguard" in result.stdout
    assert "hunter2" not in result.stdout


def test_check_config_uses_the_environment_then_the_working_directory(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(main, ["check-config"])
    assert result.exit_code == 2
    assert "--config" in result.stderr

    write(tmp_path, GOOD.format(store="memory://"))
    assert runner.invoke(main, ["check-config"]).exit_code == 0

    elsewhere = write(tmp_path, BAD, name="other.yaml")
    monkeypatch.setenv("COSTGUARD_CONFIG", str(elsewhere))
    result = runner.invoke(main, ["check-config"])
    assert result.exit_code == 2
    assert "other.yaml" in result.stderr


def test_a_missing_file_is_a_config_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["check-config", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.stderr


# ---------------------------------------------------------------- status


def test_status_json_shape_on_a_memory_store(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(store="memory://"))
    result = runner.invoke(main, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"at", "ceilings", "killswitches"}
    assert data["killswitches"] == []
    rows = {(row["ceiling"], row["period"]): row for row in data["ceilings"]}
    # memory:// lives in one process: the CLI sees the configured ceilings with nothing spent.
    assert set(rows) == {
        ("feature=support_agent", "day"),
        ("feature=support_agent", "month"),
        ("feature=doc_search", "month"),
    }
    day = rows["feature=support_agent", "day"]
    assert day["labels"] == {"feature": "support_agent"}
    assert day["unit"] == "usd"
    assert day["spent_usd"] == 0.0
    assert day["limit_usd"] == 40.0
    assert day["remaining_usd"] == 40.0
    assert day["ratio"] == 0.0
    assert day["resets_at"] is not None


def test_status_json_shows_spend_recorded_by_another_guard(runner: CliRunner, tmp_path: Path) -> None:
    path = sqlite_config(tmp_path)
    with costguard.Guard.from_yaml(path) as guard:
        with guard.reserve("support_agent", customer="acme", estimate_usd=0.5) as reservation:
            reservation.commit(0.25)
        guard.killswitch.activate("incident 7", actor="ops", scope="feature:doc_search")

    result = runner.invoke(main, ["status", "--config", str(path), "--json", "--customer", "acme"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    [row] = data["ceilings"]
    assert row["ceiling"] == "customer=*,feature=support_agent"
    assert row["labels"] == {"customer": "acme", "feature": "support_agent"}
    assert row["spent_usd"] == 0.25
    assert row["limit_usd"] == 20.0
    assert data["killswitches"][0]["scope"] == {"feature": "doc_search"}

    result = runner.invoke(main, ["status", "--config", str(path), "--json", "--feature", "support_agent"])
    spent = {(r["ceiling"], r["period"]): r["spent_usd"] for r in json.loads(result.stdout)["ceilings"]}
    assert spent["feature=support_agent", "day"] == 0.25
    assert spent["feature=support_agent", "month"] == 0.25


def test_status_table(runner: CliRunner, tmp_path: Path) -> None:
    path = sqlite_config(tmp_path)
    with costguard.Guard.from_yaml(path) as guard, guard.reserve("support_agent", estimate_usd=0.5) as reservation:
        reservation.commit(0.25)
    result = runner.invoke(main, ["status", "--config", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("ceiling", "resets", "feature=support_agent", "$0.2500", "$40.00", "0.6%"):
        assert text in result.stdout


def test_status_on_a_bad_config_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = runner.invoke(main, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 2
    assert "features.support_agent.monthly_usd" in result.stderr
