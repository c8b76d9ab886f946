"""A client-side watchdog: a connection still waiting for its reply at the deadline is shut down.

A server that is frozen (SIGSTOP, a hung VM) still has its kernel acknowledge packets, so neither a
server-side statement timeout nor TCP's user timeout ever fires, and a driver's blocking read waits
until the server resumes. The watchdog shuts the socket down at the deadline; the read returns an
error at once and the store maps it to `StoreTimeout` (the outcome is unknown: the request may
have been applied, and the guard asks again or releases it by id).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Watch", "fired", "watch"]

log = logging.getLogger("costguard")


class _Watchdog:
    """One daemon thread per process, waking at the earliest armed deadline."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Watch] = {}  # token -> what it watches
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def arm(self, watched: Watch, seconds: float) -> int:
        token = next(self._tokens)
        when = time.monotonic() + seconds
        with self._lock:
            self._armed[token] = watched
            # The thread sleeps until the earliest deadline; it needs waking only for an earlier one
            # (not once per statement: two context switches each, on the hot path).
            earlier = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="costguard-watchdog", daemon=True)
                self._thread.start()
            elif earlier:
                self._lock.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap or self._heap[0][1] not in self._armed:
                    if self._heap:
                        heapq.heappop(self._heap)  # disarmed: drop it
                        continue
                    self._lock.wait(60.0)
                when, token = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                watched = self._armed.pop(token, None)
                if watched is None:
                    continue
                # Under the lock: the caller can't disarm and hand the connection to someone else meanwhile.
                self.fired += 1
                watched.fired = True
                _shut(watched.fd)


def _shut(fd: int) -> None:
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return  # already closed
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


_WATCHDOG = _Watchdog()


class Watch:
    """One watched block: its socket, and whether the watchdog shut it (the deadline passed; the server
    itself may be fine, so the driver's "server closed the connection" says nothing about its other
    connections)."""

    __slots__ = ("fd", "fired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fired = False


@contextmanager
def watch(fd: int | None, seconds: float) -> Iterator[Watch]:
    """Shut the socket `fd` down if the block is still running after `seconds`."""
    watched = Watch(-1 if fd is None else fd)
    if fd is None or fd < 0:
        yield watched
        return
    token = _WATCHDOG.arm(watched, seconds)
    try:
        yield watched
    finally:
        _WATCHDOG.disarm(token)


def fired() -> int:
    """How many sockets the watchdog has shut down in this process."""
    return _WATCHDOG.fired
