"""Reading through the admin API: status, forecast, kill switch status, audit filters and paging; tenants."""

from __future__ import annotations

from typing import Any

from admin_helpers import bearer, client_fixture, guard_fixture, spend  # noqa: F401 (pytest fixtures `client`, `guard`)
from fastapi.testclient import TestClient

from costguard import Guard


def get(client: TestClient, path: str, who: str = "read", **params: Any) -> Any:
    response = client.get(path, params=params, headers=bearer(who))
    assert response.status_code == 200, response.text
    return response.json()


def rows(data: dict[str, Any]) -> set[tuple[str, tuple[tuple[str, str], ...], str]]:
    return {(r["ceiling"], tuple(sorted(r["labels"].items())), r["period"]) for r in data["ceilings"]}


def test_status_is_the_guards_status(client: TestClient, guard: Guard) -> None:
    data = get(client, "/v1/budget/status")
    assert data["ceilings"] == guard.status().to_dict()["ceilings"]
    day = next(r for r in data["ceilings"] if r["labels"] == {"feature": "support_agent"} and r["period"] == "day")
    assert (day["spent_usd"], day["limit_usd"], day["ratio"]) == (9.5, 10.0, 0.95)
    only = get(client, "/v1/budget/status", customer="globex")
    assert {tuple(r["labels"].items()) for r in only["ceilings"]} == {(("customer", "globex"),)}
    assert get(client, "/v1/budget/status", feature="nothing-here")["ceilings"] == []


def test_forecast_covers_usd_ceilings(client: TestClient, guard: Guard) -> None:
    data = get(client, "/v1/budget/forecast", feature="support_agent")
    hours = [row.pop("depletion_hour") for row in data["ceilings"]]  # test_admin_simple.py checks it
    assert data == guard.forecast(feature="support_agent").to_dict()
    assert all(hour.endswith(":00:00+00:00") for hour in hours)
    assert {r["period"] for r in data["ceilings"]} == {"day", "month"}
    assert all("projected_usd" in r and "on_track" in r for r in data["ceilings"])


def test_killswitch_status_with_history(client: TestClient, guard: Guard) -> None:
    assert get(client, "/v1/killswitch/status") == {"active": False, "switches": [], "history": []}
    client.post(
        "/v1/killswitch/activate",
        json={"reason": "one", "scope": {"feature": "doc_search"}},
        headers=bearer("operator"),
    )
    client.post("/v1/killswitch/activate", json={"reason": "two"}, headers=bearer("operator"))
    client.post("/v1/killswitch/deactivate", json={"reason": "resolved"}, headers=bearer("admin"))
    data = get(client, "/v1/killswitch/status", history=2)
    assert data["active"] is False  # only doc_search is stopped, not everything
    assert [s["scope"] for s in data["switches"]] == [{"feature": "doc_search"}]
    assert [h["decision"] for h in data["history"]] == ["killswitch_deactivated", "killswitch_activated"]
    assert get(client, "/v1/killswitch/status", history=0)["history"] == []
    status = get(client, "/v1/budget/status")
    assert [s["scope"] for s in status["killswitches"]] == [{"feature": "doc_search"}]


def test_killswitch_status_says_whether_the_callers_scope_is_stopped(client: TestClient, guard: Guard) -> None:
    # `active` is a boolean: a switch stops everything (a tenant's token: everything of its tenant).
    guard.killswitch.activate(reason="loop", scope={"feature": "support_agent"})
    guard.killswitch.activate(reason="abuse", scope={"customer": "globex"})
    assert get(client, "/v1/killswitch/status")["active"] is False
    assert get(client, "/v1/killswitch/status", who="acme")["active"] is False
    guard.killswitch.activate(reason="acme's incident", scope={"customer": "acme"})
    assert get(client, "/v1/killswitch/status")["active"] is False
    mine = get(client, "/v1/killswitch/status", who="acme")
    assert mine["active"] is True
    assert [s["scope"] for s in mine["switches"]] == [{"customer": "acme"}]
    guard.killswitch.deactivate(scope={"customer": "acme"})
    guard.killswitch.activate(reason="INC-1", actor="ops")
    everything = get(client, "/v1/killswitch/status")
    assert everything["active"] is True
    assert {s["reason"] for s in everything["switches"]} == {"loop", "abuse", "INC-1"}
    # A tenant's calls stop under the global switch too; the switch itself stays out of its sight.
    tenant = get(client, "/v1/killswitch/status", who="acme")
    assert (tenant["active"], tenant["switches"]) == (True, [])


def test_activate_twice_reports_no_change(client: TestClient, guard: Guard) -> None:
    first = client.post("/v1/killswitch/activate", json={"reason": "a"}, headers=bearer("operator")).json()
    second = client.post("/v1/killswitch/activate", json={"reason": "a"}, headers=bearer("admin")).json()
    assert (first["changed"], second["changed"]) == (True, False)
    assert (first["actor"], first["activated_by"]) == ("api:ops-operator", "api:ops-operator")
    # Already on: this caller is the actor, the one who turned it on is still who did.
    assert (second["actor"], second["activated_by"]) == ("api:ops-admin", "api:ops-operator")
    assert guard.killswitch.status().any_active
    off = client.post("/v1/killswitch/deactivate", json={"reason": "resolved"}, headers=bearer("admin")).json()
    assert off == {"scope": {}, "active": False, "changed": True, "actor": "api:ops-admin"}
    assert not guard.killswitch.status().any_active


def test_audit_filters_and_pages_with_next_before_id(client: TestClient, guard: Guard) -> None:
    for i in range(7):
        spend(guard, "support_agent", 0.01, customer=f"c{i}")
    guard.flush()
    everything = get(client, "/v1/audit", limit=1000)
    assert everything["next_before_id"] is None
    ids = [r["id"] for r in everything["records"]]
    assert ids == sorted(ids, reverse=True)
    paged: list[int] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"before_id": before} if before else {})
        page = get(client, "/v1/audit", **params)
        paged += [r["id"] for r in page["records"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert paged == ids
    commits = get(client, "/v1/audit", decision="commit", customer="acme")
    assert [r["actual_usd"] for r in commits["records"]] == [4.0, 4.5]
    assert get(client, "/v1/audit", feature="doc_search")["records"][0]["labels"] == {
        "feature": "doc_search",
        "tenant": "acme",
    }


def test_audit_time_window(client: TestClient, guard: Guard) -> None:
    # The guard's clock stands at 2026-05-12T10:00Z; every record so far is from then.
    assert get(client, "/v1/audit", since="2026-05-12T09:59:00Z")["records"]
    assert get(client, "/v1/audit", since="2026-05-12T10:00:01Z")["records"] == []
    assert get(client, "/v1/audit", until="2026-05-12T10:00:00")["records"] == []  # naive = UTC, exclusive
    assert get(client, "/v1/audit", since="2026-05-12T11:59:00+02:00")["records"]
    response = client.get("/v1/audit", params={"since": "yesterday"}, headers=bearer("read"))
    assert response.status_code == 422
    assert "since" in response.json()["message"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"before_id": 0}, {"before_id": "x"}, {"feature": ""}):
        response = client.get("/v1/audit", params=bad, headers=bearer("read"))
        assert response.status_code == 422, bad
        assert next(iter(bad)) in response.json()["message"]


# ---------------------------------------------------------------- tenants


def test_a_tenant_token_sees_only_its_tenant(client: TestClient, guard: Guard) -> None:
    data = get(client, "/v1/budget/status", who="acme")
    labels = [r["labels"] for r in data["ceilings"]]
    assert labels
    assert all(lab.get("customer") == "acme" or lab.get("tenant") == "acme" for lab in labels)
    assert {"customer": "acme"} in labels
    assert {"tenant": "acme"} in labels
    assert get(client, "/v1/budget/status", who="acme", customer="globex")["ceilings"] == []
    forecast = get(client, "/v1/budget/forecast", who="acme")
    assert forecast["ceilings"]
    assert all(
        r["labels"].get("customer") == "acme" or r["labels"].get("tenant") == "acme" for r in forecast["ceilings"]
    )
    assert rows(forecast) < rows(get(client, "/v1/budget/forecast"))


def test_a_tenant_token_reads_only_its_audit_records_a_full_page_at_a_time(client: TestClient, guard: Guard) -> None:
    for i in range(30):
        spend(guard, "support_agent", 0.01, customer="globex" if i % 6 else "acme")
    guard.flush()
    seen: list[dict[str, Any]] = []
    before = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before_id": before} if before else {})
        page = get(client, "/v1/audit", who="acme", **params)
        pages += 1
        assert len(page["records"]) == 3 or page["next_before_id"] is None
        seen += page["records"]
        before = page["next_before_id"]
        if before is None:
            break
    assert all(r["labels"].get("customer") == "acme" or r["labels"].get("tenant") == "acme" for r in seen)
    mine = [
        r.to_dict()
        for r in guard.audit(limit=1000)
        if r.labels.get("customer") == "acme" or r.labels.get("tenant") == "acme"
    ]
    assert seen == mine
    assert pages >= len(mine) // 3


def test_a_tenant_token_changes_only_its_tenant(client: TestClient, guard: Guard) -> None:
    ok = client.put(
        "/v1/budget/limits", json={"scope": {"customer": "acme"}, "usd": 20, "reason": "x"}, headers=bearer("acme-op")
    )
    assert ok.status_code == 200
    for scope in ({"feature": "support_agent"}, {"customer": "globex"}, {"customer": "*"}, {}):
        response = client.put(
            "/v1/budget/limits", json={"scope": scope, "usd": 1, "reason": "x"}, headers=bearer("acme")
        )
        assert response.status_code == 403, scope
        assert "tenant 'acme'" in response.json()["message"]
    assert client.post("/v1/killswitch/activate", json={"reason": "x"}, headers=bearer("acme")).status_code == 403
    response = client.post(
        "/v1/killswitch/activate", json={"reason": "x", "scope": {"tenant": "acme"}}, headers=bearer("acme-op")
    )
    assert response.status_code == 200
    guard.killswitch.activate(reason="someone else's", scope={"customer": "globex"})
    data = get(client, "/v1/killswitch/status", who="acme")
    assert [s["scope"] for s in data["switches"]] == [{"tenant": "acme"}]
    assert all(h["labels"] == {"tenant": "acme"} for h in data["history"])
    assert (
        client.post(
            "/v1/killswitch/deactivate", json={"scope": {"customer": "globex"}, "reason": "x"}, headers=bearer("acme")
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/v1/killswitch/deactivate", json={"scope": {"tenant": "acme"}, "reason": "x"}, headers=bearer("acme")
        ).status_code
        == 200
    )
    assert [dict(s.scope) for s in guard.killswitch.status().active] == [{"customer": "globex"}]


def test_a_misspelt_filter_is_refused_not_ignored(client: TestClient) -> None:
    response = client.get("/v1/budget/status", params={"custmer": "acme"}, headers=bearer("read"))
    assert response.status_code == 422
    assert "custmer" in response.json()["message"]
    assert "customer" in response.json()["message"]
