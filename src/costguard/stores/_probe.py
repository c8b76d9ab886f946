"""A liveness check on a connection of its own: does the server answer a trivial request now?

A reserve that ran out of its deadline met either an overloaded store (every process's calls queue on
a hot row, so this process may have had no answer for the whole wait) or one that can't answer at all
(down, frozen, partitioned). The calls' own connections can't tell those apart; a trivial request on a
connection that queues behind nothing can: an overloaded server answers it at once, a frozen one never.

The check's connection is opened at the first check and kept for the next (an overloaded PostgreSQL
starts a new session slowly: a fork and its catalogs, on a machine with no CPU to spare), closed with
the store or when its owner is collected; one that failed is dropped, and one that broke while idle
(a restarted server) is replaced at once, within the same check. One check runs at a time per store:
a caller that waited for another's check takes its answer. A failed check is remembered for a
moment, so an outage costs one check, not one per call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Probe"]


class Probe:
    """`check(timeout_s)` asks the server on the probe's own connection (`connect`, `ask`, `drop`)."""

    def __init__(
        self,
        connect: Callable[[float], Any],
        ask: Callable[[Any, float], None],
        drop: Callable[[Any], None],
        answered: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._ask = ask
        self._drop = drop
        self._answered = answered
        self._lock = threading.Lock()
        self._held = _Held()
        self._silent_until = float("-inf")
        self._answered_at = float("-inf")  # when the last check got its answer

    def check(self, timeout_s: float) -> bool:
        """Whether the server answered within `timeout_s` (an answer is noted as the store's)."""
        asked = time.monotonic()
        if asked < self._silent_until:
            return False
        if not self._lock.acquire(timeout=timeout_s):
            return self._answered_at >= asked  # another check ran all along: its answer, if it got one
        try:
            if self._answered_at >= asked:
                return True  # the check made while this one waited was answered
            if time.monotonic() < self._silent_until:
                return False  # ... or it was not
            if self._ask_within(asked + timeout_s):
                self._answered_at = time.monotonic()
                self._answered()
                return True
            self._silent_until = time.monotonic() + max(timeout_s * 4, 0.5)
            return False
        finally:
            self._lock.release()

    def _ask_within(self, end: float) -> bool:
        held = self._held
        if held.pid != os.getpid():  # forked: the parent's connection is not ours to use or close
            held.conn, held.pid = None, os.getpid()
        kept = held.conn is not None
        while True:
            try:
                if held.conn is None:
                    held.conn = self._connect(max(0.001, end - time.monotonic()))
                self._ask(held.conn, max(0.001, end - time.monotonic()))
                return True
            except Exception:  # noqa: BLE001 - any failure is no answer
                self._discard()
                # A kept connection may have broken while idle (the server restarted): ask once more
                # on a new one, if there is time; a new connection that fails is the answer.
                if not kept or time.monotonic() >= end:
                    return False
                kept = False

    def _discard(self) -> None:
        _close_held(self._held, self._drop)

    def close(self) -> None:
        with self._lock:
            self._discard()

    def closer(self) -> Callable[[], None]:
        """`close` as a function that refers to nothing but the connection and `drop` (for
        `weakref.finalize` on the probe's owner, which `connect` may refer to)."""
        return functools.partial(_close_held, self._held, self._drop)


class _Held:
    """The probe's connection, and the process that opened it."""

    __slots__ = ("conn", "pid")

    def __init__(self) -> None:
        self.conn: Any = None
        self.pid = os.getpid()


def _close_held(held: _Held, drop: Callable[[Any], None]) -> None:
    conn, held.conn = held.conn, None
    if conn is not None and held.pid == os.getpid():  # a forked child leaves its parent's alone
        with contextlib.suppress(Exception):  # dropping it anyway
            drop(conn)
