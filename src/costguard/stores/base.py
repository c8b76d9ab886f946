"""The store protocol: the few atomic operations a backend carries out for the guard."""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from costguard.engine import CommitOutcome, CounterId, CounterOp, LimitOverride, ReserveOutcome, ReservePlan
from costguard.errors import StoreError
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Period, Unit

__all__ = [
    "Control",
    "CounterRow",
    "KillSwitchState",
    "RunKeyState",
    "Store",
    "killswitch_entry",
    "override_entry",
    "redacted",
    "run_key_entry",
]

_SECRET_QUERY = re.compile(r"(?i)^(password|passwd|pwd|pass|secret|token|access_token|api_key|sslpassword)$")


def redacted(url: str) -> str:
    """`url` for messages and reprs: its password (and secret-looking query values) masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a malformed netloc: show only the scheme
        return url.split("://", 1)[0] + "://***"
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=(f"{parts.username}:***@" if parts.username else ":***@") + host)
    if parts.query:
        query = [(k, "***" if _SECRET_QUERY.match(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


@dataclass(frozen=True)
class KillSwitchState:
    """An active kill switch: its scope (empty = global), why, who and since when."""

    scope: tuple[tuple[str, str], ...]
    reason: str
    actor: str | None
    since: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (`since` as ISO 8601 UTC)."""
        since = datetime.fromtimestamp(self.since, timezone.utc).isoformat()
        return {"scope": dict(self.scope), "reason": self.reason, "actor": self.actor, "since": since}


@dataclass(frozen=True)
class RunKeyState:
    """A run key as the store keeps it: its id, the sha256 of the key (never the key), the labels its
    calls carry, the upstreams it may use (empty: all), and when it expires or was revoked."""

    id: str
    key_hash: str
    labels: tuple[tuple[str, str], ...]
    upstreams: tuple[str, ...] = ()
    caps: tuple[tuple[str, float], ...] = ()
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    actor: str | None = None

    def __repr__(self) -> str:  # the hash is not the key, but no need to print it either
        return f"RunKeyState(id={self.id!r}, labels={dict(self.labels)!r}, revoked_at={self.revoked_at!r})"


@dataclass(frozen=True)
class Control:
    """Operator state every process follows: active kill switches, limit overrides and run keys."""

    killswitches: tuple[KillSwitchState, ...] = ()
    overrides: tuple[LimitOverride, ...] = ()
    keys: tuple[RunKeyState, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> Control:
        """Control state from stored (kind, JSON data) entries, kind `killswitch` or `override`."""
        switches: list[KillSwitchState] = []
        overrides: list[LimitOverride] = []
        keys: list[RunKeyState] = []
        for kind, data in entries:
            if kind == "key":
                keys.append(
                    RunKeyState(
                        str(data["id"]),
                        str(data["key_hash"]),
                        tuple((str(a), str(b)) for a, b in data["labels"]),
                        tuple(str(u) for u in data.get("upstreams", ())),
                        tuple((str(a), float(b)) for a, b in data.get("caps", ())),
                        float(data.get("created_at", 0.0)),
                        None if data.get("expires_at") is None else float(data["expires_at"]),
                        None if data.get("revoked_at") is None else float(data["revoked_at"]),
                        data.get("actor"),
                    )
                )
                continue
            if kind not in ("killswitch", "override"):
                continue  # an entry of a later version: this one doesn't know it
            scope = tuple((str(a), str(b)) for a, b in data["scope"])
            if kind == "killswitch":
                switches.append(KillSwitchState(scope, data["reason"], data["actor"], data["since"]))
            elif kind == "override":
                overrides.append(
                    LimitOverride(
                        scope,
                        Period(data["period"]),
                        Unit(data["unit"]),
                        int(data["amount"]),
                        data["reason"],
                        data["actor"],
                        data["at"],
                    )
                )
        return cls(tuple(switches), tuple(overrides), tuple(keys))


def killswitch_entry(state: KillSwitchState) -> dict[str, Any]:
    """A kill switch as a store keeps it: the JSON data `Control.from_entries` reads back as `killswitch`."""
    return {
        "scope": [list(item) for item in state.scope],
        "reason": state.reason,
        "actor": state.actor,
        "since": state.since,
    }


def override_entry(override: LimitOverride) -> dict[str, Any]:
    """A limit override as a store keeps it: the JSON data `Control.from_entries` reads back as `override`."""
    return {
        "scope": [list(item) for item in override.scope],
        "period": override.period.value,
        "unit": override.unit.value,
        "amount": override.amount,
        "reason": override.reason,
        "actor": override.actor,
        "at": override.at,
    }


def run_key_entry(state: RunKeyState) -> dict[str, Any]:
    """A run key as a store keeps it: the JSON data `Control.from_entries` reads back as `key`."""
    return {
        "id": state.id,
        "key_hash": state.key_hash,
        "labels": [list(item) for item in state.labels],
        "upstreams": list(state.upstreams),
        "caps": [list(item) for item in state.caps],
        "created_at": state.created_at,
        "expires_at": state.expires_at,
        "revoked_at": state.revoked_at,
        "actor": state.actor,
        # Read by nothing here: a process of an earlier version reads every control entry's scope before
        # its kind, and would fail every control read once a key is issued.
        "scope": [],
    }


@dataclass(frozen=True)
class CounterRow(CounterId):
    """A stored counter as status reports it: `reserved` is everything in flight, the `leased` part of it
    held by `holders` live slices (`engine.leases`)."""

    committed: int
    reserved: int
    leased: int = 0
    holders: int = 0


class Store(ABC):
    """One class per backend; every store passes `tests/stores/test_contract.py`.

    Sync methods are the contract; the async ones run them in a worker thread unless a backend
    has a native async client, so async callers never block their event loop on store I/O.
    """

    url: str = ""
    # Whether calls can be slow, busy or lost on the way (a server): the guard then bounds them by
    # its deadline and asks again; an in-process store answers at once or not at all.
    remote: bool = True
    # Whether hot counters are worth leasing (`costguard.leasing`): a server every process shares.
    # Memory and SQLite answer in-process, where a slice would save nothing.
    leases: bool = True
    # When this process last had an answer from the store (monotonic): a call that ran out of its
    # deadline while the store answered others met an overloaded store, not an outage (see
    # `answered_since`). Set at each store's one error boundary.
    answered_at: float = float("-inf")

    def answered_since(self, moment: float) -> bool:
        """Whether the store answered this process at or after `moment` (monotonic time)."""
        return self.answered_at >= moment

    def ping(self, timeout_s: float) -> bool:
        """Whether the server answers a trivial request within `timeout_s`, on a connection that queues
        behind no hot row (an overloaded store does, a frozen or unreachable one doesn't); an answer is
        noted in `answered_at`. Stores that can't tell say False."""
        return False

    async def aping(self, timeout_s: float) -> bool:
        """`ping`, off the event loop."""
        return await asyncio.to_thread(self.ping, timeout_s)

    @property
    def identity(self) -> str:
        """What names this store's data across processes (the spool is kept per identity); empty for a
        store that lives and dies with its process, which needs no spool."""
        return ""

    @abstractmethod
    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        """Atomically check every hard counter of `plan` and add to all or none; write `record`."""

    @abstractmethod
    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        """Commit (`actual` per unit) or release (None) a reservation, once: a repeat is a no-op."""

    def settle_many(
        self, items: Sequence[tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]]
    ) -> list[CommitOutcome | StoreError]:
        """Settle several reservations (`commit: background` batches); per item an outcome, or the
        `StoreError` that stopped it. Each item is as idempotent as `settle`, so a batch can be
        retried whole. Backends with pipelining (Redis) send the batch in one round trip."""
        out: list[CommitOutcome | StoreError] = []
        for index, (reservation_id, actual, at, record) in enumerate(items):
            try:
                out.append(self.settle(reservation_id, actual, at, record))
            except StoreError as exc:  # the store is down: the rest would fail the same way
                out.extend([exc] * (len(items) - index))
                break
        return out

    @abstractmethod
    def totals(self, keys: Sequence[str]) -> list[int]:
        """committed + reserved of each counter key (0 for a counter not yet written)."""

    @abstractmethod
    def start_counter(self, op: CounterOp, committed: int, at: float) -> bool:
        """Create `op`'s counter with `committed` already spent, atomically, unless it exists (then nothing
        changes: what it counts is never counted twice); whether it was created. `at`: the caller's now."""

    def spent_since(self, scope: Mapping[str, str], unit: Unit, since: float | None) -> int | None:
        """What the calls whose labels include `scope` committed in `unit` since `since` (None: ever), summed
        from the audit log; None when this store can't say (it keeps no audit log to sum by labels)."""
        return None

    @abstractmethod
    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        """Every counter in the given current bucket of each period."""

    @abstractmethod
    def control(self) -> Control:
        """Active kill switches and limit overrides, in one read."""

    @abstractmethod
    def set_killswitch(self, state: KillSwitchState, active: bool, record: AuditRecord) -> bool:
        """Turn a kill switch on or off; returns whether anything changed."""

    @abstractmethod
    def set_override(self, override: LimitOverride, clear: bool, record: AuditRecord) -> None:
        """Store (or with `clear`, remove) a limit override."""

    def set_run_key(self, state: RunKeyState, record: AuditRecord, remove: bool = False) -> None:
        """Store a run key (issued, or revoked: the same id written again), or with `remove` delete it (purged),
        with its audit record, together."""
        raise NotImplementedError(f"{type(self).__name__} does not keep run keys")

    @abstractmethod
    def append(self, records: Sequence[AuditRecord]) -> None:
        """Append records to the audit log."""

    @abstractmethod
    def audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Audit records matching `query`, newest first."""

    @abstractmethod
    def cache_get(self, key: str, now: float) -> bytes | None:
        """A cached value that has not expired."""

    @abstractmethod
    def cache_set(self, key: str, value: bytes, expires_at: float) -> None:
        """Cache a value until `expires_at`."""

    @abstractmethod
    def purge(self, now: float) -> int:
        """Drop expired counters, settled reservations and cache entries; returns rows removed."""

    def close(self) -> None:
        """Release connections."""

    async def areserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        """Async `reserve`."""
        return await asyncio.to_thread(self.reserve, plan, record)

    async def asettle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        """Async `settle`."""
        return await asyncio.to_thread(self.settle, reservation_id, actual, at, record)

    async def acontrol(self) -> Control:
        """Async `control`."""
        return await asyncio.to_thread(self.control)

    async def acache_get(self, key: str, now: float) -> bytes | None:
        """Async `cache_get`."""
        return await asyncio.to_thread(self.cache_get, key, now)

    async def acache_set(self, key: str, value: bytes, expires_at: float) -> None:
        """Async `cache_set`."""
        await asyncio.to_thread(self.cache_set, key, value, expires_at)
