"""The store's small key-value cache as fallbacks and learned estimates use it: read now, write later.

A read that fails is reported (once a minute) and answers "nothing cached"; writes go to the
background worker and never hold up a call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from costguard.errors import StoreError
from costguard.reporting import Reporter
from costguard.steps import Io, Steps
from costguard.stores.base import Store

__all__ = ["StoreCache"]


@dataclass(eq=False, repr=False)
class StoreCache:
    """`read` (steps, so sync and async callers share it) and `write_later` on a guard's store."""

    store: Store
    reporter: Reporter
    clock: Callable[[], float]

    def read(self, key: str) -> Steps[bytes | None]:
        """Steps: the value under `key`, or None when there is none, it expired, or the store failed."""
        now = self.clock()
        try:
            value: bytes | None = yield Io(self.store.cache_get, self.store.acache_get, (key, now))
        except StoreError as exc:
            self.reporter.store_error(exc, "cache read")
            return None
        return value

    def write_later(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` under `key` for `ttl_s` seconds, from the background worker."""
        expires = self.clock() + ttl_s

        def write() -> None:
            try:
                self.store.cache_set(key, value, expires)
            except StoreError as exc:
                self.reporter.store_error(exc, "cache write")

        self.reporter.later(write)
