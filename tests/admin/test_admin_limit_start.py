"""`PUT /v1/budget/limits` says what a limit set counts from this period (`start`)."""

from __future__ import annotations

from admin_helpers import bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures `client`, `guard`)
from fastapi.testclient import TestClient

from costguard import Guard


def test_the_api_answers_what_the_limit_counts_from(client: TestClient, guard: Guard) -> None:
    body = {"scope": {"feature": "newcomer"}, "period": "day", "usd": 5, "reason": "cap a new feature"}
    answer = client.put("/v1/budget/limits", json=body, headers=bearer("admin")).json()
    assert answer["start"]["known"] is False  # the fixture's guard is on memory://
    assert "starts from 0" in answer["start"]["note"]
    rows = guard.status(feature="support_agent").ceilings
    day = next(r for r in rows if r.period == "day" and dict(r.labels) == {"feature": "support_agent"})
    body = {"scope": {"feature": "support_agent"}, "period": "day", "usd": 9, "reason": "tighter"}
    answer = client.put("/v1/budget/limits", json=body, headers=bearer("admin")).json()
    assert (answer["start"]["known"], answer["start"]["source"], answer["start"]["spent"]) == (
        True,
        "counter",
        day.spent,
    )
    body["usd"] = None
    assert client.put("/v1/budget/limits", json=body, headers=bearer("admin")).json()["start"] is None
