"""Who may do what: bearer tokens, roles, tenant scoping, and the raise-versus-lower rule for limits.

Pure decisions over the config's `admin:` block and the guard's public state, shared by the HTTP API
and the MCP server; nothing here imports a web framework.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from costguard import engine
from costguard.config import AdminConfig, AdminToken
from costguard.errors import ConfigError
from costguard.guard import Guard
from costguard.model import Period, Unit, micros_to_usd

__all__ = [
    "ROLES",
    "AccessDenied",
    "LimitChange",
    "Principal",
    "Role",
    "TokenBook",
    "admin_settings",
    "current_limit",
    "plan_limit_change",
    "touched_limits",
    "visible",
]

Role = Literal["read", "operator", "admin"]
ROLES: tuple[Role, ...] = ("read", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}


class AccessDenied(Exception):
    """The token is valid but may not do this (HTTP 403); the message says why and what would."""

    def __init__(self, message: str, code: str = "forbidden") -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's name (never the token), its role and its tenant, if any."""

    name: str
    role: Role
    tenant: str | None = None

    @property
    def actor(self) -> str:
        """What the audit log records as the actor."""
        return f"api:{self.name}"

    def allows(self, role: Role) -> bool:
        """Whether this principal's role is at least `role`."""
        return _RANK[self.role] >= _RANK[role]

    def require(self, role: Role, action: str) -> None:
        """Raise `AccessDenied` unless the role is at least `role`."""
        if not self.allows(role):
            raise AccessDenied(f"the {self.role} role may not {action}; it needs a token with the {role} role")

    def sees(self, labels: Mapping[str, str]) -> bool:
        """Whether data with these labels is this principal's to see (always, without a tenant)."""
        return visible(labels, self.tenant)

    def require_scope(self, scope: Mapping[str, str], action: str) -> None:
        """A tenant's token may only change scopes that name its tenant as `customer` or `tenant`."""
        if self.tenant is not None and not visible(scope, self.tenant):
            raise AccessDenied(
                f"the token {self.name!r} is limited to tenant {self.tenant!r}: to {action}, the scope must "
                f"include customer={self.tenant} or tenant={self.tenant}"
            )


def visible(labels: Mapping[str, str] | Iterable[tuple[str, str]], tenant: str | None) -> bool:
    """True without a tenant; else only when the labels bind `customer` or `tenant` to it."""
    if tenant is None:
        return True
    items = dict(labels.items() if isinstance(labels, Mapping) else labels)
    return items.get("customer") == tenant or items.get("tenant") == tenant


class TokenBook:
    """The configured bearer tokens; lookups compare every token in constant time."""

    def __init__(self, tokens: Sequence[AdminToken]) -> None:
        names = [t.name for t in tokens]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"token names must be unique (the audit names them): {duplicates}", path="admin.tokens")
        secrets = [t.token.get_secret_value() for t in tokens]
        if len(set(secrets)) != len(secrets):
            raise ConfigError("two tokens have the same secret; give each caller its own", path="admin.tokens")
        self._entries = [
            (secret.encode("utf-8"), Principal(t.name, t.role, t.tenant))
            for t, secret in zip(tokens, secrets, strict=True)
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str | bytes | None) -> Principal | None:
        """The principal whose token this is, or None. Any text is safe: it is compared as bytes."""
        if presented is None:
            return None
        raw = presented if isinstance(presented, bytes) else presented.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        # Compare against every entry so the time taken doesn't tell which one (or whether one) matched.
        for secret, principal in self._entries:
            if hmac.compare_digest(raw, secret) and found is None:
                found = principal
        return found


def admin_settings(guard: Guard, admin: AdminConfig | Mapping[str, Any] | None) -> AdminConfig:
    """The `admin:` settings: given explicitly (a model or a mapping), else a guard's own, else none."""
    if admin is None:
        admin = getattr(guard, "admin", None)
    if admin is None:
        return AdminConfig()
    if isinstance(admin, AdminConfig):
        return admin
    return AdminConfig.model_validate(dict(admin))


def current_limit(
    guard: Guard,
    scope: Mapping[str, str],
    period: Period,
    unit: Unit,
    *,
    without_override: bool = False,
) -> int | None:
    """The limit that applies to `scope` now, read fresh from the store (None: there is none).

    With `without_override`, the limit that would apply if the run-time override of exactly this
    scope, period and unit were cleared (the config's value, or None when the override made the ceiling).
    """
    control = guard.store.control()
    key = tuple(sorted(scope.items()))
    overrides = [
        o
        for o in control.overrides
        if not (without_override and o.scope == key and o.period is period and o.unit is unit)
    ]
    ceilings = engine.apply_overrides(guard.ceilings, overrides)
    index = engine.index_overrides(overrides)
    wanted = dict(scope)
    for ceiling in ceilings:
        if ceiling.match_dict == wanted or (
            set(ceiling.match_dict) == set(wanted) and ceiling.bind(wanted) is not None
        ):
            for limit in engine.effective_limits(ceiling, wanted, index):
                if limit.period is period and limit.unit is unit:
                    return limit.amount
    return None


def touched_limits(
    guard: Guard, overrides: Sequence[engine.LimitOverride], scope: Mapping[str, str], period: Period, unit: Unit
) -> dict[str, int]:
    """Every ceiling a limit on `scope` applies to, with the limit it has there under `overrides`.

    An override on `{customer: acme}` is the limit of the ceiling whose match is exactly that, and of
    acme's instance of every wildcard ceiling on the same labels (`{customer: "*"}`): one change can
    move several ceilings, and each is judged on its own.
    """
    wanted = dict(scope)
    index = engine.index_overrides(overrides)
    out: dict[str, int] = {}
    for ceiling in engine.apply_overrides(guard.ceilings, overrides):
        if ceiling.match_dict == wanted or (
            set(ceiling.match_dict) == set(wanted) and ceiling.bind(wanted) is not None
        ):
            for limit in engine.effective_limits(ceiling, wanted, index):
                if limit.period is period and limit.unit is unit:
                    out[ceiling.id] = limit.amount
    return out


@dataclass(frozen=True)
class LimitChange:
    """A requested limit change, classified by its effect on every ceiling it touches: `raises` when
    any of them would allow more spend than now (an unlimited ceiling counts as infinitely high)."""

    old: int | None
    new: int | None
    unit: Unit
    before: Mapping[str, int] = field(default_factory=dict)
    after: Mapping[str, int] = field(default_factory=dict)

    @property
    def raised(self) -> list[tuple[str, int, int | None]]:
        """(ceiling, limit before, limit after) for each ceiling the change raises (None: no limit)."""
        return [
            (ceiling, was, self.after.get(ceiling))
            for ceiling, was in sorted(self.before.items())
            if self.after.get(ceiling) is None or self.after[ceiling] > was
        ]

    @property
    def raises(self) -> bool:
        """Whether any ceiling the change touches would allow more spend."""
        return bool(self.raised)

    def shown(self, amount: int | None) -> float | None:
        """An amount in the unit's user-facing form (USD as a float)."""
        if amount is None:
            return None
        return micros_to_usd(amount) if self.unit is Unit.USD else float(amount)


def plan_limit_change(
    guard: Guard,
    principal: Principal,
    scope: Mapping[str, str],
    period: Period,
    unit: Unit,
    amount: int | None,
    max_limit_usd: int | None,
) -> LimitChange:
    """Check a change against the caller's role, tenant and `max_limit_usd`; raise `AccessDenied` if not allowed.

    The change is judged on every ceiling it touches (see `touched_limits`): operators may lower
    limits (or add one where there was none); raising any ceiling, or clearing a limit so a higher one
    applies, needs an admin. No token may raise a USD ceiling above `max_limit_usd`.
    """
    principal.require_scope(scope, "change a limit")
    control = guard.store.control()
    key = tuple(sorted(scope.items()))
    kept = [o for o in control.overrides if not (o.scope == key and o.period is period and o.unit is unit)]
    proposed = kept if amount is None else [*kept, engine.LimitOverride(key, period, unit, amount)]
    before = touched_limits(guard, control.overrides, scope, period, unit)
    after = touched_limits(guard, proposed, scope, period, unit)
    old = current_limit(guard, scope, period, unit)
    new = amount if amount is not None else current_limit(guard, scope, period, unit, without_override=True)
    change = LimitChange(old, new, unit, before, after)
    raised = change.raised
    if raised:
        what = "; ".join(
            f"{ceiling or 'everything'}: {_describe(was, unit)} → {_describe(now, unit)}"
            for ceiling, was, now in raised
        )
        if not principal.allows("admin"):
            raise AccessDenied(
                f"the {principal.role} role may lower limits but not raise them, and this change raises "
                f"{len(raised)} ceiling{'s' if len(raised) > 1 else ''} ({what}); raising needs an admin token"
            )
        if unit is Unit.USD and max_limit_usd is not None:
            above = [(ceiling, now) for ceiling, _, now in raised if now is None or now > max_limit_usd]
            if above:
                ceiling, now = above[0]
                raise AccessDenied(
                    f"this would raise {ceiling or 'everything'} to {_describe(now, unit)}, above "
                    f"admin.max_limit_usd (${micros_to_usd(max_limit_usd):g}); change the config to go higher",
                    code="above_max_limit",
                )
    return change


def _describe(amount: int | None, unit: Unit) -> str:
    if amount is None:
        return "no limit"
    if unit is Unit.USD:
        return f"${micros_to_usd(amount):g}"
    return f"{amount} {unit.value}"
