"""Test helpers: building guards tersely and stores that can be switched off."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from costguard import Ceiling, FeatureSettings, Guard, Limit, Period, StoreUnavailable, Unit
from costguard.engine import CommitOutcome, ReserveOutcome, ReservePlan
from costguard.events import AuditRecord
from costguard.model import make_match
from costguard.stores import Control, MemoryStore
from costguard.testing import FakeClock, RecordingNotifier

START = "2026-05-12T10:00:00Z"


def usd_ceiling(match: Mapping[str, str], enforcement: str = "hard", **limits: float) -> Ceiling:
    """`usd_ceiling({"feature": "f"}, month=1.0, day=0.5)`."""
    return Ceiling(
        make_match(match),
        tuple(Limit(Period(p), Unit.USD, round(v * 1_000_000)) for p, v in limits.items()),
        enforcement=enforcement,  # type: ignore[arg-type]
    )


def make_guard(
    *ceilings: Ceiling,
    store: Any = "memory://",
    features: Mapping[str, FeatureSettings] | None = None,
    clock: FakeClock | None = None,
    notifier: RecordingNotifier | None = None,
    **options: Any,
) -> Guard:
    options.setdefault("notifiers", [notifier] if notifier else [])
    return Guard(store, ceilings=ceilings, features=features, clock=clock or FakeClock(START), **options)


class FlakyStore(MemoryStore):
    """A memory store that fails every call with StoreUnavailable while `down` is set."""

    remote = True  # stands in for a server: the guard bounds its calls by the deadline and asks again

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("store is down (test)")

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        self._check()
        return super().reserve(plan, record)

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        self._check()
        return super().settle(reservation_id, actual, at, record)

    def control(self) -> Control:
        self._check()
        return super().control()

    def totals(self, keys: Sequence[str]) -> list[int]:
        self._check()
        return super().totals(keys)

    def cache_get(self, key: str, now: float) -> bytes | None:
        self._check()
        return super().cache_get(key, now)


class SwitchableRedis:
    """A Redis store whose server can be cut off: `down = True` and every command fails as a refused
    connection does, through the real client, the store's error boundary and its spool (fakeredis behind
    a loopback port nothing listens on: nothing leaves the process). The circuit breaker is off
    (`breaker_s=0`): it would keep failing calls for a second of real time after the server is back."""

    def __init__(self) -> None:
        import fakeredis

        from costguard.stores.redis import RedisStore

        self.server = fakeredis.FakeServer()
        self.store = RedisStore(
            f"redis://127.0.0.1:1/0?namespace=t{uuid.uuid4().hex[:10]}&breaker_s=0",
            client=fakeredis.FakeRedis(server=self.server),
            async_client_factory=lambda: fakeredis.FakeAsyncRedis(server=self.server),
        )

    @property
    def down(self) -> bool:
        """Whether the server refuses connections."""
        return not self.server.connected

    @down.setter
    def down(self, value: bool) -> None:
        self.server.connected = not value
