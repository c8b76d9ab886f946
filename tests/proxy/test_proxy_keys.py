"""Run keys issued, listed and revoked through the admin API and `costguard keys`, used through the proxy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from proxy_helpers import OPERATOR_TOKEN, READ_TOKEN, proxy_stack

from costguard.admin import app
from costguard.cli import main

MESSAGES = [{"role": "user", "content": "hi"}]


def call(url: str, key: str) -> None:
    with openai.OpenAI(base_url=f"{url}/openai/v1", api_key=key, max_retries=0) as agent:
        agent.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)


def test_the_admin_api_issues_lists_and_revokes_keys() -> None:
    with proxy_stack() as (guard, url, fake):
        admin = TestClient(app(guard, admin=guard.admin))
        op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
        reader = {"authorization": f"Bearer {READ_TOKEN}"}
        body = {"labels": {"run": "r-42", "agent": "billing"}, "caps": {"total_usd": 0.02}, "upstreams": ["openai"]}
        assert admin.post("/v1/keys", json=body, headers=reader).status_code == 403
        issued = admin.post("/v1/keys", json=body, headers=op)
        assert issued.status_code == 201, issued.text
        key, key_id = issued.json()["key"], issued.json()["id"]
        assert key.startswith("cgk-")
        call(url, key)
        call(url, key)
        with pytest.raises(openai.RateLimitError):  # the $0.02 cap: two calls at $0.01
            call(url, key)
        assert len(fake.requests) == 2
        listed = admin.get("/v1/keys", headers=reader).json()
        assert [row["id"] for row in listed] == [key_id]
        assert listed[0]["caps"] == {"total_usd": 0.02} and listed[0]["status"] == "active"
        assert key not in json.dumps(listed)
        assert key not in json.dumps([r.to_dict() for r in guard.audit(limit=1000)])  # shown once, never kept
        other = admin.post("/v1/keys", json={"labels": {"run": "r-43"}, "caps": {"total_usd": 1}}, headers=op).json()
        call(url, other["key"])
        revoked = admin.delete(f"/v1/keys/{other['id']}", headers=op)
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError):
            call(url, other["key"])
        assert admin.delete("/v1/keys/0123456789ab", headers=op).status_code == 404
        bad = admin.post("/v1/keys", json={"labels": {"run": "r-44"}, "caps": {"total_usd": -1}}, headers=op)
        assert bad.status_code == 422


def test_costguard_keys_issue_list_revoke_against_a_running_proxy(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'cg.db'}"
    with proxy_stack(store=store, killswitch={"cache_ms": 50}) as (_guard, url, _fake):
        config = tmp_path / "costguard.yaml"
        config.write_text(f"store: {store}\nspool_dir: false\n")
        runner = CliRunner()
        out = runner.invoke(
            main,
            ["keys", "issue", "--config", str(config), "--labels", "run=r-7", "--cap", "total_usd=0.5", "--ttl",
             "3600", "--json", "--actor", "ops"],
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        issued = json.loads(out.stdout)
        assert issued["caps"] == {"total_usd": 0.5} and issued["expires_at"] is not None
        call(url, issued["key"])  # a key issued by another process, seen through the shared store
        listed = runner.invoke(main, ["keys", "list", "--config", str(config), "--json"])
        assert [row["id"] for row in json.loads(listed.stdout)] == [issued["id"]]
        assert issued["key"] not in listed.stdout
        revoked = runner.invoke(main, ["keys", "revoke", "--config", str(config), issued["id"], "--actor", "ops"])
        assert revoked.exit_code == 0, revoked.output
        time.sleep(0.1)  # the proxy's control window
        with pytest.raises(openai.AuthenticationError):
            call(url, issued["key"])
        missing = runner.invoke(main, ["keys", "revoke", "--config", str(config), "0123456789ab"])
        assert missing.exit_code != 0


def test_a_key_cannot_raise_a_limit_its_issuer_could_not() -> None:
    """A key's caps are limit changes: an operator can't lift a scope's $50 a month to $1 000 by issuing a key
    labelled with that scope (raising needs an admin), but may cap it lower."""
    with proxy_stack() as (guard, _url, _fake):
        guard.set_limit({"customer": "acme"}, period="month", usd=50, reason="contract", actor="ops")
        admin = TestClient(app(guard, admin=guard.admin))
        op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
        raised = admin.post(
            "/v1/keys", json={"labels": {"customer": "acme"}, "caps": {"monthly_usd": 1000}}, headers=op
        )
        assert raised.status_code == 403, raised.text
        assert "admin" in raised.json()["message"]
        (row,) = [c for c in guard.status(customer="acme").ceilings if c.labels == {"customer": "acme"}]
        assert row.limit == 50.0  # nothing changed
        assert admin.get("/v1/keys", headers=op).json() == []
        lowered = admin.post("/v1/keys", json={"labels": {"customer": "acme"}, "caps": {"monthly_usd": 10}}, headers=op)
        assert lowered.status_code == 201, lowered.text
