"""Admin API authentication and roles: every endpoint against every kind of credential."""

from __future__ import annotations

from typing import Any

import pytest
from admin_helpers import ADMIN_CONFIG, TOKENS, bearer, client_fixture, guard_fixture  # noqa: F401 (pytest fixtures `client`, `guard`)
from fastapi import FastAPI
from fastapi.testclient import TestClient

import costguard.admin.policy as policy
from costguard import Guard
from costguard.admin import TokenBook, app, router
from costguard.config import AdminToken
from costguard.errors import ConfigError
from helpers import FlakyStore, make_guard, usd_ceiling

# (method, path, body, the least role that may do it)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/budget/status", None, "read"),
    ("GET", "/v1/budget/forecast", None, "read"),
    ("GET", "/v1/audit", None, "read"),
    ("GET", "/v1/killswitch/status", None, "read"),
    ("PUT", "/v1/budget/limits", {"scope": {"feature": "support_agent"}, "usd": 80, "reason": "lower"}, "operator"),
    ("PUT", "/v1/budget/limits", {"scope": {"feature": "support_agent"}, "usd": 150, "reason": "raise"}, "admin"),
    ("POST", "/v1/killswitch/activate", {"reason": "incident #7"}, "operator"),
    ("POST", "/v1/killswitch/deactivate", {"reason": "resolved"}, "admin"),
]
ENDPOINT_IDS = [f"{m} {p} ({role})" for m, p, _, role in ENDPOINTS]

BAD_CREDENTIALS: dict[str, dict[str, Any]] = {
    "none": {},
    "wrong-same-length": {"Authorization": "Bearer " + "x" * len(TOKENS["admin"])},
    "different-length": {"Authorization": "Bearer short"},
    "much-longer": {"Authorization": "Bearer " + TOKENS["admin"] * 50},
    "admin-token-prefix": {"Authorization": "Bearer " + TOKENS["admin"][:-1]},
    "non-ascii-utf8": {"Authorization": ("Bearer " + "ü" + TOKENS["admin"][1:]).encode("utf-8")},
    "non-ascii-latin1": {"Authorization": b"Bearer \xff\xfe\xfd" + TOKENS["admin"].encode()[3:]},
    "basic-scheme": {"Authorization": "Basic " + TOKENS["admin"]},
    "bearer-without-token": {"Authorization": "Bearer "},
    "token-without-scheme": {"Authorization": TOKENS["admin"]},
}
RANK = {"read": 0, "operator": 1, "admin": 2}


def call(client: TestClient, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, Any]) -> Any:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS))
def test_no_or_wrong_token_is_401_with_a_bearer_challenge(client: TestClient, guard: Guard, credential: str) -> None:
    for method, path, body, _ in ENDPOINTS:
        response = call(client, method, path, body, BAD_CREDENTIALS[credential])
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        data = response.json()
        assert data["error"] == "unauthorized"
        assert data["message"]
        assert TOKENS["admin"] not in response.text
    assert not guard.killswitch.status().active  # nothing got through


@pytest.mark.parametrize(("method", "path", "body", "least"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("role", ["read", "operator", "admin"])
def test_each_role_gets_exactly_what_it_may(
    client: TestClient, guard: Guard, method: str, path: str, body: dict[str, Any] | None, least: str, role: str
) -> None:
    if path.endswith("/deactivate"):
        guard.killswitch.activate(reason="set up", actor="test")
    response = call(client, method, path, body, bearer(role))
    if RANK[role] >= RANK[least]:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403, response.text
        data = response.json()
        assert data["error"] == "forbidden"
        assert f"the {role} role may" in data["message"]
        assert "admin" in data["message"] or "operator" in data["message"]  # says which role would do


def test_forbidden_changes_change_nothing(client: TestClient, guard: Guard) -> None:
    before = guard.status().to_dict()["ceilings"]
    assert client.post("/v1/killswitch/activate", json={"reason": "x"}, headers=bearer("read")).status_code == 403
    raise_body = {"scope": {"feature": "support_agent"}, "usd": 150, "reason": "raise"}
    assert client.put("/v1/budget/limits", json=raise_body, headers=bearer("operator")).status_code == 403
    assert not guard.killswitch.status().active
    assert guard.status().to_dict()["ceilings"] == before
    guard.killswitch.activate(reason="on", actor="test")
    reason = {"reason": "resolved"}
    assert client.post("/v1/killswitch/deactivate", json=reason, headers=bearer("operator")).status_code == 403
    assert guard.killswitch.status().any_active


def test_health_needs_no_token_and_reports_the_store(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "ok"}


def test_health_and_reads_say_when_the_store_is_down() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0), store=store)
    client = TestClient(app(guard, admin=ADMIN_CONFIG))
    store.down = True
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["store"] == "unavailable"
    assert response.json()["error"] == "store_unavailable"
    response = client.get("/v1/killswitch/status", headers=bearer("read"))
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    guard.close()


def test_without_configured_tokens_everything_but_health_is_401(guard: Guard) -> None:
    client = TestClient(app(guard))
    assert client.get("/health").status_code == 200
    response = client.get("/v1/budget/status", headers=bearer("admin"))
    assert response.status_code == 401
    assert "admin.tokens" in response.json()["message"]


def test_tokens_are_compared_in_constant_time_as_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, Any]] = []
    real = policy.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(policy.hmac, "compare_digest", spy)
    book = TokenBook([AdminToken(**t) for t in ADMIN_CONFIG["tokens"]])
    found = book.lookup(TOKENS["admin"].encode())
    assert found is not None
    assert found.name == "ops-admin"
    # Every configured token is compared (no early exit that would time which one matched), as bytes.
    assert len(seen) == len(ADMIN_CONFIG["tokens"])
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in seen)
    assert book.lookup("ünïcödé") is None
    assert book.lookup(b"\xff" * 3) is None
    assert book.lookup(None) is None


def test_token_names_and_secrets_must_be_unique(guard: Guard) -> None:
    token = {"name": "a", "token": TOKENS["admin"], "role": "admin"}
    with pytest.raises(ConfigError, match="unique"):
        app(guard, admin={"tokens": [token, {**token, "token": TOKENS["read"]}]})
    with pytest.raises(ConfigError, match="same secret"):
        app(guard, admin={"tokens": [token, {**token, "name": "b"}]})


def test_errors_are_json_everywhere(client: TestClient) -> None:
    for response, status, code in (
        (client.get("/nope"), 404, "not_found"),
        (client.delete("/v1/budget/status", headers=bearer("admin")), 405, "method_not_allowed"),
        (client.get("/v1/audit?limit=5000", headers=bearer("admin")), 422, "validation_error"),
    ):
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == code
        assert isinstance(response.json()["message"], str)


def test_the_router_mounts_in_another_app_with_the_same_rules(guard: Guard) -> None:
    host = FastAPI()
    host.include_router(router(guard, admin=ADMIN_CONFIG), prefix="/costguard")
    client = TestClient(host)
    assert client.get("/costguard/health").status_code == 200
    response = client.get("/costguard/v1/budget/status")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    body = {"scope": {"feature": "f"}, "usd": "NaN", "reason": "x"}
    response = client.put("/costguard/v1/budget/limits", json=body, headers=bearer("admin"))
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "usd" in response.json()["message"]
    assert client.get("/costguard/v1/budget/status", headers=bearer("read")).status_code == 200


def test_openapi_lists_every_endpoint_with_bearer_auth(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/health",
        "/v1/budget/status",
        "/v1/budget/forecast",
        "/v1/budget/limits",
        "/v1/killswitch/activate",
        "/v1/killswitch/deactivate",
        "/v1/killswitch/status",
        "/v1/audit",
        "/v1/keys",
        "/v1/keys/purge",
        "/v1/keys/{key_id}",
    }
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/v1/budget/status"]["get"]["security"] == [{"bearer": []}]


def test_deactivating_needs_a_reason(client: TestClient, guard: Guard) -> None:
    guard.killswitch.activate(reason="incident", actor="test")
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        response = client.post("/v1/killswitch/deactivate", json=body, headers=bearer("admin"))
        assert response.status_code == 422, body
        assert "reason" in response.json()["message"]
    assert guard.killswitch.status().active  # still on


def test_a_typod_scope_is_refused_with_the_known_labels(client: TestClient, guard: Guard) -> None:
    on = client.post(
        "/v1/killswitch/activate",
        json={"scope": {"featur": "assistant"}, "reason": "incident"},
        headers=bearer("admin"),
    )
    assert on.status_code == 400
    assert "unknown label 'featur'" in on.json()["message"]
    assert "feature" in on.json()["message"]
    limit = client.put(
        "/v1/budget/limits", json={"scope": {"featur": "assistant"}, "usd": 1, "reason": "x"}, headers=bearer("admin")
    )
    assert limit.status_code == 400
    assert "unknown label 'featur'" in limit.json()["message"]
    assert not guard.killswitch.status().active


def test_the_openapi_schema_states_the_rules_the_server_enforces(client: TestClient, guard: Guard) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    limit = schemas["LimitRequest"]
    assert limit["oneOf"] == [{"required": ["usd"]}, {"required": ["calls"]}, {"required": ["tokens"]}]
    scope = limit["properties"]["scope"]
    assert sorted(scope["properties"]) == guard.known_labels()
    assert "featur" not in scope["properties"]
    assert scope["additionalProperties"] is False
    assert scope["properties"]["customer"]["minLength"] == 1
    assert scope["properties"]["customer"]["maxLength"] == guard.max_label_length
    # Some character `str.strip()` keeps: what the guard checks (tests/admin/test_admin_reasons.py).
    assert limit["properties"]["reason"]["pattern"] == (
        r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )
    optional = schemas["KillSwitchDeactivate"]["properties"]["scope"]["anyOf"]
    assert sorted(optional[0]["properties"]) == guard.known_labels()
    assert "reason" in schemas["KillSwitchDeactivate"]["required"]
