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


def test_issuing_a_key_is_audited_but_alerts_no_one_and_warns_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """An orchestrator mints a key per sub-agent run: a `limit_changed` alert (and a "starts from 0"
    warning) per key and cap would bury the alerts that matter."""
    from costguard.runkeys import RunKeys

    with proxy_stack(notifiers=[{"log": {}}]) as (guard, _url, _fake):
        with caplog.at_level("INFO", logger="costguard"):
            RunKeys(guard).issue({"run": "r-q"}, {"total_usd": 1, "daily_usd": 0.5})
            guard.flush()
            assert [r.getMessage() for r in caplog.records] == []
            decisions = [r.decision for r in guard.audit(limit=10)]
            assert decisions.count("key_issued") == 1 and decisions.count("limit_changed") == 2  # still audited
            # An operator's own limit change still alerts and warns as before.
            guard.set_limit({"run": "r-other"}, period="total", usd=1, reason="by hand")
            guard.flush()
        alerts = [r.getMessage() for r in caplog.records if r.name == "costguard.alerts"]
        assert len(alerts) == 1 and "limit_changed" in alerts[0]
        assert any("starts from 0" in r.getMessage() for r in caplog.records if r.name == "costguard")


def test_a_key_may_name_only_the_proxys_upstreams(tmp_path: Path) -> None:
    from costguard.runkeys import RunKeys

    with proxy_stack() as (guard, _url, _fake):
        with pytest.raises(ValueError, match=r"'opnai' is not one of the proxy's upstreams \(openai, anthropic"):
            RunKeys(guard).issue({"run": "r-t"}, {"total_usd": 1}, upstreams=["opnai"])
        admin = TestClient(app(guard, admin=guard.admin))
        op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
        typo = admin.post("/v1/keys", json={"labels": {"run": "r-t"}, "upstreams": ["anthropc"]}, headers=op)
        assert typo.status_code == 422 and typo.json()["message"] == (
            "upstreams: 'anthropc' is not one of the proxy's upstreams (openai, anthropic, stripe, twilio)"
        )
        assert RunKeys(guard).list() == [] and guard.current_limit({"run": "r-t"}, "total") is None
        assert RunKeys(guard).issue({"run": "r-t"}, upstreams=["openai", "stripe"]).state.upstreams == (
            "openai",
            "stripe",
        )
    config = tmp_path / "costguard.yaml"
    config.write_text(
        "store: memory://\nspool_dir: false\n"
        "proxy: {upstreams: {openai: {kind: openai, url: 'http://127.0.0.1:9', api_key: k}}}\n"
    )
    out = CliRunner().invoke(main, ["keys", "issue", "--config", str(config), "--labels", "run=r", "--upstream", "x"])
    assert out.exit_code == 1 and "'x' is not one of the proxy's upstreams (openai)" in out.output


def test_a_key_bound_to_upstreams_this_proxy_lacks_is_refused_saying_so(tmp_path: Path) -> None:
    """Issued where the config has no `proxy:` section (or another one), a key may name upstreams this
    proxy doesn't have: it checks them at use, and its 403 says which."""
    from costguard.config import parse_config
    from costguard.runkeys import RunKeys

    store = f"sqlite:///{tmp_path / 'cg.db'}"
    with parse_config({"store": store, "spool_dir": False}).build() as issuer:
        issued = RunKeys(issuer).issue({"run": "r-o"}, {"total_usd": 1}, upstreams=["opnai", "anthropic"])
    with proxy_stack(store=store) as (guard, url, fake):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            call(url, issued.key)
        body = caught.value.response.json()
        assert body["code"] == "upstream_not_allowed"
        assert body["message"] == (
            "this run key may not use 'openai': it may use opnai, anthropic; this proxy has no upstream 'opnai'"
        )
        assert fake.requests == []
        guard.flush()
        (refused,) = guard.audit(decision="blocked")
        assert refused.data["reason"] == "upstream_not_allowed" and refused.data["key_id"] == issued.id


def test_keys_that_stopped_working_are_purged_with_their_caps(tmp_path: Path) -> None:
    """Every proxy reads every key at each control refresh: keys revoked or expired a while ago are deleted
    with the caps they set; their spend stays counted. A cap another live key still needs stays."""
    from proxy_helpers import Clock

    from costguard.runkeys import RunKeys

    clock = Clock()
    store = f"sqlite:///{tmp_path / 'cg.db'}"
    with proxy_stack(store=store, clock=clock) as (guard, url, _fake):
        keys = RunKeys(guard)
        old_revoked = keys.issue({"run": "r-1"}, {"total_usd": 1})
        call(url, old_revoked.key)
        keys.revoke(old_revoked.id)
        old_expired = keys.issue({"run": "r-2"}, {"total_usd": 1, "calls_total": 5}, ttl_s=60)
        shared = keys.issue({"run": "r-3"}, {"total_usd": 2})
        keys.revoke(shared.id)
        keys.issue({"run": "r-3"})  # a live key on the same run, with no caps of its own: r-3's cap stays
        clock.now += 8 * 86400
        recent = keys.issue({"run": "r-4"}, {"total_usd": 1})
        keys.revoke(recent.id)
        live = keys.issue({"run": "r-5"}, {"total_usd": 1}, ttl_s=30 * 86400)

        purged = keys.purge()
        assert sorted(state.id for state in purged) == sorted([old_revoked.id, old_expired.id, shared.id])
        assert {state.id for state in keys.list()} == {recent.id, live.id} | {
            s.id for s in keys.list() if dict(s.labels) == {"run": "r-3"}
        }
        assert len(keys.list()) == 3
        assert guard.current_limit({"run": "r-1"}, "total") is None
        assert guard.current_limit({"run": "r-2"}, "total", "calls") is None
        assert guard.current_limit({"run": "r-3"}, "total") == 2.0
        assert guard.current_limit({"run": "r-4"}, "total") == 1.0
        records = guard.audit(decision="key_purged", limit=10)
        assert sorted(r.data["id"] for r in records) == sorted(s.id for s in purged)
        assert all(old_revoked.key not in json.dumps(r.to_dict()) for r in records)
        cleared = [r for r in guard.audit(decision="limit_changed", limit=50) if r.data["new"] is None]
        assert {tuple(r.labels.items()) for r in cleared} == {(("run", "r-1"),), (("run", "r-2"),)}
        assert keys.purge() == ()  # nothing more past the retention

        with pytest.raises(openai.AuthenticationError):
            call(url, old_revoked.key)  # purged: now an unknown key


def test_costguard_keys_purge(tmp_path: Path) -> None:
    from costguard.runkeys import RunKeys

    store = f"sqlite:///{tmp_path / 'cg.db'}"
    config = tmp_path / "costguard.yaml"
    config.write_text(f"store: {store}\nspool_dir: false\n")
    with proxy_stack(store=store) as (guard, _url, _fake):
        keys = RunKeys(guard)
        revoked = keys.revoke(keys.issue({"run": "r-1"}, {"total_usd": 1}).id)
        live = keys.issue({"run": "r-2"})
        runner = CliRunner()
        kept = runner.invoke(main, ["keys", "purge", "--config", str(config)])
        assert kept.exit_code == 0 and "purged 0 keys revoked or expired over 7d ago" in kept.output
        out = runner.invoke(main, ["keys", "purge", "--config", str(config), "--older-than", "0", "--json"])
        assert out.exit_code == 0, out.output
        assert revoked is not None and [row["id"] for row in json.loads(out.stdout)] == [revoked.id]
        assert [state.id for state in keys.list()] == [live.id]
        bad = runner.invoke(main, ["keys", "purge", "--config", str(config), "--older-than", "soon"])
        assert bad.exit_code == 2 and "--older-than" in bad.output


def test_the_admin_api_purges_for_operators_within_their_scope() -> None:
    from costguard.runkeys import RunKeys

    with proxy_stack() as (guard, _url, _fake):
        keys = RunKeys(guard)
        for run in ("r-1", "r-2"):
            keys.revoke(keys.issue({"run": run}, {"total_usd": 1}).id)
        admin = TestClient(app(guard, admin=guard.admin))
        assert (
            admin.post("/v1/keys/purge", json={}, headers={"authorization": f"Bearer {READ_TOKEN}"}).status_code == 403
        )
        op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
        assert admin.post("/v1/keys/purge", json={}, headers=op).json() == []  # revoked just now: kept 7 days
        assert admin.post("/v1/keys/purge", json={"older_than_s": -1}, headers=op).status_code == 422
        purged = admin.post("/v1/keys/purge", json={"older_than_s": 0}, headers=op)
        assert purged.status_code == 200
        assert sorted(row["labels"]["run"] for row in purged.json()) == ["r-1", "r-2"]
        assert keys.list() == []
