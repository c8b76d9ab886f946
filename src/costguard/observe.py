"""Observers: what a guard's parts tell metrics and traces, behind one attribute check on the call's path.

A guard has no observer until `Guard.observe` gives it one (`costguard.metrics.collector`,
`costguard.otel.instrument` do); until then the call path's only cost is `observer is None`. Once
set, the parts report each decision, each settle, the time each store call took, store errors and
alerts. An observer that raises is logged and never reaches the guarded call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

from costguard.decision import Decision
from costguard.errors import StoreBusy, StoreError, StoreTimeout, StoreUnavailable
from costguard.steps import Steps

__all__ = ["Fanout", "Observer", "call_outcome", "error_kind", "timed"]

log = logging.getLogger("costguard")

T = TypeVar("T")


class Observer(Protocol):
    """What a guard reports to metrics and traces (USD as floats, durations in seconds)."""

    def decided(self, decision: Decision, estimate_usd: float | None, seconds: float) -> None:
        """A guarded call was admitted or refused after `seconds` in the guard (store calls included)."""

    def settled(self, decision: Decision, estimate_usd: float, actual_usd: float | None, seconds: float) -> None:
        """An admitted call was committed at `actual_usd` (None: released) after `seconds` in the guard."""

    def store_call(self, op: str, seconds: float) -> None:
        """A store call (`reserve`, `settle`, `control`, ...) took `seconds`, retries within its deadline included."""

    def store_error(self, store: str, kind: str) -> None:
        """A store call failed: `store` is the backend (`redis`, `postgresql`, ...), `kind` what went wrong."""

    def alert(self, kind: str) -> None:
        """An event went to the notifiers (`warn`, `kill`, `store_error`, ...)."""


def call_outcome(decision: Decision) -> str:
    """A decision as a metric label: `allowed`, `degraded`, `unreserved` (admitted while the store was
    unreachable) or `blocked`."""
    if not decision.allowed:
        return "blocked"
    if decision.reason == "store_error":
        return "unreserved"
    return "degraded" if decision.degraded else "allowed"


def error_kind(exc: BaseException, topic: str = "store") -> str:
    """A store error as a metric label: `busy`, `timeout`, `unavailable`, `spool` or `error`."""
    if topic == "spool":
        return "spool"
    if isinstance(exc, StoreBusy):
        return "busy"
    if isinstance(exc, StoreTimeout):
        return "timeout"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    return "error" if isinstance(exc, StoreError) else type(exc).__name__


class Fanout:
    """Several observers as one; an observer that raises is logged, the others still hear."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)

    def with_(self, observer: Observer) -> Fanout:
        """These observers and `observer` (once: adding one twice changes nothing)."""
        return self if observer in self.observers else Fanout((*self.observers, observer))

    def _each(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:  # a metrics bug must never fail a paid call
                log.exception("costguard: observer %r failed in %s", observer, method)

    def decided(self, decision: Decision, estimate_usd: float | None, seconds: float) -> None:
        """Tell every observer."""
        self._each("decided", decision, estimate_usd, seconds)

    def settled(self, decision: Decision, estimate_usd: float, actual_usd: float | None, seconds: float) -> None:
        """Tell every observer."""
        self._each("settled", decision, estimate_usd, actual_usd, seconds)

    def store_call(self, op: str, seconds: float) -> None:
        """Tell every observer."""
        self._each("store_call", op, seconds)

    def store_error(self, store: str, kind: str) -> None:
        """Tell every observer."""
        self._each("store_error", store, kind)

    def alert(self, kind: str) -> None:
        """Tell every observer."""
        self._each("alert", kind)


def timed(steps: Steps[T], observer: Observer) -> Steps[T]:
    """`steps`, telling `observer` how long each of its I/O requests took (named by the store method)."""
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            io = steps.send(sent) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        sent, error = None, None
        start = time.perf_counter()
        try:
            sent = yield io
        except BaseException as exc:  # noqa: BLE001 - handed to the inner steps, as the drivers do
            error = exc
        observer.store_call(getattr(io.sync, "__name__", "store"), time.perf_counter() - start)
