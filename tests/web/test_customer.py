"""The customer is a trust boundary: `customer_from=` (who is signed in) over a header the client sets,
a policy for requests with none, and header bytes read as UTF-8 the same way in every integration —
then found again by the CLI, the admin API and the kill switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from scenario import web_guard
from servers import uvicorn_server, wsgi_server
from starlette.testclient import TestClient
from test_asgi import starlette_app
from test_flask import flask_app
from test_wsgi import bare_app

from costguard import Guard
from costguard._web import header_text
from costguard.asgi import CostGuardMiddleware
from costguard.cli import main

NAME = "ümlaut-客户"
RAW = NAME.encode("utf-8")


def test_header_bytes_are_utf8_and_latin1_only_when_they_are_not() -> None:
    assert header_text(RAW) == NAME
    assert header_text(RAW.decode("latin-1")) == NAME  # what a WSGI server hands over (PEP 3333)
    assert header_text(NAME) == NAME  # already text
    assert header_text(b"caf\xe9") == "café"  # not UTF-8: read as Latin-1, never an error
    assert header_text("acme") == "acme"
    assert header_text(None) is None


@pytest.mark.parametrize("kind", ["asgi", "wsgi", "flask"])
def test_every_integration_reads_a_utf8_customer_header_alike(kind: str) -> None:
    guard = web_guard()
    app: Any = {"asgi": starlette_app, "wsgi": bare_app, "flask": flask_app}[kind](guard)
    serve = uvicorn_server if kind == "asgi" else wsgi_server
    with serve(app) as base:
        reply = httpx.get(f"{base}/labels", headers={"X-Customer-Id": RAW})
    assert reply.json() == {"customer": NAME, "plan": None} or reply.json() == {"customer": NAME}


def test_django_reads_a_utf8_customer_header_alike() -> None:
    import django_site  # noqa: F401 - configures settings
    from django.test import RequestFactory

    from costguard.django import CostGuardMiddleware as DjangoMiddleware

    middleware = DjangoMiddleware(lambda request: None)
    request = RequestFactory().get("/labels", HTTP_X_CUSTOMER_ID=RAW.decode("latin-1"))
    assert middleware._request(request).labels(web_guard()) == {"customer": NAME}


async def echo(scope: Any, receive: Any, send: Any) -> None:
    from costguard.current import current_labels

    body = json.dumps(current_labels()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def signed_in(scope: Any) -> str | None:
    """Who the app's own authentication says the caller is (here: a header only the gateway sets)."""
    for name, value in scope["headers"]:
        if name == b"x-authenticated-user":
            return str(value.decode())
    return None


def test_customer_from_wins_over_what_the_client_claims() -> None:
    guard = web_guard()
    guard.killswitch.activate(reason="abuse", actor="ops", scope={"customer": "mallory"})
    app = CostGuardMiddleware(echo, guard=guard, customer_from=signed_in)
    with uvicorn_server(app) as base:
        dodge = httpx.get(f"{base}/x", headers={"X-Customer-Id": "Mallory", "X-Authenticated-User": "mallory"})
        spoof = httpx.get(f"{base}/x", headers={"X-Customer-Id": "mallory", "X-Authenticated-User": "alice"})
    assert dodge.status_code == 503  # the header can't dodge mallory's switch: it is not read at all
    assert spoof.json() == {"customer": "alice"}  # nor can it spend someone else's budget


@pytest.mark.parametrize(
    ("policy", "status", "labels"),
    [("anonymous", 200, {"customer": "anonymous"}), ("reject", 400, None), ("skip", 200, {})],
)
def test_a_request_without_a_customer_follows_missing_customer(
    policy: str, status: int, labels: dict[str, str] | None
) -> None:
    guard = web_guard()
    app = CostGuardMiddleware(echo, guard=guard, missing_customer=policy)  # type: ignore[arg-type]
    with uvicorn_server(app) as base:
        reply = httpx.get(f"{base}/x")
        health = httpx.get(f"{base}/health")  # exempt paths are never refused
    assert reply.status_code == status
    if labels is None:
        assert reply.json()["code"] == "customer_required"
        assert "X-Customer-Id" in reply.json()["reason"]
    else:
        assert reply.json() == labels
    assert health.status_code == 200
    with pytest.raises(ValueError, match="missing_customer must be one of anonymous, reject, skip"):
        CostGuardMiddleware(echo, guard=guard, missing_customer="ignore")  # type: ignore[arg-type]


def test_random_or_missing_ids_cant_dodge_the_anonymous_cap() -> None:
    """No header: every such request is the one anonymous customer, capped at 3 calls like any other."""
    guard = web_guard()
    with uvicorn_server(starlette_app(guard)) as base:
        statuses = [httpx.get(f"{base}/chat").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_utf8_customer_round_trips_to_the_cli_the_api_and_the_kill_switch(tmp_path: Path) -> None:
    from costguard.admin import app as admin_app

    db = tmp_path / "costguard.db"
    config = tmp_path / "costguard.yaml"
    token = "adm-" + "7" * 32
    config.write_text(
        f"store: 'sqlite:///{db}'\n"
        "killswitch: {cache_ms: 1}\n"
        "features:\n  chat: {estimate_usd: 0.01, per_customer: {daily_usd: 1}}\n"
        f"admin: {{tokens: [{{name: ops, token: '{token}', role: admin}}]}}\n"
    )
    guard = Guard.from_yaml(config)
    with uvicorn_server(starlette_app(guard)) as base:
        assert httpx.get(f"{base}/chat", headers={"X-Customer-Id": RAW}).status_code == 200
        guard.flush()
        runner = CliRunner()
        status = runner.invoke(main, ["status", "--config", str(config), "--customer", NAME, "--json"])
        assert status.exit_code == 0, status.output
        (row,) = json.loads(status.stdout)["ceilings"]
        assert (row["labels"]["customer"], row["spent_usd"]) == (NAME, 0.01)
        with TestClient(admin_app(guard)) as api:
            # The dashboard shows what this endpoint returns.
            data = api.get(
                "/v1/budget/status", params={"customer": NAME}, headers={"Authorization": f"Bearer {token}"}
            ).json()
        assert [r["labels"]["customer"] for r in data["ceilings"]] == [NAME]
        on = runner.invoke(
            main, ["killswitch", "activate", "--config", str(config), "--scope", f"customer={NAME}", "--reason", "x"]
        )
        assert on.exit_code == 0, on.output
        refused = httpx.get(f"{base}/chat", headers={"X-Customer-Id": RAW})
        assert refused.status_code == 503
        assert refused.json()["scope"] == {"customer": NAME}
    guard.close()
