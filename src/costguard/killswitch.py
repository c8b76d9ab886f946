"""The operator's kill switch: global, per feature, per customer (or any labels), with history."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from costguard.events import AuditQuery, AuditRecord, Event, EventKind
from costguard.model import normalize_labels
from costguard.stores.base import KillSwitchState

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["KillSwitch", "KillSwitchStatus", "Scope", "blocking_switch", "parse_scope"]

Scope = Mapping[str, str] | str | None


def parse_scope(scope: Scope) -> tuple[tuple[str, str], ...]:
    """`None` (global), `"feature:x"` / `"customer:acme"`, or a label mapping → canonical scope."""
    if scope is None or (isinstance(scope, str) and scope in {"", "global"}):
        return ()
    if isinstance(scope, str):
        name, sep, value = scope.partition(":")
        if not sep or not value:
            raise ValueError(
                f"kill switch scope {scope!r} is not valid; use None for global, 'feature:NAME', "
                "'customer:ID' or a mapping such as {'feature': 'support_agent'}"
            )
        scope = {name: value}
    return tuple(sorted(normalize_labels(scope, max_length=10_000).items()))


def blocking_switch(
    switches: Collection[KillSwitchState], labels: Mapping[str, str], exempt_features: Collection[str]
) -> KillSwitchState | None:
    """The active switch that covers a call, if any; exempt features only escape switches not naming them."""
    feature = labels.get("feature")
    for switch in switches:
        if not all(labels.get(name) == value for name, value in switch.scope):
            continue
        names_feature = any(name == "feature" for name, _ in switch.scope)
        if feature in exempt_features and not names_feature:
            continue
        return switch
    return None


@dataclass(frozen=True)
class KillSwitchStatus:
    """Active switches and recent activations/deactivations, newest first."""

    active: tuple[KillSwitchState, ...]
    history: tuple[AuditRecord, ...]

    @property
    def any_active(self) -> bool:
        """Whether any switch is on."""
        return bool(self.active)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "active": [
                {
                    "scope": dict(s.scope),
                    "reason": s.reason,
                    "actor": s.actor,
                    "since": datetime.fromtimestamp(s.since, timezone.utc).isoformat(),
                }
                for s in self.active
            ],
            "history": [r.to_dict() for r in self.history],
        }


class KillSwitch:
    """`guard.killswitch`: activate, deactivate, status. Changes reach every process within `cache_ms`."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def activate(self, reason: str, actor: str | None = None, scope: Scope = None) -> bool:
        """Stop every guarded call in `scope` (None = everything); returns False if it was already on."""
        return self._set(True, reason, actor, scope)

    def deactivate(self, actor: str | None = None, scope: Scope = None, reason: str = "") -> bool:
        """Let calls in `scope` run again; returns False if that switch was not on."""
        return self._set(False, reason, actor, scope)

    def status(self, history: int = 20) -> KillSwitchStatus:
        """Active switches (read from the store, not the cache) and the latest changes."""
        guard = self._guard
        control = guard.store.control()
        records: list[AuditRecord] = []
        for decision in ("killswitch_activated", "killswitch_deactivated"):
            records.extend(guard.store.audit(AuditQuery(decision=decision, limit=history)))
        records.sort(key=lambda r: (r.at, r.id or 0), reverse=True)
        return KillSwitchStatus(control.killswitches, tuple(records[:history]))

    def _set(self, active: bool, reason: str, actor: str | None, scope: Scope) -> bool:
        if active and (not isinstance(reason, str) or not reason.strip()):
            raise ValueError("a reason is required to activate the kill switch (it goes in the audit log)")
        guard = self._guard
        parsed = parse_scope(scope)
        guard.require_known_labels(dict(parsed), "a kill switch")
        now = guard.clock()
        kind: EventKind = "killswitch_activated" if active else "killswitch_deactivated"
        record = AuditRecord(
            at=now,
            decision=kind,
            labels=dict(parsed),
            data={"scope": dict(parsed), "reason": reason, "actor": actor},
        )
        changed = guard.store.set_killswitch(KillSwitchState(parsed, reason, actor, now), active, record)
        guard._invalidate_control()
        if changed:
            guard._notify(
                Event(
                    kind=kind,
                    labels=dict(parsed),
                    at=datetime.fromtimestamp(now, timezone.utc),
                    reason=reason or None,
                    actor=actor,
                )
            )
        return changed
