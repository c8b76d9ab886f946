"""A liveness check on a connection of its own: does the server answer a trivial request now?

A reserve that ran out of its deadline met either an overloaded store (every process's calls queue on
a hot row, so this process may have had no answer for the whole wait) or one that can't answer at all
(down, frozen, partitioned). The calls' own connections can't tell those apart; a trivial request on a
connection that queues behind nothing can: an overloaded server answers it at once, a frozen one never.
One check runs at a time per store, on a connection opened for it and closed after it (the check is
rare: only a call that ran out of its deadline with no other answer asks); a failed one is remembered
for a moment, so an outage costs one check, not one per call.
"""

from __future__ import annotations

import contextlib
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
        self._conn: Any = None
        self._silent_until = float("-inf")

    def check(self, timeout_s: float) -> bool:
        """Whether the server answered within `timeout_s` (an answer is noted as the store's)."""
        if time.monotonic() < self._silent_until or not self._lock.acquire(timeout=timeout_s):
            return False
        try:
            if time.monotonic() < self._silent_until:  # the check just made while this one waited
                return False
            began = time.monotonic()
            try:
                self._conn = self._connect(timeout_s)
                self._ask(self._conn, max(0.001, timeout_s - (time.monotonic() - began)))
            except Exception:  # noqa: BLE001 - any failure is no answer
                self._silent_until = time.monotonic() + max(timeout_s * 4, 0.5)
                return False
            finally:  # a connection for one question: none is left open for a store never closed
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        self._drop(conn)
            self._answered()
            return True
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing anyway
                self._drop(conn)
