"""Slice marks: a durable record of what this process may have used of each slice it holds.

A slice is counted whole in the store until its holder settles it. So that a holder killed with
slices (SIGKILL, OOM) is not counted a whole slice too many, it keeps in its spool, per slice, a
write-ahead *mark*: "slice <id> may have used up to X" (per unit). A mark is written before a call
takes the slice past the last one, and when a call's actual cost does, a step ahead (`engine.slices`),
so it is never below what the slice's calls used (their actual costs once they ended, their estimates
while in flight) and is written once per step, not per call — one unbuffered `os.write`, which a killed
process's kernel still completes. A slice gets a mark of 0 before its reserve is sent.

The spool keeps one outstanding mark per slice (each new one marks the one before done in the same
write) and hides a mark behind any later entry of its slice. A live process's segments are locked;
the next guard to open the spool after the holder died commits each of its slices at its last mark
(`Settlement` adopts the segment). A slice settled by its holder has its mark marked done; were it
written anyway (a crash between the settle and the `done` line), the store's settle is idempotent by
reservation id and the second commit changes nothing. A mark the disk refused leaves the slice with
the one before, which may be too low: the caller stops serving from that slice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence

from costguard.engine.slices import Slice
from costguard.model import Unit
from costguard.spool import Spool
from costguard.spoolcodec import Entry

__all__ = ["SliceMarks"]

log = logging.getLogger("costguard")


class SliceMarks:
    """The marks of this process's slices, in its spool."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._lock = threading.Lock()
        self._last: dict[str, Entry] = {}  # lease id -> its outstanding mark

    def __len__(self) -> int:
        return len(self._last)

    def mark(self, lease_id: str, upto: Sequence[int], at: float) -> None:
        """Record that slice `lease_id` may have used up to `upto` (per unit: USD, calls, tokens).
        Raises `OSError` when the disk refuses (the mark before stays)."""
        spool = self.spool
        usd, calls, tokens = upto
        actual = {Unit.USD: usd, Unit.CALLS: calls, Unit.TOKENS: tokens}
        entry = Entry(spool.next_seq(), lease_id, at, settle=True, actual=actual, mark=True)
        with self._lock:
            spool.replace(entry, self._last.get(lease_id))
            self._last[lease_id] = entry

    def advance(self, slice_: Slice, at: float) -> None:
        """Record the slice's next mark (a step beyond what it has used); raises `OSError` as `mark`."""
        upto = slice_.next_mark()
        self.mark(slice_.lease_id, upto, at)
        slice_.marked = upto

    def done(self, lease_ids: Iterable[str]) -> None:
        """The slices were settled (or handed to the settlement, or never granted): their marks are done."""
        with self._lock:
            entries = [entry for lease_id in lease_ids if (entry := self._last.pop(lease_id, None)) is not None]
        if entries:
            try:
                self.spool.done(entries)
            except OSError as exc:  # left outstanding, a mark is only written again later: a no-op
                log.warning("costguard: spool: marking settled slices done failed: %s", exc)

    def forget(self) -> None:
        """In a forked child: the marks are the parent's."""
        self._lock = threading.Lock()
        self._last = {}
