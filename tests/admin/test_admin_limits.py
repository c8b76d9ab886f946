"""PUT /v1/budget/limits: raise versus lower, max_limit_usd, clearing, body validation, the audit entry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from admin_helpers import ADMIN_CONFIG, TOKENS, bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures `client`, `guard`)
from fastapi.testclient import TestClient

import costguard
from costguard import Guard

LIMITS = "/v1/budget/limits"


def month_limit(guard: Guard, **labels: str) -> float | None:
    for row in guard.status(**labels).ceilings:
        if dict(row.labels) == labels and row.period == "month" and row.unit == "usd":
            return row.limit
    return None


def put(client: TestClient, who: str, **body: Any) -> Any:
    body.setdefault("reason", "test")
    return client.put(LIMITS, json=body, headers=bearer(who))


def test_operator_lowers_and_the_guard_enforces_it_at_once(client: TestClient, guard: Guard) -> None:
    response = put(client, "operator", scope={"feature": "support_agent"}, usd=80, reason="cost review")
    assert response.status_code == 200, response.text
    assert {k: v for k, v in response.json().items() if k != "start"} == {  # start: test_admin_limit_start.py
        "scope": {"feature": "support_agent"},
        "period": "month",
        "unit": "usd",
        "old": 100.0,
        "new": 80.0,
        "cleared": False,
        "actor": "api:ops-operator",
    }
    assert month_limit(guard, feature="support_agent") == 80.0


def test_operator_may_not_raise_admin_may(client: TestClient, guard: Guard) -> None:
    response = put(client, "operator", scope={"feature": "support_agent"}, usd=100.01)
    assert response.status_code == 403
    assert "may lower limits but not raise them" in response.json()["message"]
    assert month_limit(guard, feature="support_agent") == 100.0
    response = put(client, "admin", scope={"feature": "support_agent"}, usd=100.01)
    assert response.status_code == 200
    assert month_limit(guard, feature="support_agent") == 100.01


def test_setting_the_same_limit_is_not_a_raise(client: TestClient) -> None:
    assert put(client, "operator", scope={"feature": "support_agent"}, usd=100).status_code == 200


def test_raise_and_lower_are_judged_per_period_and_unit(client: TestClient, guard: Guard) -> None:
    # The day limit is $10: $50 a day raises it, though it is below the $100 month limit.
    response = put(client, "operator", scope={"feature": "support_agent"}, period="day", usd=50)
    assert response.status_code == 403
    assert put(client, "operator", scope={"feature": "support_agent"}, period="day", usd=9).status_code == 200
    # Calls: none configured, so a new calls limit only restricts spend.
    assert put(client, "operator", scope={"feature": "support_agent"}, period="day", calls=1000).status_code == 200
    assert put(client, "operator", scope={"feature": "support_agent"}, period="day", calls=2000).status_code == 403
    assert put(client, "admin", scope={"feature": "support_agent"}, period="day", calls=2000).status_code == 200
    assert put(client, "operator", scope={"customer": "acme"}, period="week", tokens=10_000).status_code == 200
    rows = {
        (r.period, r.unit): r.limit
        for r in guard.status(feature="support_agent").ceilings
        if not r.labels.get("customer")
    }
    assert rows[("day", "usd")] == 9.0
    assert rows[("day", "calls")] == 2000


def test_a_new_scope_may_be_capped_by_an_operator_but_only_an_admin_removes_it(guard: Guard) -> None:
    from costguard.admin import app

    client = TestClient(app(guard, admin={**ADMIN_CONFIG, "max_limit_usd": None}))
    response = put(client, "operator", scope={"team": "search"}, usd=20)
    assert response.status_code == 200
    assert response.json()["old"] is None
    assert month_limit(guard, team="search") == 20.0
    response = put(client, "operator", scope={"team": "search"}, usd=None, reason="not needed")
    assert response.status_code == 403
    assert "no limit" in response.json()["message"]
    response = put(client, "admin", scope={"team": "search"}, usd=None, reason="not needed")
    assert response.status_code == 200
    assert response.json()["cleared"] is True
    assert month_limit(guard, team="search") is None


def test_clearing_an_override_is_a_raise_only_when_the_config_is_higher(client: TestClient, guard: Guard) -> None:
    assert put(client, "operator", scope={"feature": "support_agent"}, usd=60).status_code == 200
    # Back to the config's $100 is a raise.
    assert put(client, "operator", scope={"feature": "support_agent"}, usd=None).status_code == 403
    assert put(client, "admin", scope={"feature": "support_agent"}, usd=None).json()["new"] == 100.0
    assert month_limit(guard, feature="support_agent") == 100.0
    # An override above the config: clearing it lowers, which an operator may do.
    assert put(client, "admin", scope={"feature": "support_agent"}, usd=150).status_code == 200
    response = put(client, "operator", scope={"feature": "support_agent"}, usd=None)
    assert response.status_code == 200
    assert (response.json()["old"], response.json()["new"]) == (150.0, 100.0)


def test_one_instance_of_a_wildcard_ceiling(client: TestClient, guard: Guard) -> None:
    assert put(client, "operator", scope={"customer": "acme"}, usd=30).status_code == 200
    assert month_limit(guard, customer="acme") == 30.0
    assert month_limit(guard, customer="globex") == 50.0
    assert put(client, "operator", scope={"customer": "acme"}, usd=40).status_code == 403


def test_max_limit_usd_caps_raises_through_the_api(client: TestClient, guard: Guard) -> None:
    response = put(client, "admin", scope={"feature": "support_agent"}, usd=1000.000001)
    assert response.status_code == 403
    data = response.json()
    assert data["error"] == "above_max_limit"
    assert "max_limit_usd" in data["message"]
    assert "$1000" in data["message"]
    assert month_limit(guard, feature="support_agent") == 100.0
    assert put(client, "admin", scope={"feature": "support_agent"}, usd=1000).status_code == 200
    # Removing the only limit of a scope would raise it past any cap.
    put(client, "operator", scope={"team": "ml"}, usd=5)
    response = put(client, "admin", scope={"team": "ml"}, usd=None)
    assert response.status_code == 403
    assert response.json()["error"] == "above_max_limit"
    # Calls and tokens are not dollars: the cap doesn't apply.
    assert put(client, "admin", scope={"feature": "support_agent"}, calls=10**9).status_code == 200


def test_max_limit_usd_never_stops_a_lowering(guard: Guard) -> None:
    from costguard.admin import app

    client = TestClient(app(guard, admin={**ADMIN_CONFIG, "max_limit_usd": 10}))
    # The config's $100 is above the cap; lowering to $90 is still allowed.
    assert put(client, "operator", scope={"feature": "support_agent"}, usd=90).status_code == 200
    assert put(client, "admin", scope={"feature": "support_agent"}, usd=95).json()["error"] == "above_max_limit"


def test_the_audit_entry_names_the_token_and_never_contains_it(client: TestClient, guard: Guard) -> None:
    put(client, "operator", scope={"feature": "support_agent"}, usd=70, reason="Q3 review")
    client.post("/v1/killswitch/activate", json={"reason": "incident 42"}, headers=bearer("operator"))
    client.post("/v1/killswitch/deactivate", json={"reason": "resolved"}, headers=bearer("admin"))
    guard.flush()
    records = guard.audit(limit=100)
    changed = next(r for r in records if r.decision == "limit_changed")
    assert changed.data["actor"] == "api:ops-operator"
    assert changed.data["reason"] == "Q3 review"
    assert (changed.data["old"], changed.data["new"]) == (100.0, 70.0)
    activated = next(r for r in records if r.decision == "killswitch_activated")
    assert activated.data["actor"] == "api:ops-operator"
    deactivated = next(r for r in records if r.decision == "killswitch_deactivated")
    assert deactivated.data["actor"] == "api:ops-admin"
    everything = json.dumps([r.to_dict() for r in records]) + json.dumps(guard.killswitch.status().to_dict())
    for token in TOKENS.values():
        assert token not in everything
    # The API's own audit view says the same.
    page = client.get("/v1/audit", params={"decision": "limit_changed"}, headers=bearer("read")).json()
    assert page["records"][0]["actor"] == "api:ops-operator"


# ---------------------------------------------------------------- body validation


def raw(client: TestClient, body: bytes | str, who: str = "admin", **headers: str) -> Any:
    return client.put(LIMITS, content=body, headers={**bearer(who), "Content-Type": "application/json", **headers})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"scope": {"feature": "f"}, "usd": NaN, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "usd": Infinity, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "usd": -Infinity, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "usd": 1e400, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "usd": -1, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "calls": -5, "reason": "x"}', "calls"),
        ('{"scope": {"feature": "f"}, "calls": 2.5, "reason": "x"}', "calls"),
        ('{"scope": {"feature": "f"}, "usd": 5}', "reason"),
        ('{"scope": {"feature": "f"}, "usd": 5, "reason": "   "}', "reason"),
        ('{"scope": {"feature": "f"}, "usd": 5, "reason": "x", "actor": "me"}', "actor"),
        ('{"scope": {"feature": "f"}, "usd": 5, "reason": "x", "period": "fortnight"}', "period"),
        ('{"scope": {"bad name!": "f"}, "usd": 5, "reason": "x"}', "scope"),
        ('{"scope": {"feature": ""}, "usd": 5, "reason": "x"}', "scope"),
        ('{"scope": "feature=f", "usd": 5, "reason": "x"}', "scope"),
        ('{"usd": 5, "reason": "x"}', "scope"),
        ('{"scope": {"feature": "f"}, "reason": "x"}', "usd"),
        ('{"scope": {"feature": "f"}, "usd": 5, "calls": 5, "reason": "x"}', "usd, calls"),
        ('{"scope": {"feature": "f"}, "usd": 5, "reason": "x"', "body"),
        ("[]", "body"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(client: TestClient, guard: Guard, body: str, field: str) -> None:
    response = raw(client, body)
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["error"] == "validation_error"
    assert field in data["message"]
    assert not any(r.decision == "limit_changed" for r in guard.audit(limit=100))


def test_amounts_are_rounded_to_the_micro_dollar(client: TestClient, guard: Guard) -> None:
    assert raw(client, '{"scope": {"feature": "support_agent"}, "usd": 12.345678, "reason": "x"}').status_code == 200
    assert month_limit(guard, feature="support_agent") == 12.345678
    assert raw(client, '{"scope": {"feature": "support_agent"}, "usd": "1.5", "reason": "x"}').status_code == 200
    more = raw(client, '{"scope": {"feature": "support_agent"}, "usd": 0.1234567, "reason": "x"}')
    assert (more.status_code, more.json()["new"]) == (200, 0.123457)
    assert (
        raw(client, '{"scope": {"feature": "support_agent"}, "usd": "12.0000001", "reason": "x"}').json()["new"] == 12.0
    )
    assert month_limit(guard, feature="support_agent") == 12.0


def test_bodies_over_64_kb_are_413(client: TestClient) -> None:
    padding = "x" * (65 * 1024)
    body = json.dumps({"scope": {"feature": "f"}, "usd": 1, "reason": padding})
    response = raw(client, body)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    def chunks() -> Any:  # no Content-Length: the cap holds while reading
        for _ in range(70):
            yield b" " * 1024

    response = client.put(LIMITS, content=chunks(), headers={**bearer("admin"), "Content-Type": "application/json"})
    assert response.status_code == 413
    # Just under the cap is read and validated as usual (and this reason is too long).
    body = json.dumps({"scope": {"feature": "support_agent"}, "usd": 1, "reason": "r" * 60_000})
    response = raw(client, body)
    assert response.status_code == 422
    assert "reason" in response.json()["message"]


def test_huge_numbers_are_a_client_error(client: TestClient) -> None:
    response = raw(client, '{"scope": {"feature": "f"}, "calls": 1' + "0" * 5000 + ', "reason": "x"}')
    assert response.status_code in (400, 422)
    assert response.json()["error"] in ("bad_request", "validation_error")
    response = raw(client, '{"scope": {"feature": "f"}, "usd": 1e15, "reason": "x"}')
    assert response.status_code == 422


def test_a_label_too_long_for_the_guard_is_a_clear_400(client: TestClient) -> None:
    response = put(client, "admin", scope={"feature": "f" * 5000}, usd=1)
    assert response.status_code == 400
    assert "max_label_length" in response.json()["message"]


def test_a_change_is_judged_on_every_ceiling_it_touches() -> None:
    """`{customer: acme}` is both acme's own $50 ceiling and acme's instance of `customer: "*"` at $10:
    $45 lowers the first but raises the second, so it is a raise, and max_limit_usd ($20) holds for it."""
    from costguard.admin import app
    from helpers import make_guard, usd_ceiling

    guard = make_guard(usd_ceiling({"customer": "*"}, month=10.0), usd_ceiling({"customer": "acme"}, month=50.0))
    client = TestClient(app(guard, admin={**ADMIN_CONFIG, "max_limit_usd": 20}))
    response = put(client, "operator", scope={"customer": "acme"}, usd=45)
    assert response.status_code == 403, response.text
    assert "raises 1 ceiling (customer=*: $10 → $45)" in response.json()["message"]
    response = put(client, "admin", scope={"customer": "acme"}, usd=45)
    assert response.status_code == 403
    assert response.json()["error"] == "above_max_limit"
    assert "would raise customer=* to $45" in response.json()["message"]
    with guard.reserve("f", customer="acme", estimate_usd=10.0):
        pass
    with pytest.raises(costguard.BudgetExceeded):  # acme is still capped at $10
        guard.reserve("f", customer="acme", estimate_usd=0.01)
    assert put(client, "operator", scope={"customer": "acme"}, usd=8).status_code == 200  # lowers both
    assert put(client, "admin", scope={"customer": "acme"}, usd=20).status_code == 200  # $8 → $20 on both
