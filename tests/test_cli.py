"""The `costguard` CLI: demo, check-config, status."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import costguard
from costguard.cli import main
from costguard.engine.leases import LEASE_PREFIX

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
    assert set(data) == {"at", "ceilings", "killswitches", "unrecorded_usd", "spooled"}
    assert (data["unrecorded_usd"], data["spooled"]) == (0.0, 0)
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


def test_status_shows_reserved_and_the_leased_part_of_it(runner: CliRunner, tmp_path: Path) -> None:
    """A slice another process holds (its reservation id marks it) is `leased`; a call in flight is only
    `reserved`; `spent` counts both, as enforcement does."""
    path = sqlite_config(tmp_path)
    with costguard.Guard.from_yaml(path) as guard:
        with guard.reserve("support_agent", estimate_usd=0.5) as done:
            done.commit(0.1)
        guard.reserve("support_agent", estimate_usd=0.25)  # in flight: never settled here
        reserve = guard.store.reserve
        guard.store.reserve = lambda plan, record: reserve(  # type: ignore[method-assign]
            dataclasses.replace(plan, reservation_id=LEASE_PREFIX + plan.reservation_id), record
        )
        guard.reserve("support_agent", estimate_usd=0.5)  # held as a slice
    result = runner.invoke(main, ["status", "--config", str(path), "--json", "--feature", "support_agent"])
    day = {row["period"]: row for row in json.loads(result.stdout)["ceilings"]}["day"]
    assert (day["spent_usd"], day["reserved_usd"], day["leased_usd"]) == (0.85, 0.75, 0.5)
    result = runner.invoke(main, ["status", "--config", str(path), "--feature", "support_agent"])
    assert result.exit_code == 0, result.output
    for text in ("reserved", "leased", "$0.8500", "$0.7500", "$0.5000"):
        assert text in result.stdout


def test_status_on_a_bad_config_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = runner.invoke(main, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 2
    assert "features.support_agent.monthly_usd" in result.stderr


# ---------------------------------------------------------------- forecast, limits, kill switch, audit


def spend_some(config: Path, customer: str = "acme", usd: float = 0.5, times: int = 3) -> None:
    guard = costguard.Guard.from_yaml(config)
    for _ in range(times):
        with guard.reserve("support_agent", estimate_usd=usd, customer=customer) as r:
            r.commit(usd)
    guard.close()


def test_forecast_json_and_chart(runner: CliRunner, tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    spend_some(config)
    result = runner.invoke(main, ["forecast", "--config", str(config), "--json", "--feature", "support_agent"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["ceilings"]
    monthly = next(r for r in rows if r["period"] == "month" and r["labels"] == {"feature": "support_agent"})
    assert monthly["spent_usd"] == 1.5
    assert {"projected_usd", "on_track", "depletion_at", "confidence", "velocity_usd_per_hour"} <= set(monthly)
    chart = runner.invoke(main, ["forecast", "--config", str(config)])
    assert chart.exit_code == 0, chart.output
    assert "█" in chart.stdout
    assert "│" in chart.stdout
    assert "support_agent" in chart.stdout


def test_limits_set_and_clear(runner: CliRunner, tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    args = ["limits", "set", "feature=support_agent", "--config", str(config), "--usd", "750"]
    result = runner.invoke(main, [*args, "--reason", "launch week", "--actor", "ops"])
    assert result.exit_code == 0, result.output
    assert "month limit set to $750.00 (launch week)" in result.stdout
    status = json.loads(runner.invoke(main, ["status", "--config", str(config), "--json"]).stdout)
    monthly = [c for c in status["ceilings"] if c["labels"] == {"feature": "support_agent"} and c["period"] == "month"]
    assert monthly[0]["limit_usd"] == 750.0
    changed = json.loads(
        runner.invoke(main, ["audit", "--config", str(config), "--json", "--decision", "limit_changed"]).stdout
    )
    assert (changed["reason"], changed["actor"], changed["old"], changed["new"]) == ("launch week", "ops", 500.0, 750.0)
    cleared = runner.invoke(
        main, ["limits", "clear", "feature=support_agent", "--config", str(config), "--reason", "over"]
    )
    assert cleared.exit_code == 0, cleared.output
    status = json.loads(runner.invoke(main, ["status", "--config", str(config), "--json"]).stdout)
    monthly = [c for c in status["ceilings"] if c["labels"] == {"feature": "support_agent"} and c["period"] == "month"]
    assert monthly[0]["limit_usd"] == 500.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limits", "set", "feature=support_agent", "--usd", "1"], "Missing option '--reason'"),
        (["limits", "set", "support_agent", "--usd", "1", "--reason", "x"], "is not NAME=VALUE"),
        (["limits", "set", "feature=support_agent", "--reason", "x"], "exactly one of"),
        (["limits", "set", "feature=support_agent", "--usd", "1", "--calls", "2", "--reason", "x"], "exactly one of"),
        (["limits", "set", "feature=support_agent", "--usd", "-1", "--reason", "x"], "negative"),
        (["limits", "set", "feature=support_agent", "--usd", "1", "--reason", " \u3000"], "can't be blank"),
        (["killswitch", "deactivate", "--reason", "  "], "can't be blank"),
        (["killswitch", "activate", "--reason", "\u0085"], "can't be blank"),
    ],
)
def test_limits_set_rejects_bad_input(runner: CliRunner, tmp_path: Path, args: list[str], message: str) -> None:
    config = sqlite_config(tmp_path)
    result = runner.invoke(main, [*args, "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_killswitch_activate_status_deactivate(runner: CliRunner, tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    on = runner.invoke(
        main,
        [
            "killswitch",
            "activate",
            "--config",
            str(config),
            "--scope",
            "feature=support_agent",
            "--reason",
            "incident #7",
        ],
    )
    assert on.exit_code == 0, on.output
    assert "kill switch ON for feature=support_agent" in on.stdout
    guard = costguard.Guard.from_yaml(config)
    with pytest.raises(costguard.KillSwitchActive):
        guard.reserve("support_agent", estimate_usd=0.01)
    guard.close()
    status = runner.invoke(main, ["killswitch", "status", "--config", str(config), "--json"])
    data = json.loads(status.stdout)
    assert data["active"] is False  # as GET /v1/killswitch/status: one feature is stopped, not everything
    assert data["switches"][0]["scope"] == {"feature": "support_agent"}
    assert data["switches"][0]["reason"] == "incident #7"
    assert data["switches"][0]["actor"].startswith("cli")
    assert [r["decision"] for r in data["history"]] == ["killswitch_activated"]
    table = runner.invoke(main, ["killswitch", "status", "--config", str(config)])
    assert "ACTIVE for feature=support_agent" in table.stdout
    unsaid = runner.invoke(
        main, ["killswitch", "deactivate", "--config", str(config), "--scope", "feature=support_agent"]
    )
    assert unsaid.exit_code == 2  # a reason is required, as for activating
    assert "--reason" in unsaid.output
    off_args = ["killswitch", "deactivate", "--config", str(config), "--scope", "feature=support_agent"]
    off = runner.invoke(main, [*off_args, "--reason", "incident #7 resolved"])
    assert "kill switch OFF" in off.stdout
    again = runner.invoke(main, [*off_args, "--reason", "again"])
    assert "was not on" in again.stdout


def test_audit_filters_and_pages(runner: CliRunner, tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    spend_some(config, customer="acme", times=3)
    spend_some(config, customer="bob", times=2)
    result = runner.invoke(
        main, ["audit", "--config", str(config), "--json", "--customer", "bob", "--decision", "commit"]
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert all(line["labels"]["customer"] == "bob" for line in lines)
    first = runner.invoke(main, ["audit", "--config", str(config), "--json", "--limit", "4"])
    page = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(page) == 4
    rest = runner.invoke(main, ["audit", "--config", str(config), "--json", "--before-id", str(page[-1]["id"])])
    older = [json.loads(line) for line in rest.stdout.splitlines()]
    assert older
    assert all(r["id"] < page[-1]["id"] for r in older)
    assert len(page) + len(older) == 10  # 5 reserves + 5 commits
    reserves = [r for r in page + older if r["decision"] == "reserve"]
    assert all(r["ceilings"] and {"scope", "period", "spent", "limit"} <= set(r["ceilings"][0]) for r in reserves)
    table = runner.invoke(main, ["audit", "--config", str(config), "--since", "1h", "--limit", "4"])
    assert table.exit_code == 0, table.output
    assert "more: --before-id" in table.stdout
    assert "ceilings=" in table.stdout  # each ceiling as `scope period spent of limit`, not a Python repr
    assert "'scope'" not in table.stdout
    future = runner.invoke(main, ["audit", "--config", str(config), "--json", "--since", "2999-01-01T00:00Z"])
    assert future.stdout == ""
    bad = runner.invoke(main, ["audit", "--config", str(config), "--since", "yesterday"])
    assert bad.exit_code == 2
    assert "neither an ISO time" in bad.output


def test_operator_commands_as_real_processes(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    exe = [sys.executable, "-m", "costguard.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*exe, *args, "--config", str(config)]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)

    assert run("killswitch", "activate", "--reason", "drill").returncode == 0
    status = json.loads(run("killswitch", "status", "--json").stdout)
    assert status["active"] is True  # the global switch
    assert [s["scope"] for s in status["switches"]] == [{}]
    assert run("killswitch", "deactivate", "--reason", "drill over").returncode == 0
    assert run("limits", "set", "customer=acme", "--usd", "5", "--reason", "trial").returncode == 0
    (row,) = json.loads(run("forecast", "--json", "--customer", "acme").stdout)["ceilings"]
    assert (row["labels"], row["limit_usd"], row["spent_usd"], row["on_track"]) == (
        {"customer": "acme"},
        5.0,
        0.0,
        True,
    )
    lines = run("audit", "--json").stdout.splitlines()
    assert [json.loads(line)["decision"] for line in lines][:3] == [
        "limit_changed",
        "killswitch_deactivated",
        "killswitch_activated",
    ]


def test_a_typod_scope_is_refused_by_the_cli(runner: CliRunner, tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    on = runner.invoke(
        main, ["killswitch", "activate", "--config", str(config), "--scope", "featur=x", "--reason", "r"]
    )
    assert on.exit_code != 0
    assert "unknown label 'featur'" in on.output
    limit = runner.invoke(main, ["limits", "set", "featur=x", "--usd", "2", "--reason", "r", "--config", str(config)])
    assert limit.exit_code != 0
    assert "unknown label 'featur'" in limit.output
