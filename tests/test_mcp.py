"""`costguard mcp` over stdio, driven by the MCP SDK's own client: the five tools and the token rule."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from costguard import Guard

ADMIN = "adm-0123456789abcdef0123456789abcdef"
OPERATOR = "opr-0123456789abcdef0123456789abcdef"
ACME = "acm-0123456789abcdef0123456789abcdef"
TOOLS = {
    "costguard_budget_status",
    "costguard_budget_forecast",
    "costguard_killswitch_activate",
    "costguard_killswitch_deactivate",
    "costguard_killswitch_status",
    "costguard_key_issue",
    "costguard_key_revoke",
}

CONFIG = f"""\
store: sqlite:///{{db}}
features:
  support_agent:
    monthly_usd: 100
customers:
  "*": {{{{monthly_usd: 20}}}}
admin:
  tokens:
    - {{{{name: ops, token: "{ADMIN}", role: admin}}}}
    - {{{{name: oncall, token: "{OPERATOR}", role: operator}}}}
    - {{{{name: acme-admin, token: "{ACME}", role: admin, tenant: acme}}}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "costguard.yaml"
    path.write_text(CONFIG.format(db=(tmp_path / "spend.db").as_posix()), encoding="utf-8")
    with Guard.from_yaml(path) as guard:
        for customer, usd in (("acme", 15.0), ("globex", 3.0)):
            with guard.reserve("support_agent", customer=customer, estimate_usd=usd) as reservation:
                reservation.commit(usd)
    return path


Session = Callable[[Client], Awaitable[Any]]


def with_server(config: Path, token: str | None, body: Session) -> Any:
    """Spawn `python -m costguard.cli mcp --config …` and run `body` against it with the SDK's client."""
    env = {k: v for k, v in os.environ.items() if k != "COSTGUARD_MCP_TOKEN"}
    if token is not None:
        env["COSTGUARD_MCP_TOKEN"] = token
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "costguard.cli", "mcp", "--config", str(config)], env=env
    )

    async def run() -> Any:
        async with Client(params, read_timeout_seconds=30) as client:
            return await body(client)

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


def payload(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data = result.structured_content
        return dict(data.get("result", data))
    return dict(json.loads(result.content[0].text))


def error_text(result: Any) -> str:
    assert result.is_error
    return " ".join(getattr(item, "text", "") for item in result.content)


def test_tools_are_listed_and_reads_work_without_a_token(config: Path) -> None:
    async def body(client: Client) -> Any:
        tools = await client.list_tools()
        status = await client.call_tool("costguard_budget_status", {"customer": "acme"})
        forecast = await client.call_tool("costguard_budget_forecast", {})
        switches = await client.call_tool("costguard_killswitch_status", {})
        return tools, status, forecast, switches

    tools, status, forecast, switches = with_server(config, None, body)
    assert {tool.name for tool in tools.tools} == TOOLS
    described = {tool.name: tool.description or "" for tool in tools.tools}
    assert "Needs an admin token" in described["costguard_killswitch_activate"]
    rows = payload(status)["ceilings"]
    assert [(r["labels"], r["spent_usd"], r["limit_usd"]) for r in rows] == [({"customer": "acme"}, 15.0, 20.0)]
    periods = {(tuple(r["labels"].items()), r["period"]) for r in payload(forecast)["ceilings"]}
    assert ((("feature", "support_agent"),), "month") in periods
    assert "projected_usd" in payload(forecast)["ceilings"][0]
    assert payload(switches) == {"active": False, "switches": [], "history": []}  # the HTTP API's shape


@pytest.mark.parametrize(
    ("token", "says"),
    [(None, "COSTGUARD_MCP_TOKEN"), ("not-a-configured-token-at-all", "not one of"), (OPERATOR, "needs admin")],
)
def test_write_tools_need_an_admin_token(config: Path, token: str | None, says: str) -> None:
    async def body(client: Client) -> Any:
        on = await client.call_tool("costguard_killswitch_activate", {"reason": "agent says stop"})
        off = await client.call_tool("costguard_killswitch_deactivate", {"reason": "agent says go"})
        return on, off

    on, off = with_server(config, token, body)
    assert says in error_text(on)
    assert says in error_text(off)
    with Guard.from_yaml(config) as guard:
        assert not guard.killswitch.status().active
    if token:
        assert token not in error_text(on)


def test_an_admin_token_turns_the_kill_switch_on_and_off(config: Path) -> None:
    async def activate(client: Client) -> Any:
        result = await client.call_tool(
            "costguard_killswitch_activate", {"reason": "runaway agent", "scope": {"feature": "support_agent"}}
        )
        status = await client.call_tool("costguard_killswitch_status", {"history": 5})
        return result, status

    result, status = with_server(config, ADMIN, activate)
    assert payload(result) == {
        "scope": {"feature": "support_agent"},
        "active": True,
        "changed": True,
        "actor": "mcp:ops",
        "activated_by": "mcp:ops",
    }
    # As GET /v1/killswitch/status: a switch on one feature leaves `active` false; it is listed in `switches`.
    assert payload(status)["active"] is False
    assert [(s["scope"], s["reason"]) for s in payload(status)["switches"]] == [
        ({"feature": "support_agent"}, "runaway agent")
    ]
    assert [r["decision"] for r in payload(status)["history"]] == ["killswitch_activated"]
    # The switch is in the shared store: the guarded app's process sees it.
    with Guard.from_yaml(config) as guard:
        active = guard.killswitch.status().active
        assert [(dict(s.scope), s.actor) for s in active] == [({"feature": "support_agent"}, "mcp:ops")]
        record = guard.audit(decision="killswitch_activated")[0]
        assert record.data["actor"] == "mcp:ops"
        assert ADMIN not in json.dumps(record.to_dict())

    async def deactivate(client: Client) -> Any:
        return await client.call_tool(
            "costguard_killswitch_deactivate", {"scope": {"feature": "support_agent"}, "reason": "fixed"}
        )

    assert payload(with_server(config, ADMIN, deactivate))["changed"] is True
    with Guard.from_yaml(config) as guard:
        assert not guard.killswitch.status().active


def test_a_tenant_admin_token_is_held_to_its_tenant(config: Path) -> None:
    async def body(client: Client) -> Any:
        status = await client.call_tool("costguard_budget_status", {})
        global_switch = await client.call_tool("costguard_killswitch_activate", {"reason": "x"})
        before = await client.call_tool("costguard_killswitch_status", {})
        own = await client.call_tool("costguard_killswitch_activate", {"reason": "x", "scope": {"customer": "acme"}})
        after = await client.call_tool("costguard_killswitch_status", {})
        return status, global_switch, before, own, after

    with Guard.from_yaml(config) as guard:
        guard.killswitch.activate(reason="globex only", actor="ops", scope={"customer": "globex"})
    status, global_switch, before, own, after = with_server(config, ACME, body)
    assert [r["labels"] for r in payload(status)["ceilings"]] == [{"customer": "acme"}]
    assert "tenant 'acme'" in error_text(global_switch)
    assert payload(own)["scope"] == {"customer": "acme"}
    # Another customer's switch neither stops acme nor shows; acme's own does both, as over HTTP.
    assert payload(before) == {"active": False, "switches": [], "history": []}
    assert payload(after)["active"] is True
    assert [s["scope"] for s in payload(after)["switches"]] == [{"customer": "acme"}]


def test_invalid_arguments_are_an_error_result(config: Path) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("costguard_killswitch_activate", {"reason": ""})

    assert with_server(config, ADMIN, body).is_error


def test_deactivating_needs_a_reason(config: Path) -> None:
    async def body(client: Client) -> Any:
        await client.call_tool("costguard_killswitch_activate", {"reason": "agent says stop"})
        return (
            await client.call_tool("costguard_killswitch_deactivate", {}),
            await client.call_tool("costguard_killswitch_deactivate", {"reason": "  "}),
        )

    missing, blank = with_server(config, ADMIN, body)
    assert "reason" in error_text(missing)
    assert "a reason is required" in error_text(blank)
    with Guard.from_yaml(config) as guard:
        assert guard.killswitch.status().active  # still on


def test_a_typod_scope_is_refused_by_the_mcp_tools(config: Path) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool(
            "costguard_killswitch_activate", {"scope": {"featur": "support_agent"}, "reason": "typo"}
        )

    assert "unknown label 'featur'" in error_text(with_server(config, ADMIN, body))
    with Guard.from_yaml(config) as guard:
        assert not guard.killswitch.status().active


def test_activating_a_switch_already_on_names_who_turned_it_on(config: Path) -> None:
    with Guard.from_yaml(config) as guard:
        guard.killswitch.activate(reason="incident", actor="pager-duty-bot", scope={"feature": "support_agent"})

    async def activate(client: Client) -> Any:
        return await client.call_tool(
            "costguard_killswitch_activate", {"reason": "me too", "scope": {"feature": "support_agent"}}
        )

    result = payload(with_server(config, ADMIN, activate))
    assert (result["changed"], result["actor"], result["activated_by"]) == (False, "mcp:ops", "pager-duty-bot")


def test_an_operator_token_mints_and_revokes_a_run_key_for_a_sub_agent(config: Path) -> None:
    async def body(client: Any) -> Any:
        issued = await client.call_tool(
            "costguard_key_issue", {"labels": {"run": "sub-1"}, "caps": {"total_usd": 2}, "ttl_s": 600}
        )
        revoked = await client.call_tool("costguard_key_revoke", {"key_id": payload(issued)["id"]})
        unknown = await client.call_tool("costguard_key_revoke", {"key_id": "0123456789ab"})
        return payload(issued), payload(revoked), unknown

    issued, revoked, unknown = with_server(config, OPERATOR, body)
    assert issued["key"].startswith("cgk-") and issued["caps"] == {"total_usd": 2.0}
    assert revoked == {"id": issued["id"], "revoked": True}
    assert "no run key" in error_text(unknown)
    with Guard.from_yaml(config) as guard:
        (state,) = guard.store.control().keys
        assert state.revoked_at is not None and state.actor == "mcp:oncall"
        assert guard.current_limit({"run": "sub-1"}, "total") == 2.0


def test_minting_a_key_needs_a_token(config: Path) -> None:
    async def body(client: Any) -> Any:
        return await client.call_tool("costguard_key_issue", {"labels": {"run": "sub-2"}})

    assert "needs an admin token" in error_text(with_server(config, None, body))


def test_a_minted_key_cannot_raise_a_ceiling_its_operator_could_not(config: Path) -> None:
    """Customers have $20 a month each: a key labelled with one customer and a $500 monthly cap would lift
    it; an operator's token can't (an admin's can), and nothing is written."""

    async def body(client: Any) -> Any:
        return await client.call_tool(
            "costguard_key_issue", {"labels": {"customer": "acme"}, "caps": {"monthly_usd": 500}}
        )

    assert "admin" in error_text(with_server(config, OPERATOR, body))
    with Guard.from_yaml(config) as guard:
        assert guard.store.control().keys == ()
        assert guard.current_limit({"customer": "acme"}, "month") == 20.0


def test_a_minted_key_may_name_only_the_proxys_upstreams(config: Path) -> None:
    """Run with the proxy's config, the tool refuses an upstream the proxy doesn't have (a typo would make
    a key every request of which gets 403), naming the ones it has; nothing is written."""
    proxy = "proxy: {upstreams: {openai: {kind: openai, url: 'http://127.0.0.1:9', api_key: k}}}\n"
    config.write_text(config.read_text(encoding="utf-8") + proxy, encoding="utf-8")

    async def body(client: Any) -> Any:
        return await client.call_tool("costguard_key_issue", {"labels": {"run": "sub-3"}, "upstreams": ["opnai"]})

    assert "'opnai' is not one of the proxy's upstreams (openai)" in error_text(with_server(config, OPERATOR, body))
    with Guard.from_yaml(config) as guard:
        assert guard.store.control().keys == ()
