"""`costguard.client.Client` against a real `costguard serve` on 127.0.0.1: typed answers, ApiError, no token shown."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from admin_helpers import TOKENS
from test_admin_serve import free_port, start_serve, stop_serve, wait_for_health

from costguard import Guard
from costguard.client import (
    ApiError,
    CeilingRow,
    Client,
    ForecastRow,
    KillSwitchChange,
    LimitChange,
    PeriodBudget,
)

CONFIG = """\
store: sqlite:///{db}
features:
  support_agent:
    monthly_usd: 100
ceilings:
  - match: {{}}
    daily_usd: 20
    monthly_usd: 200
admin:
  max_limit_usd: 500
  tokens:
    - {{name: ops, token: "{admin}", role: admin}}
    - {{name: oncall, token: "{operator}", role: operator}}
"""


@dataclass(frozen=True)
class Server:
    url: str
    config: Path


@pytest.fixture(name="server", scope="module")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `costguard serve` for the module, on a store with $3.50 spent today."""
    tmp_path = tmp_path_factory.mktemp("client")
    config = tmp_path / "costguard.yaml"
    db = (tmp_path / "spend.db").as_posix()
    config.write_text(CONFIG.format(db=db, admin=TOKENS["admin"], operator=TOKENS["operator"]), encoding="utf-8")
    with Guard.from_yaml(config) as guard:
        for usd in (2.0, 1.5):
            with guard.reserve("support_agent", estimate_usd=usd) as reservation:
                reservation.commit(usd)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "COSTGUARD_CONFIG"}
    process = start_serve(config, port, env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        yield Server(url, config)
    finally:
        output = stop_serve(process)
        assert process.returncode == 0, output.decode(errors="replace")


def admin(server: Server) -> Client:
    return Client(server.url, TOKENS["admin"])


def test_budget_status_is_typed(server: Server) -> None:
    with admin(server) as api:
        status = api.budget.status()
        assert status.scope == {}
        assert status.daily == PeriodBudget(spent_usd=3.5, limit_usd=20.0, remaining_usd=16.5)
        assert status.monthly.limit_usd == 200.0
        assert isinstance(status.at, datetime)
        feature = next(r for r in status.ceilings if r.labels == {"feature": "support_agent"})
        assert (feature.unit, feature.spent, feature.limit, feature.period) == ("usd", 3.5, 100.0, "month")
        only = api.budget.status(feature="support_agent")
        assert only.scope == {"feature": "support_agent"}
        assert (only.daily.limit_usd, only.monthly.remaining_usd) == (None, 96.5)
    assert api.closed


def test_budget_status_without_a_ceiling_is_null(server: Server) -> None:
    with admin(server) as api:
        assert api.budget.status(customer="acme").daily == PeriodBudget(None, None, None)


def test_update_limits_and_its_refusals(server: Server) -> None:
    with Client(server.url + "/", TOKENS["operator"]) as oncall, admin(server) as ops:
        updated = oncall.budget.update_limits(daily_limit_usd=Decimal("15.25"), reason="cost review")
        assert (updated.scope, updated.daily_limit_usd, updated.monthly_limit_usd) == ({}, 15.25, 200.0)
        assert updated.changes == (LimitChange({}, "day", "usd", 20.0, 15.25, False, "api:oncall"),)
        with pytest.raises(ApiError) as refused:
            oncall.budget.update_limits(daily_limit_usd=10, monthly_limit_usd=300, reason="raise the month")
        assert (refused.value.status_code, refused.value.code) == (403, "forbidden")
        assert "may lower limits but not raise them" in refused.value.message
        assert ops.budget.status().daily.limit_usd == 15.25  # neither change was made
        with pytest.raises(ApiError) as above:
            ops.budget.update_limits(monthly_limit_usd=501, reason="too far")
        assert (above.value.status_code, above.value.code) == (403, "above_max_limit")
        with pytest.raises(ApiError) as blank:
            ops.budget.update_limits(monthly_limit_usd=50, reason=" ")
        assert (blank.value.status_code, blank.value.code) == (422, "validation_error")
        assert "a reason is required" in blank.value.message
        cleared = ops.budget.update_limits(daily_limit_usd=None, reason="review over")
        assert cleared.daily_limit_usd == 20.0
        assert [(c.period, c.cleared) for c in cleared.changes] == [("day", True)]
        with pytest.raises(ValueError, match="daily_limit_usd, monthly_limit_usd or both"):
            ops.budget.update_limits(reason="nothing")


def test_forecast_rows_are_typed(server: Server) -> None:
    with admin(server) as api:
        forecast = api.budget.forecast()
        assert {(r.period, tuple(r.labels.items())) for r in forecast.ceilings} == {
            ("day", ()),
            ("month", ()),
            ("month", (("feature", "support_agent"),)),
        }
        for row in forecast.ceilings:
            assert isinstance(row, ForecastRow)
            if row.depletion_at is None:
                assert row.depletion_hour is None
            else:
                assert row.depletion_hour == row.depletion_at.replace(minute=0, second=0, microsecond=0)


def test_rows_read_the_leased_part_of_reserved_and_default_it_for_an_earlier_server() -> None:
    row = {"ceiling": "feature=f", "labels": {"feature": "f"}, "period": "day", "unit": "usd", "ratio": 0.5}
    row |= {"spent_usd": 5.0, "reserved_usd": 2.0, "limit_usd": 10.0, "remaining_usd": 5.0}
    row |= {"resets_at": None, "enforcement": "hard"}
    assert CeilingRow.from_json(row).leased == 0.0  # a server of an earlier version doesn't say
    assert CeilingRow.from_json({**row, "leased_usd": 1.5}).leased == 1.5
    calls = {**row, "unit": "calls", "spent": 5.0, "reserved": 2.0, "leased": 1.0, "limit": 10.0, "remaining": 5.0}
    assert CeilingRow.from_json(calls).leased == 1.0
    forecast = {key: row[key] for key in ("ceiling", "labels", "period", "spent_usd", "limit_usd", "resets_at")}
    forecast |= {"velocity_usd_per_hour": 0.1, "projected_usd": None, "on_track": True, "exhausted": False}
    forecast |= {"depletion_at": None, "depletion_hour": None, "history_hours": 1, "confidence": 0.1}
    assert (ForecastRow.from_json(forecast).reserved_usd, ForecastRow.from_json(forecast).leased_usd) == (0.0, 0.0)
    both = ForecastRow.from_json({**forecast, "reserved_usd": 2.0, "leased_usd": 1.5})
    assert (both.reserved_usd, both.leased_usd) == (2.0, 1.5)


def test_killswitch_activate_status_deactivate(server: Server) -> None:
    with Client(server.url, TOKENS["operator"]) as oncall, admin(server) as ops:
        assert oncall.killswitch.status().active is False
        on = oncall.killswitch.activate("INC-7: loop", scope={"feature": "support_agent"})
        assert on == KillSwitchChange({"feature": "support_agent"}, True, True, "api:oncall", "api:oncall")
        status = ops.killswitch.status()
        assert status.active is False  # one feature is stopped, not everything
        assert [(dict(s.scope), s.reason, s.actor) for s in status.switches] == [
            ({"feature": "support_agent"}, "INC-7: loop", "api:oncall")
        ]
        assert ops.budget.status().killswitches[0].reason == "INC-7: loop"
        everything = oncall.killswitch.activate("INC-8: everything")
        assert (everything.scope, everything.activated_by) == ({}, "api:oncall")
        assert ops.killswitch.status(history=5).active is True
        with pytest.raises(ApiError) as denied:
            oncall.killswitch.deactivate("fixed")
        assert (denied.value.status_code, denied.value.code) == (403, "forbidden")
        off = ops.killswitch.deactivate("fixed")
        assert (off.active, off.changed, off.actor, off.activated_by) == (False, True, "api:ops", None)
        ops.killswitch.deactivate("fixed", scope={"feature": "support_agent"})
        status = ops.killswitch.status(history=4)
        assert (status.active, status.switches) == (False, ())
        assert [r["decision"] for r in status.history][:2] == ["killswitch_deactivated", "killswitch_deactivated"]


def test_errors_never_show_the_token(server: Server) -> None:
    wrong = "wrong-0123456789abcdef0123456789"
    with Client(server.url, wrong) as api:
        assert wrong not in repr(api)
        with pytest.raises(ApiError) as unauthorized:
            api.budget.status()
    error = unauthorized.value
    assert (error.status_code, error.code) == (401, "unauthorized")
    assert str(error).startswith("401 unauthorized: ")
    assert wrong not in str(error) and wrong not in repr(error) and wrong not in error.message
    with admin(server) as api, pytest.raises(ApiError) as unknown:
        api.budget.status(feature="")  # the server's 422, as an ApiError
    assert (unknown.value.status_code, unknown.value.code) == (422, "validation_error")


def test_no_server_is_an_api_error_too() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", TOKENS["admin"], timeout=2.0) as api:
        with pytest.raises(ApiError) as unreachable:
            api.killswitch.status()
    assert (unreachable.value.status_code, unreachable.value.code) == (None, "unreachable")
    assert TOKENS["admin"] not in str(unreachable.value)
    for token in ("", "  ", "tök-0123456789abcdef"):
        with pytest.raises(ValueError, match="token") as bad:
            Client("http://127.0.0.1:1", token)
        assert token.strip() == "" or token not in str(bad.value)


def test_without_httpx_the_import_names_the_extra() -> None:
    code = (
        "import sys\nsys.modules['httpx'] = None  # as if not installed\n"
        "try:\n    import costguard.client\nexcept ImportError as e:\n    print(e)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert 'pip install "costguard-ai[client]"' in result.stdout
