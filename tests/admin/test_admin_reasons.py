"""A reason is blank exactly when `str.strip()` empties it — for the schema as for the guard — so every body
with a reason refuses one made of Unicode whitespace with a 422, not a 400 from the guard (or a change)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from admin_helpers import ADMIN_CONFIG, bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures)
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError

from costguard import Guard
from costguard.admin import app
from costguard.admin.schemas import REASON_PATTERN, Reason

# Whitespace to Python beyond ASCII's: NEL, the line separator, the ideographic space, and a mix.
BLANK = ["\x85", "\u2028", "\u3000", "\xa0\x1c\u2009\u205f"]


def refused(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert "reason: a reason is required" in response.json()["message"]


@pytest.mark.parametrize("reason", BLANK)
def test_kill_switch_bodies_refuse_a_reason_of_unicode_whitespace(
    client: TestClient, guard: Guard, reason: str
) -> None:
    refused(client.post("/v1/killswitch/activate", json={"reason": reason}, headers=bearer("admin")))
    assert guard.killswitch.status().switches == ()
    guard.killswitch.activate(reason="incident", actor="ops", scope={"feature": "support_agent"})
    body = {"scope": {"feature": "support_agent"}, "reason": reason}
    refused(client.post("/v1/killswitch/deactivate", json=body, headers=bearer("admin")))
    assert [dict(s.scope) for s in guard.killswitch.status().switches] == [{"feature": "support_agent"}]


@pytest.mark.parametrize("reason", BLANK)
def test_limit_bodies_refuse_a_reason_of_unicode_whitespace(client: TestClient, guard: Guard, reason: str) -> None:
    for body in (
        {"scope": {"feature": "support_agent"}, "usd": 5, "reason": reason},
        {"scope": {"feature": "support_agent"}, "usd": None, "reason": reason},
        {"daily_limit_usd": 5, "reason": reason},
        {"daily_limit_usd": 5, "monthly_limit_usd": None, "reason": reason},
    ):
        refused(client.put("/v1/budget/limits", json=body, headers=bearer("admin")))
    assert guard.store.control().overrides == ()


def test_a_reason_with_something_python_keeps_is_taken(client: TestClient, guard: Guard) -> None:
    response = client.post("/v1/killswitch/activate", json={"reason": "\u3000INC-1\x85"}, headers=bearer("admin"))
    assert response.status_code == 200, response.text
    assert guard.killswitch.status().switches[0].reason == "\u3000INC-1\x85"


def test_the_schemas_pattern_is_exactly_what_strip_removes() -> None:
    reason = TypeAdapter(Reason)
    disagree = []
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates: JSON in UTF-8 can't carry them
        text = chr(code)
        try:
            reason.validate_python(text)
        except ValidationError:
            taken = False
        else:
            taken = True
        if taken != bool(text.strip()):
            disagree.append(hex(code))
    assert disagree == []


def test_the_openapi_document_states_the_pattern(guard: Guard) -> None:
    schemas = TestClient(app(guard, admin=ADMIN_CONFIG)).get("/openapi.json").json()["components"]["schemas"]
    for name in ("KillSwitchActivate", "KillSwitchDeactivate", "LimitRequest", "DailyMonthlyLimits"):
        assert schemas[name]["properties"]["reason"]["pattern"] == REASON_PATTERN, name
