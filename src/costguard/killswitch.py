"""The operator's kill switch: global, per feature, per customer (or any labels), with history."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from costguard.control import ControlView, blocking_switch
from costguard.events import AuditQuery, AuditRecord, Event, EventKind
from costguard.model import normalize_labels
from costguard.reporting import Reporter
from costguard.steps import Steps, arun, run
from costguard.stores.base import KillSwitchState, Store

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


def _stops(scope: Mapping[str, str], tenant: str | None) -> bool:
    if not scope:
        return True  # the global switch stops everyone's calls (exempt features aside)
    return tenant is not None and dict(scope) in ({"customer": tenant}, {"tenant": tenant})


@dataclass(frozen=True)
class KillSwitchStatus:
    """Active switches and recent activations/deactivations, newest first."""

    active: tuple[KillSwitchState, ...]
    history: tuple[AuditRecord, ...]

    @property
    def switches(self) -> tuple[KillSwitchState, ...]:
        """The active switches (the same as `active`; `to_dict()` lists them under `switches`)."""
        return self.active

    @property
    def any_active(self) -> bool:
        """Whether any switch is on."""
        return bool(self.active)

    def stops(self, tenant: str | None = None) -> bool:
        """Whether an active switch stops every guarded call of a scope: the global switch, and for a
        tenant also a switch on exactly `customer: <tenant>` or `tenant: <tenant>`."""
        return any(_stops(dict(switch.scope), tenant) for switch in self.active)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, the shape of `GET /v1/killswitch/status`: `active` (whether the global
        switch is on), `switches` (every active switch) and `history`."""
        return {
            "active": self.stops(),
            "switches": [s.to_dict() for s in self.active],
            "history": [r.to_dict() for r in self.history],
        }


@dataclass(eq=False, repr=False)
class KillSwitch:
    """`guard.killswitch`: activate, deactivate, status. Changes reach every process within `cache_ms`."""

    store: Store
    control: ControlView
    reporter: Reporter
    clock: Callable[[], float]

    def activate(self, reason: str, actor: str | None = None, scope: Scope = None) -> bool:
        """Stop every guarded call in `scope` (None = everything); returns False if it was already on."""
        return self._set(True, reason, actor, scope)

    def deactivate(self, actor: str | None = None, scope: Scope = None, reason: str = "") -> bool:
        """Let calls in `scope` run again; returns False if that switch was not on."""
        return self._set(False, reason, actor, scope)

    def activated_by(self, scope: Scope = None) -> str | None:
        """Who turned on the switch of exactly `scope` (None = everything), read from the store; None if it is off."""
        key = parse_scope(scope)
        return next((s.actor for s in self.store.control().killswitches if s.scope == key), None)

    def status(self, history: int = 20) -> KillSwitchStatus:
        """Active switches (read from the store, not the cache) and the latest changes."""
        control = self.store.control()
        records: list[AuditRecord] = []
        for decision in ("killswitch_activated", "killswitch_deactivated"):
            records.extend(self.store.audit(AuditQuery(decision=decision, limit=history)))
        records.sort(key=lambda r: (r.at, r.id or 0), reverse=True)
        return KillSwitchStatus(control.killswitches, tuple(records[:history]))

    def covering(self, labels: Mapping[str, str]) -> KillSwitchState | None:
        """The active switch that covers a request with these labels (from this process's cached view,
        read from the store only when stale); None when none does. Web integrations check it before the
        handler runs."""
        return run(self._covering(labels))

    async def acovering(self, labels: Mapping[str, str]) -> KillSwitchState | None:
        """Async `covering`: a stale view is read without blocking the event loop."""
        return await arun(self._covering(labels))

    def _covering(self, labels: Mapping[str, str]) -> Steps[KillSwitchState | None]:
        state = yield from self.control.refresh(self.clock())
        return self.control.switch_for(state, labels)

    def _set(self, active: bool, reason: str, actor: str | None, scope: Scope) -> bool:
        if active and (not isinstance(reason, str) or not reason.strip()):
            raise ValueError("a reason is required to activate the kill switch (it goes in the audit log)")
        parsed = parse_scope(scope)
        self.control.require_known_labels(dict(parsed), "a kill switch")
        now = self.clock()
        kind: EventKind = "killswitch_activated" if active else "killswitch_deactivated"
        record = AuditRecord(
            at=now,
            decision=kind,
            labels=dict(parsed),
            data={"scope": dict(parsed), "reason": reason, "actor": actor},
        )
        changed = self.store.set_killswitch(KillSwitchState(parsed, reason, actor, now), active, record)
        self.control.invalidate()
        if changed:
            self.reporter.notify(
                Event(
                    kind=kind,
                    labels=dict(parsed),
                    at=datetime.fromtimestamp(now, timezone.utc),
                    reason=reason or None,
                    actor=actor,
                )
            )
        return changed
