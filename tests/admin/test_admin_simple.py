"""The simple shapes beside the full ones: `daily`/`monthly` in USD for the caller's scope, `depletion_hour`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from admin_helpers import ADMIN_CONFIG, bearer, client_fixture, guard_fixture, spend, spend_the_usual  # noqa: F401 (pytest fixtures)
from fastapi.testclient import TestClient

import costguard
from costguard import Guard
from costguard.admin import app
from costguard.testing import FakeClock
from helpers import START, make_guard, usd_ceiling


def build_global_guard(clock: FakeClock | None = None) -> Guard:
    """$20 a day and $200 a month on everything (`match: {}`), a feature's own and each customer's ceilings."""
    guard = make_guard(
        usd_ceiling({}, day=20.0, month=200.0),
        usd_ceiling({"feature": "support_agent"}, month=100.0, day=10.0),
        usd_ceiling({"customer": "*"}, month=50.0),
        clock=clock or FakeClock(START),
    )
    return spend_the_usual(guard)


@pytest.fixture(name="global_guard")
def global_guard_fixture() -> Iterator[Guard]:
    guard = build_global_guard()
    yield guard
    guard.close()


@pytest.fixture(name="global_client")
def global_client_fixture(global_guard: Guard) -> TestClient:
    return TestClient(app(global_guard, admin=ADMIN_CONFIG))


def get(client: TestClient, path: str, who: str = "read", **params: Any) -> Any:
    response = client.get(path, params=params, headers=bearer(who))
    assert response.status_code == 200, response.text
    return response.json()


def usd(spent: float | None, limit: float | None, remaining: float | None) -> dict[str, float | None]:
    return {"spent_usd": spent, "limit_usd": limit, "remaining_usd": remaining}


NOTHING = usd(None, None, None)


# ---------------------------------------------------------------- GET /v1/budget/status: daily and monthly


def test_status_answers_daily_and_monthly_for_everything(global_client: TestClient, global_guard: Guard) -> None:
    data = get(global_client, "/v1/budget/status")
    assert data["scope"] == {}
    assert data["daily"] == usd(11.5, 20.0, 8.5)
    assert data["monthly"] == usd(11.5, 200.0, 188.5)
    # Beside the full shape, not instead of it.
    assert data["ceilings"] == global_guard.status().to_dict()["ceilings"]
    assert data["killswitches"] == []


def test_status_daily_and_monthly_follow_the_filters(global_client: TestClient) -> None:
    feature = get(global_client, "/v1/budget/status", feature="support_agent")
    assert feature["scope"] == {"feature": "support_agent"}
    assert (feature["daily"], feature["monthly"]) == (usd(9.5, 10.0, 0.5), usd(9.5, 100.0, 90.5))
    # A customer of the wildcard ceiling with no spend yet still has its limit; it has no day limit.
    fresh = get(global_client, "/v1/budget/status", customer="initech")
    assert (fresh["daily"], fresh["monthly"]) == (NOTHING, usd(0.0, 50.0, 50.0))


def test_status_daily_and_monthly_for_a_tenants_token_are_its_customers(global_client: TestClient) -> None:
    data = get(global_client, "/v1/budget/status", who="acme")
    assert data["scope"] == {"customer": "acme"}
    assert (data["daily"], data["monthly"]) == (NOTHING, usd(8.5, 50.0, 41.5))
    other = get(global_client, "/v1/budget/status", who="acme", customer="globex")
    assert (other["daily"], other["monthly"]) == (NOTHING, NOTHING)  # not its tenant: nothing shown


def test_status_without_a_global_ceiling_says_null(client: TestClient) -> None:
    data = get(client, "/v1/budget/status")
    assert (data["scope"], data["daily"], data["monthly"]) == ({}, NOTHING, NOTHING)


def test_status_daily_and_monthly_follow_run_time_limits(global_client: TestClient, global_guard: Guard) -> None:
    global_guard.set_limit({}, period="day", usd=15, reason="tighter")
    global_guard.set_limit({"customer": "acme"}, period="day", usd=3, reason="acme pays per day")
    assert get(global_client, "/v1/budget/status")["daily"] == usd(11.5, 15.0, 3.5)
    # acme's day limit is a new ceiling: it starts from what acme already spent today (its spend history).
    assert get(global_client, "/v1/budget/status", who="acme")["daily"] == usd(8.5, 3.0, 0.0)


# ---------------------------------------------------------------- GET /v1/budget/forecast: depletion_hour


def test_forecast_rows_carry_depletion_hour() -> None:
    clock = FakeClock("2026-05-12T07:30:00Z")
    guard = make_guard(usd_ceiling({}, day=20.0, month=200.0), clock=clock)
    for _ in range(3):  # $1 an hour since 07:30
        spend(guard, "support_agent", 1.0)
        clock.advance(3600)
    clock.set("2026-05-12T10:20:00Z")
    guard.flush()
    client = TestClient(app(guard, admin=ADMIN_CONFIG))
    rows = {row["period"]: row for row in get(client, "/v1/budget/forecast")["ceilings"]}
    assert set(rows) == {"day", "month"}
    # $17 left of the day at about $1/h: the day ends first, it doesn't run out.
    assert (rows["day"]["depletion_at"], rows["day"]["depletion_hour"]) == (None, None)
    month = rows["month"]
    depletion = datetime.fromisoformat(month["depletion_at"])
    assert (depletion.minute, depletion.second) != (0, 0)
    assert month["depletion_hour"] == depletion.replace(minute=0, second=0, microsecond=0).isoformat()
    assert datetime.fromisoformat(month["depletion_hour"]).utcoffset() is not None
    guard.close()


def test_an_exhausted_rows_depletion_hour_is_the_hour_it_was_seen(client: TestClient, guard: Guard) -> None:
    spend(guard, "support_agent", 0.5, customer="initech")  # support_agent's day: $10 of $10
    guard.flush()
    rows = get(client, "/v1/budget/forecast", feature="support_agent")["ceilings"]
    day = next(r for r in rows if r["period"] == "day" and r["labels"] == {"feature": "support_agent"})
    assert day["exhausted"] is True
    assert day["depletion_hour"] == "2026-05-12T10:00:00+00:00"


# ---------------------------------------------------------------- PUT /v1/budget/limits: the simple body


ACTOR = "api:ops-admin"


def put(client: TestClient, who: str, **body: Any) -> Any:
    return client.put("/v1/budget/limits", json=body, headers=bearer(who))


def limits(guard: Guard, **scope: str) -> tuple[float | None, float | None]:
    return guard.current_limit(scope, "day"), guard.current_limit(scope, "month")


def test_the_simple_body_sets_everythings_day_and_month(global_client: TestClient, global_guard: Guard) -> None:
    response = put(global_client, "admin", daily_limit_usd=12, monthly_limit_usd=150.5, reason="Q3 budget")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "scope": {},
        "daily_limit_usd": 12.0,
        "monthly_limit_usd": 150.5,
        "changes": [
            {
                "scope": {},
                "period": p,
                "unit": "usd",
                "old": was,
                "new": now,
                "cleared": False,
                "actor": ACTOR,
                "start": {
                    "known": True,
                    "spent": spent,
                    "source": "counter",
                    "note": response.json()["changes"][i]["start"]["note"],
                },
            }
            for i, (p, was, now, spent) in enumerate((("day", 20.0, 12.0, 11.5), ("month", 200.0, 150.5, 11.5)))
        ],
        "actor": "api:ops-admin",
    }
    assert limits(global_guard) == (12.0, 150.5)
    assert get(global_client, "/v1/budget/status")["daily"] == usd(11.5, 12.0, 0.5)
    records = [r for r in global_guard.audit(decision="limit_changed") if r.data["scope"] == {}]
    assert {(r.data["period"], r.data["reason"], r.data["actor"]) for r in records} == {
        ("day", "Q3 budget", "api:ops-admin"),
        ("month", "Q3 budget", "api:ops-admin"),
    }
    # In force at once: $11.50 of $12 spent today, a $1 call no longer fits anywhere.
    with pytest.raises(costguard.BudgetExceeded):
        global_guard.reserve("doc_search", estimate_usd=1.0)
    # Either key alone; the other stays.
    assert put(global_client, "operator", monthly_limit_usd=120, reason="lower").status_code == 200
    assert limits(global_guard) == (12.0, 120.0)


def test_nothing_changes_unless_every_change_may_be_made(global_client: TestClient, global_guard: Guard) -> None:
    # An operator may lower the day, but not raise the month: neither is made.
    response = put(global_client, "operator", daily_limit_usd=5, monthly_limit_usd=250, reason="mixed")
    assert response.status_code == 403
    assert "may lower limits but not raise them" in response.json()["message"]
    assert limits(global_guard) == (20.0, 200.0)
    # An admin may raise, up to admin.max_limit_usd ($1000).
    response = put(global_client, "admin", daily_limit_usd=5, monthly_limit_usd=1000.01, reason="too far")
    assert (response.status_code, response.json()["error"]) == (403, "above_max_limit")
    assert limits(global_guard) == (20.0, 200.0)
    assert put(global_client, "read", daily_limit_usd=5, reason="lower").status_code == 403
    assert list(global_guard.audit(decision="limit_changed")) == []


def test_null_clears_the_run_time_limit(global_client: TestClient, global_guard: Guard) -> None:
    assert put(global_client, "operator", daily_limit_usd=8, reason="incident").status_code == 200
    # Clearing it lets the config's $20 apply again: a raise, so an admin's to make.
    assert put(global_client, "operator", daily_limit_usd=None, reason="over").status_code == 403
    response = put(global_client, "admin", daily_limit_usd=None, monthly_limit_usd=None, reason="over")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["daily_limit_usd"], body["monthly_limit_usd"]) == (20.0, 200.0)
    # The month had no run-time limit: nothing to clear, nothing changed for it.
    assert [(c["period"], c["old"], c["new"], c["cleared"]) for c in body["changes"]] == [("day", 8.0, 20.0, True)]
    assert limits(global_guard) == (20.0, 200.0)


def test_a_tenants_token_changes_its_customers_limits(global_client: TestClient, global_guard: Guard) -> None:
    response = put(global_client, "acme-op", monthly_limit_usd=40, daily_limit_usd=3, reason="acme's own cap")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == {"customer": "acme"}
    assert limits(global_guard, customer="acme") == (3.0, 40.0)
    assert limits(global_guard, customer="globex") == (None, 50.0)
    assert limits(global_guard) == (20.0, 200.0)
    response = put(global_client, "acme-op", monthly_limit_usd=45, reason="a bit more")
    assert response.status_code == 403  # a raise: an admin's (the tenant's own admin token may)
    assert put(global_client, "acme", monthly_limit_usd=45, reason="a bit more").status_code == 200
    assert get(global_client, "/v1/budget/status", who="acme")["monthly"] == usd(8.5, 45.0, 36.5)


@pytest.mark.parametrize("reason", [None, "", "  \t"])
def test_the_simple_body_needs_a_reason(global_client: TestClient, global_guard: Guard, reason: str | None) -> None:
    body: dict[str, Any] = {"daily_limit_usd": 5} | ({} if reason is None else {"reason": reason})
    response = global_client.put("/v1/budget/limits", json=body, headers=bearer("admin"))
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "a reason is required" in response.json()["message"]
    assert limits(global_guard) == (20.0, 200.0)


def test_the_simple_body_refuses_what_it_does_not_know(global_client: TestClient) -> None:
    for body in (
        {"daily_limit_usd": 5, "scope": {"customer": "acme"}, "reason": "x"},  # its scope is the caller's
        {"daily_limit_usd": -1, "reason": "x"},
        {"monthly_limit_usd": "NaN", "reason": "x"},
        {"daily_limit_usd": 5, "weekly_limit_usd": 20, "reason": "x"},
    ):
        response = global_client.put("/v1/budget/limits", json=body, headers=bearer("admin"))
        assert response.status_code == 422, body
        assert "DailyMonthlyLimits" not in response.json()["message"]


@pytest.mark.parametrize("body", [{"reason": "x"}, {}, {"reason": "x", "daily": 5}, {"reason": "x", "limit": 5}])
def test_a_body_of_neither_shape_is_told_both(global_client: TestClient, global_guard: Guard, body: Any) -> None:
    response = global_client.put("/v1/budget/limits", json=body, headers=bearer("admin"))
    assert response.status_code == 422
    assert response.json() == {
        "error": "validation_error",
        "message": "body: give either {scope, usd|calls|tokens, reason} (and period, default month) for one "
        "scope, or {daily_limit_usd and/or monthly_limit_usd, reason} for the caller's scope",
    }
    assert global_guard.store.control().overrides == ()


def test_a_body_of_one_shape_is_told_what_it_lacks(global_client: TestClient) -> None:
    for body, says in (
        ({"usd": 5, "reason": "x"}, "scope: Field required"),
        ({"period": "day", "calls": 5, "reason": "x"}, "scope: Field required"),
        ({"scope": {"feature": "support_agent"}, "reason": "x"}, "body: give exactly one of usd, calls or tokens"),
        ({"daily_limit_usd": 5}, "reason: a reason is required"),
    ):
        response = global_client.put("/v1/budget/limits", json=body, headers=bearer("admin"))
        assert response.status_code == 422, body
        assert response.json()["message"].startswith(says), response.json()
