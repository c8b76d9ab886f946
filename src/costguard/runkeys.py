"""Run keys: a random API key per agent run, bound to labels, caps, upstreams and an expiry.

A key's caps are run-time limits on the scope of its labels (`run=r-42` with `total_usd: 5` is the
limit `guard.set_limit({"run": "r-42"}, period="total", usd=5)`), so `costguard proxy` enforces them
through the same reservation as every other ceiling. The key itself lives in the store's control state,
hashed: every proxy sees an issue or a revoke at its next control refresh (`killswitch.cache_ms`).
The key is shown once, when it is issued; only its sha256 is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from costguard._config.schema import Limits as CapsModel
from costguard.engine import LimitOverride
from costguard.events import AuditRecord
from costguard.guard import Guard
from costguard.model import Period, Unit, micros_to_usd, normalize_labels
from costguard.stores.base import Control, RunKeyState

__all__ = ["DEFAULT_RETENTION_S", "KEY_PREFIX", "IssuedKey", "KeyCheck", "KeyIndex", "RunKeys", "hash_key", "key_view"]

KEY_PREFIX = "cgk-"
DEFAULT_RETENTION_S = 7 * 86400.0  # how long `purge` keeps a key that stopped working (it is still listed)
_ID_LENGTH = 12
_KEY_PATTERN = re.compile(r"cgk-([0-9a-f]{12})-[A-Za-z0-9_-]{20,100}")


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256 (keys are 256 random bits: no salt or stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, repr=False)
class IssuedKey:
    """A key just issued: `key` is shown this once and never stored."""

    id: str
    key: str
    state: RunKeyState

    def __repr__(self) -> str:
        return f"IssuedKey(id={self.id!r}, key='***')"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, the key included (answer it to whoever asked for it, log it nowhere)."""
        return {**key_view(self.state, None), "key": self.key}


def key_view(state: RunKeyState, now: float | None) -> dict[str, Any]:
    """A key as the admin API and the CLI list it: everything but the key and its hash."""
    status = "active"
    if state.revoked_at is not None:
        status = "revoked"
    elif now is not None and state.expires_at is not None and now >= state.expires_at:
        status = "expired"
    return {
        "id": state.id,
        "labels": dict(state.labels),
        "caps": dict(state.caps),
        "upstreams": list(state.upstreams),
        "created_at": state.created_at,
        "expires_at": state.expires_at,
        "revoked_at": state.revoked_at,
        "actor": state.actor,
        "status": status,
    }


@dataclass(frozen=True)
class KeyCheck:
    """What a presented key is: the key's state when it may be used, else why not."""

    state: RunKeyState | None
    problem: Literal["missing", "unknown", "revoked", "expired"] | None
    # A revoked or expired key that was presented whole (its secret matched): who it was issued to.
    refused: RunKeyState | None = None


class KeyIndex:
    """The keys of one control reading, by id (rebuilt when the reading changes)."""

    def __init__(self) -> None:
        self._control: Control | None = None
        self._by_id: dict[str, RunKeyState] = {}

    def check(self, control: Control | None, presented: str | None, now: float) -> KeyCheck:
        """Look a presented key up: unknown, revoked or expired keys are refused (compared in constant time)."""
        if not presented:
            return KeyCheck(None, "missing")
        match = _KEY_PATTERN.fullmatch(presented)
        if match is None or control is None:
            return KeyCheck(None, "unknown")
        if control is not self._control:
            self._by_id = {key.id: key for key in control.keys}
            self._control = control
        state = self._by_id.get(match.group(1))
        if state is None or not hmac.compare_digest(state.key_hash, hash_key(presented)):
            return KeyCheck(None, "unknown")
        if state.revoked_at is not None:
            return KeyCheck(None, "revoked", state)
        if state.expires_at is not None and now >= state.expires_at:
            return KeyCheck(None, "expired", state)
        return KeyCheck(state, None)


class RunKeys:
    """Issue, list and revoke the run keys of one guard's store."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def issue(
        self,
        labels: Mapping[str, object],
        caps: Mapping[str, object] | None = None,
        *,
        ttl_s: float | None = None,
        upstreams: Collection[str] = (),
        actor: str | None = None,
        check: Callable[[Mapping[str, str], Period, Unit, int], object] | None = None,
    ) -> IssuedKey:
        """A new key for calls labelled `labels`, its `caps` set as run-time limits on that scope.

        `check(scope, period, unit, amount)` judges each cap before any is set (the admin API and the MCP
        server pass their caller's limit policy: a cap is a limit change like any other, and raising a
        ceiling that scope already has needs an admin); it raises to refuse the key."""
        bound = normalize_labels(labels, max_length=self.guard.max_label_length)
        if not bound:
            raise ValueError("a run key needs at least one label (e.g. run: r-42): its caps are limits on that scope")
        if "*" in bound.values():
            raise ValueError("a run key's labels are values, not '*'")
        self.guard.require_known_labels(bound, "a run key")
        try:
            limits = CapsModel.model_validate(dict(caps or {})).limits()
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"caps: {problems}") from None
        if ttl_s is not None and (isinstance(ttl_s, bool) or not math.isfinite(ttl_s) or ttl_s <= 0):
            raise ValueError(f"ttl_s must be a number of seconds above 0, got {ttl_s!r}")
        known = self.guard.proxy_upstreams
        for name in upstreams:
            if not isinstance(name, str) or not name:
                raise ValueError(f"upstreams must be names, got {name!r}")
            if known is not None and name not in known:
                # A typo would make a key no proxy forwards for: the agent would only ever get 403s.
                raise ValueError(f"upstreams: {name!r} is not one of the proxy's upstreams ({', '.join(known)})")
        if check is not None:
            for limit in limits:
                check(bound, limit.period, limit.unit, limit.amount)
        key_id = secrets.token_hex(_ID_LENGTH // 2)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        shown: list[tuple[str, float]] = []
        for limit in limits:
            amount = micros_to_usd(limit.amount) if limit.unit is Unit.USD else limit.amount
            self.guard.set_limit(
                bound,
                period=limit.period,
                **{limit.unit.value: amount},  # type: ignore[arg-type]
                reason=f"run key {key_id}",
                actor=actor,
                notify=False,  # one key_issued line says it; an alert per key and cap would be noise
            )
            shown.append((_cap_name(limit.period.value, limit.unit), float(amount)))
        now = self.guard.clock()
        state = RunKeyState(
            key_id,
            hash_key(key),
            tuple(sorted(bound.items())),
            tuple(upstreams),
            tuple(shown),
            now,
            None if ttl_s is None else now + ttl_s,
            None,
            actor,
        )
        self._write(state, "key_issued", now)
        return IssuedKey(key_id, key, state)

    def list(self) -> list[RunKeyState]:
        """Every key the store keeps (active, expired and revoked), read fresh."""
        return sorted(self.guard.store.control().keys, key=lambda k: k.created_at)

    def revoke(self, key_id: str, actor: str | None = None) -> RunKeyState | None:
        """Revoke a key at once (every proxy refuses it within its control refresh); None for an unknown id.
        A key already revoked stays as it was."""
        for state in self.guard.store.control().keys:
            if state.id == key_id:
                if state.revoked_at is not None:
                    return state
                now = self.guard.clock()
                revoked = RunKeyState(**{**state.__dict__, "revoked_at": now, "actor": actor or state.actor})
                self._write(revoked, "key_revoked", now)
                return revoked
        return None

    def purge(
        self,
        older_than_s: float = DEFAULT_RETENTION_S,
        actor: str | None = None,
        only: Callable[[RunKeyState], bool] | None = None,
    ) -> tuple[RunKeyState, ...]:
        """Delete the keys revoked or expired more than `older_than_s` ago, with the caps they set (the limits
        whose reason is `run key <id>`, unless another key still needs that scope's limits); each purge is
        audited (`key_purged`). Their counters stay: what the runs spent is still counted and shown. `only`
        narrows it (a tenant's operator purges the keys it sees)."""
        if isinstance(older_than_s, bool) or not math.isfinite(older_than_s) or older_than_s < 0:
            raise ValueError(f"older_than_s must be a number of seconds, 0 or more, got {older_than_s!r}")
        control = self.guard.store.control()
        now = self.guard.clock()
        ended = [
            k for k in control.keys if (_ended_at(k) or math.inf) <= now - older_than_s and (only is None or only(k))
        ]
        gone = {k.id for k in ended}
        kept_scopes = {k.labels for k in control.keys if k.id not in gone}
        for state in ended:
            if state.labels not in kept_scopes:
                for override in control.overrides:
                    if override.scope == state.labels and override.reason == f"run key {state.id}":
                        self._clear_cap(override, state, now, actor)
            data = {**{k: v for k, v in key_view(state, now).items() if k != "labels"}, "actor": actor}
            record = AuditRecord(now, "key_purged", dict(state.labels), data=data)
            self.guard.store.set_run_key(state, record, remove=True)
        self.guard.control.invalidate()
        return tuple(ended)

    def _clear_cap(self, override: LimitOverride, state: RunKeyState, now: float, actor: str | None) -> None:
        amount = micros_to_usd(override.amount) if override.unit is Unit.USD else float(override.amount)
        data = {
            "scope": dict(override.scope),
            "period": override.period.value,
            "unit": override.unit.value,
            "old": amount,
            "new": None,
            "reason": f"run key {state.id} purged",
            "actor": actor,
        }
        record = AuditRecord(now, "limit_changed", dict(override.scope), data=data)
        self.guard.store.set_override(override, True, record)

    def _write(self, state: RunKeyState, decision: Literal["key_issued", "key_revoked"], now: float) -> None:
        data = {k: v for k, v in key_view(state, now).items() if k not in ("labels", "status")}
        self.guard.store.set_run_key(state, AuditRecord(now, decision, dict(state.labels), data=data))
        self.guard.control.invalidate()


def _ended_at(state: RunKeyState) -> float | None:
    """When a key stopped working (revoked, or its ttl ran out); None while it may still be used."""
    if state.revoked_at is not None:
        return state.revoked_at if state.expires_at is None else min(state.revoked_at, state.expires_at)
    return state.expires_at


def _cap_name(period: str, unit: Unit) -> str:
    names = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly", "total": "total"}
    if unit is Unit.USD:
        return f"{names[period]}_usd"
    return f"{unit.value}_total" if period == "total" else f"{unit.value}_per_{period}"
