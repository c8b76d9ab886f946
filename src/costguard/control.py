"""The control view: kill switches and run-time limit overrides as this process sees them.

The store holds the control state; each process keeps a copy for `killswitch_cache_ms` and asks
again when it is older. When the store can't be read the last known state stays in force (a process
that saw a switch on keeps blocking: fail-closed from known-active); before the first read, calls are
planned with the config's own ceilings.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from costguard import deadline as dl
from costguard import engine
from costguard.errors import StoreError
from costguard.model import STANDARD_LABELS, Ceiling, Period, Unit
from costguard.reporting import Reporter
from costguard.steps import Io, Steps
from costguard.stores.base import Control, KillSwitchState, Store

__all__ = ["ControlState", "ControlView", "blocking_switch"]


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


@dataclass
class ControlState:
    """One reading of the control state: switches, the ceilings with overrides applied, and when."""

    control: Control | None = None
    ceilings: tuple[Ceiling, ...] = ()
    overrides: dict[str, dict[tuple[Period, Unit], int]] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    ok: bool = False

    @property
    def killswitches(self) -> tuple[KillSwitchState, ...]:
        """The active kill switches (none before the first successful read)."""
        return self.control.killswitches if self.control is not None else ()

    def limit(self, scope: Mapping[str, str], period: Period, unit: Unit) -> int | None:
        """The limit in force for a ceiling scope and period (override, else config); None if no ceiling has it."""
        for ceiling in self.ceilings:
            if ceiling.match_dict == scope or (
                set(ceiling.match_dict) == set(scope) and ceiling.bind(scope) is not None
            ):
                for limit in engine.effective_limits(ceiling, scope, self.overrides):
                    if limit.period is period and limit.unit is unit:
                        return limit.amount
        return None


class _Flight:
    """One read of the control state in progress, which every other caller that finds the copy stale
    waits for instead of reading too: a burst of 32 threads would otherwise send 32 reads, queue on
    the process's few connections, and spend their calls' deadlines there."""

    __slots__ = ("_done", "_futures", "_lock", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wait(self, timeout: float) -> None:
        """Block until the read is done, at most `timeout` seconds."""
        self._done.wait(timeout)

    async def await_done(self, timeout: float) -> None:
        """Await the read, at most `timeout` seconds, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                return
            self._futures.append((loop, future))
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
            await asyncio.wait_for(future, timeout)

    def finish(self) -> None:
        """The read is over (read, failed or abandoned): wake every waiter."""
        with self._lock:
            self._done.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ControlView:
    """This process's cached view of the control state, refreshed at most every `ttl_s`, by one
    caller at a time (the others wait for its reading)."""

    def __init__(
        self,
        store: Store,
        ceilings: Sequence[Ceiling],
        reporter: Reporter,
        *,
        ttl_s: float,
        deadline_s: float,
        declared_labels: Collection[str] = (),
        exempt_features: Collection[str] = (),
    ) -> None:
        self.store = store
        self.ceilings = tuple(ceilings)
        self.reporter = reporter
        self.ttl_s = ttl_s
        self.deadline_s = deadline_s
        self.declared_labels = frozenset(declared_labels)
        self.exempt_features = frozenset(exempt_features)
        self._state = ControlState()
        self._lock = threading.Lock()
        self._flight: _Flight | None = None

    def invalidate(self) -> None:
        """Read the store again at the next use (after this process changed a switch or a limit)."""
        with self._lock:
            self._state.fetched_at = float("-inf")

    def state(self) -> ControlState:
        """The current reading, without I/O (the config's ceilings before the first one)."""
        state = self._state
        if state.control is None:
            return ControlState(None, self.ceilings, {}, state.fetched_at, False)
        return state

    def fresh(self, now: float) -> ControlState | None:
        """The current reading when it is younger than `ttl_s` (no I/O), else None: `refresh` it."""
        state = self._state
        if now - state.fetched_at >= self.ttl_s:
            return None
        return state if state.control is not None else self.state()

    def refresh(self, now: float, deadline: dl.Deadline | None = None, *, strict: bool = False) -> Steps[ControlState]:
        """Steps: read the store when the copy is older than `ttl_s`; the reading in force after. A failed read
        keeps the last state and is reported — or, `strict` (an operator's change), raises `StoreError`."""
        if now - self._state.fetched_at >= self.ttl_s:
            flight = None
            if not strict:  # an operator's change reads for itself: it must see the store or fail
                with self._lock:
                    if now - self._state.fetched_at < self.ttl_s:
                        return self.state()  # read by another caller just now
                    flight = self._flight
                    # A read older than the deadline was abandoned (its caller forked or died): take over.
                    if flight is not None and time.monotonic() - flight.started < self.deadline_s:
                        mine = False
                    else:
                        flight = self._flight = _Flight()
                        mine = True
                if not mine:
                    left = deadline.remaining() if deadline is not None else self.deadline_s
                    yield Io(flight.wait, flight.await_done, (max(0.0, left),))
                    return self.state()  # its reading, or the last one if it failed or ran out of time
            try:
                control = yield Io(
                    self.store.control, self.store.acontrol, deadline=deadline or dl.Deadline(self.deadline_s)
                )
            except StoreError as exc:
                if strict:
                    raise
                # Keep the last known state: a process that saw a switch on keeps blocking (fail-closed).
                with self._lock:
                    self._state.fetched_at = now
                    self._state.ok = False
                self.reporter.store_error(exc, "control")
            else:
                ceilings = engine.apply_overrides(self.ceilings, control.overrides)
                overrides = engine.index_overrides(control.overrides)
                with self._lock:
                    self._state = ControlState(control, ceilings, overrides, now, True)
            finally:
                if flight is not None:
                    with self._lock:
                        if self._flight is flight:
                            self._flight = None
                    flight.finish()
        return self.state()

    def switch_for(self, state: ControlState, labels: Mapping[str, str]) -> KillSwitchState | None:
        """The active switch that covers a call with `labels`, if any (exempt features escape global ones)."""
        return blocking_switch(state.killswitches, labels, self.exempt_features)

    # ----------------------------------------------------------------- label names
    def known_labels(self) -> list[str]:
        """Label names a kill switch or limit scope may use: the standard ones, every name a ceiling
        matches on (config and run time), and the config's declared `labels:`."""
        names = set(STANDARD_LABELS) | self.declared_labels
        for ceiling in self._state.ceilings or self.ceilings:
            names.update(name for name, _ in ceiling.match)
        return sorted(names)

    def require_known_labels(self, scope: Mapping[str, object], what: str) -> None:
        """Raise `ValueError` for a scope naming a label nothing knows (a typo would make a kill switch
        or a limit that matches no call, and answer as if it had worked)."""
        known = self.known_labels()
        unknown = sorted(name for name in scope if name not in known)
        if unknown:
            raise ValueError(
                f"unknown label {', '.join(map(repr, unknown))} in the scope of {what}: no ceiling, standard "
                f"label or declared `labels:` entry has it, so it would match no call. Known labels: "
                f"{', '.join(known)} (declare others under `labels:` in costguard.yaml)"
            )
