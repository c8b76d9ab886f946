"""Audit records written off the request thread (calls served from slices, refusals): in batches,
and never dropped because the writer fell behind — a flood slows down, it is not lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from costguard.events import AuditRecord
from costguard.reporting import Reporter
from costguard.stores import MemoryStore


class SlowAppends(MemoryStore):
    """A store whose every append takes 2 ms, whatever its size (a round trip)."""

    def __init__(self) -> None:
        super().__init__(max_audit=1_000_000)
        self.appends = 0

    def append(self, records: Sequence[AuditRecord]) -> None:
        time.sleep(0.002)
        self.appends += 1
        super().append(records)


def test_a_flood_of_records_is_written_whole_and_in_batches() -> None:
    store = SlowAppends()
    reporter = Reporter(store, [], clock=time.time, queue_size=10, group_s=None)

    def flood(worker: int) -> None:
        for i in range(25_000):
            reporter.audit_later(AuditRecord(float(i), "reserve", {"feature": f"w{worker}"}, f"{worker}-{i}"))

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reporter.close(timeout=0.01)  # the worker gets no time: close writes what is left itself
    records = [r for _, r in store._audit]
    assert len(records) == 100_000
    assert len({r.reservation_id for r in records}) == 100_000
    assert store.appends <= 100_000 // 1000 + 50  # batches, not one append per record
    assert reporter.audit_dropped == 0
