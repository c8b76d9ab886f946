"""`costguard mcp`: budget and kill switch tools for agents, over stdio, on the MCP SDK's `MCPServer`.

Needs the `mcp` extra: `pip install "costguard-ai[mcp]"` (SDK 2.x). Reading tools answer anyone who
can start the process; the kill switch tools need `COSTGUARD_MCP_TOKEN` in the server's environment
to be one of the config's admin tokens (with a `tenant`, every tool is limited to that tenant).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from costguard.admin.policy import AccessDenied, Principal, TokenBook, admin_settings, plan_limit_change, visible
from costguard.config import AdminConfig
from costguard.guard import Guard
from costguard.model import Period, Unit
from costguard.runkeys import RunKeys

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["TOKEN_ENV", "build_server", "serve_stdio"]

# The name of the environment variable, not a secret.
TOKEN_ENV = "COSTGUARD_MCP_TOKEN"  # noqa: S105
_MISSING = 'the MCP server needs the MCP SDK: pip install "costguard-ai[mcp]"'

Label = Annotated[str | None, Field(default=None, min_length=1, max_length=256)]
ScopeArg = Annotated[
    dict[str, str] | None,
    Field(default=None, description='Label name to value, e.g. {"feature": "support_agent"}; omit for everything.'),
]


def build_server(
    guard: Guard,
    *,
    admin: AdminConfig | Mapping[str, Any] | None = None,
    token: str | None = None,
) -> MCPServer:
    """An MCP server with the five costguard tools; `token` (default `$COSTGUARD_MCP_TOKEN`) unlocks writes."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(_MISSING) from exc

    settings = admin_settings(guard, admin)
    tokens = TokenBook(settings.tokens)
    presented = os.environ.get(TOKEN_ENV) if token is None else token
    principal = tokens.lookup(presented) if presented else None
    tenant = principal.tenant if principal is not None else None

    def writer(action: str, role: Literal["operator", "admin"] = "admin") -> Principal:
        if not presented:
            raise ToolError(f"{action} needs an admin token: set {TOKEN_ENV} in the MCP server's environment")
        if principal is None:
            raise ToolError(f"{TOKEN_ENV} is not one of the config's admin.tokens; {action} is refused")
        if not principal.allows(role):
            raise ToolError(f"{TOKEN_ENV} names the {principal.role} token {principal.name!r}; {action} needs {role}")
        return principal

    def in_scope(who: Principal, scope: dict[str, str], action: str) -> None:
        try:
            who.require_scope(scope, action)
            guard.require_known_labels(scope, "a kill switch")
        except (AccessDenied, ValueError) as exc:
            raise ToolError(str(exc)) from None

    def sees(labels: Mapping[str, str]) -> bool:
        return visible(labels, tenant)

    server: MCPServer = MCPServer(
        "costguard",
        instructions=(
            "costguard guards paid calls (LLM completions and other metered APIs) with budget ceilings. "
            "Read spend with costguard_budget_status and where it is heading with costguard_budget_forecast; "
            "stop guarded calls in an emergency with costguard_killswitch_activate (a reason is required)."
        ),
        log_level="WARNING",
    )

    @server.tool(name="costguard_budget_status")
    def budget_status(feature: Label = None, customer: Label = None) -> dict[str, Any]:
        """Spend against every ceiling in its current period (USD rows: spent_usd, limit_usd, ratio;
        reserved_usd: in flight, counted in spent_usd; leased_usd: the part of it slices hold) and the
        active kill switches. Filter by feature or customer."""
        data = guard.status(feature=feature, customer=customer).to_dict()
        data["ceilings"] = [row for row in data["ceilings"] if sees(row["labels"])]
        data["killswitches"] = [s for s in data["killswitches"] if sees(s["scope"])]
        return data

    @server.tool(name="costguard_budget_forecast")
    def budget_forecast(feature: Label = None, customer: Label = None) -> dict[str, Any]:
        """Per USD ceiling: spend so far, projected spend at the period's end, whether it stays under the
        limit (on_track), when it runs out (depletion_at) and how much history that rests on (confidence)."""
        data = guard.forecast(feature=feature, customer=customer).to_dict()
        data["ceilings"] = [row for row in data["ceilings"] if sees(row["labels"])]
        return data

    @server.tool(name="costguard_killswitch_activate")
    def killswitch_activate(
        reason: Annotated[str, Field(min_length=1, max_length=2000, description="Why; kept in the audit log.")],
        scope: ScopeArg = None,
    ) -> dict[str, Any]:
        """Stop every guarded call in `scope` now (omit scope for everything). Needs an admin token."""
        who = writer("activating the kill switch")
        if not reason.strip():
            raise ToolError("a reason is required to activate the kill switch")
        wanted = dict(scope or {})
        in_scope(who, wanted, "activate a kill switch")
        actor = f"mcp:{who.name}"
        changed = guard.killswitch.activate(reason=reason, actor=actor, scope=wanted or None)
        # As POST /v1/killswitch/activate: who turned it on — this token, or whoever did when it already was on.
        by = actor if changed else guard.killswitch.activated_by(wanted or None) or actor
        return {"scope": wanted, "active": True, "changed": changed, "actor": actor, "activated_by": by}

    @server.tool(name="costguard_killswitch_deactivate")
    def killswitch_deactivate(
        reason: Annotated[
            str, Field(min_length=1, max_length=2000, description="Why calls may run again; kept in the audit log.")
        ],
        scope: ScopeArg = None,
    ) -> dict[str, Any]:
        """Let guarded calls in `scope` run again (omit scope for the global switch). Needs an admin token
        and a reason."""
        if not reason.strip():
            raise ToolError("a reason is required to deactivate the kill switch (it goes in the audit log)")
        who = writer("deactivating the kill switch")
        wanted = dict(scope or {})
        in_scope(who, wanted, "deactivate a kill switch")
        actor = f"mcp:{who.name}"
        changed = guard.killswitch.deactivate(actor=actor, scope=wanted or None, reason=reason)
        return {"scope": wanted, "active": False, "changed": changed, "actor": actor}

    @server.tool(name="costguard_killswitch_status")
    def killswitch_status(
        history: Annotated[int, Field(ge=0, le=200, description="Past changes to list.")] = 10,
    ) -> dict[str, Any]:
        """Whether a kill switch stops every guarded call (active: the global switch; with a tenant's token
        also one on that customer or tenant), the active switches, and the latest changes, newest first."""
        status = guard.killswitch.status(history=max(1, history if tenant is None else 200))
        data = status.to_dict()
        return {
            "active": status.stops(tenant),
            "switches": [s for s in data["switches"] if sees(s["scope"])],
            "history": [r for r in data["history"] if sees(r["labels"])][:history],
        }

    keys = RunKeys(guard)

    @server.tool(name="costguard_key_issue")
    def key_issue(
        labels: Annotated[dict[str, str], Field(description='The labels of its calls, e.g. {"run": "r-42"}.')],
        caps: Annotated[
            dict[str, float] | None, Field(default=None, description='Caps on those labels, e.g. {"total_usd": 2}.')
        ] = None,
        ttl_s: Annotated[float | None, Field(default=None, gt=0, description="Seconds the key is valid.")] = None,
        upstreams: Annotated[
            list[str] | None, Field(default=None, description="Proxy upstreams it may use (omit: all).")
        ] = None,
    ) -> dict[str, Any]:
        """Mint a capped run key for a sub-agent's run: it uses the key as its API key and costguard proxy as its
        base URL. The key is in this answer only (the store keeps a hash). Needs an operator token."""
        who = writer("issuing a run key", "operator")

        def judged(scope: Mapping[str, str], period: Period, unit: Unit, amount: int) -> object:
            # Each cap is a limit change, judged as the admin API judges one (role, tenant, max_limit_usd).
            return plan_limit_change(guard, who, scope, period, unit, amount, settings.max_limit_usd)

        try:
            who.require_scope(labels, "issue a run key")
            issued = keys.issue(
                labels, caps or {}, ttl_s=ttl_s, upstreams=upstreams or (), actor=f"mcp:{who.name}", check=judged
            )
        except (AccessDenied, ValueError) as exc:
            raise ToolError(str(exc)) from None
        return issued.to_dict()

    @server.tool(name="costguard_key_revoke")
    def key_revoke(key_id: Annotated[str, Field(min_length=1, max_length=64)]) -> dict[str, Any]:
        """Revoke a run key: every proxy refuses it within its control refresh. Needs an operator token."""
        who = writer("revoking a run key", "operator")
        if not any(k.id == key_id and sees(dict(k.labels)) for k in keys.list()):
            raise ToolError(f"no run key {key_id!r}")
        state = keys.revoke(key_id, actor=f"mcp:{who.name}")
        assert state is not None
        return {"id": key_id, "revoked": True}

    return server


def serve_stdio(
    guard: Guard,
    *,
    admin: AdminConfig | Mapping[str, Any] | None = None,
    token: str | None = None,
) -> None:
    """Run the MCP server on stdin/stdout until the client closes it."""
    build_server(guard, admin=admin, token=token).run("stdio")
