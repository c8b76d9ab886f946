"""Reservation ids: 80 random bits drawn once per process (again in a forked child), then a count —
unique across the fleet without a system call per guarded call."""

from __future__ import annotations

import itertools
import os

__all__ = ["reservation_id"]


class _Ids:
    def __init__(self) -> None:
        self._draw()
        os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):012x}"


_ids = _Ids()


def reservation_id() -> str:
    """A new reservation id: 32 hex digits, never repeated by this process or any other."""
    return _ids.next()
