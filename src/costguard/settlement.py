"""Settlement: getting what calls cost into the store — at once, in background batches, or through the spool.

A commit or release is written at once (within the store deadline) unless the feature commits in
the background. What can't be written yet becomes an `Entry` in an ordered queue, mirrored in the
durable spool before the call returns, and a background writer sends the queue in batches (one
`settle_many` each) until the store takes it. The same writer finishes the spool segments of dead
processes. Calls admitted while the store was unreachable (`on_store_error: open`) are entries
too — a forced reserve of their plan — and count against the process's outage allowance until the
store has them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from costguard import deadline as dl
from costguard.engine import CommitOutcome, ReservePlan, force
from costguard.errors import StoreError
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.spool import Entry, Spool
from costguard.steps import Io, Steps
from costguard.stores.base import Store

__all__ = ["OnWritten", "Settlement"]

log = logging.getLogger("costguard")

_ORPHAN_SCAN_S = 30.0


# Called for each settle the store applied: its outcome, when it happened, and whether the
# reservation was recorded without checking limits (a call admitted while the store was unreachable).
OnWritten = Callable[[CommitOutcome, float, bool], None]


class Settlement:
    """The write side of a guard: commits, releases, background batches and the outage spool."""

    def __init__(
        self,
        store: Store,
        spool: Spool | None,
        *,
        deadline_s: float,
        batch: int,
        max_items: int,
        on_written: OnWritten,
        on_error: Callable[[Exception, str], None],
    ) -> None:
        self.store = store
        self.spool = spool
        self.deadline_s = deadline_s
        self.batch = batch
        self.max_items = max_items
        self._on_written = on_written
        self._on_error = on_error
        self._queue: OrderedDict[int, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._unrecorded: dict[str, int] = {}
        self._forced: set[str] = set()  # reservation ids recorded without checking limits, until settled
        self._plans_queued: set[str] = set()  # ... whose forced reserve is still in the queue
        self._wakeup = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._next_orphan_scan = 0.0
        self._failing = False  # the writer's last attempt failed (reported once, not at every retry)
        self.refused = 0  # entries the spool had no room for

    # ----------------------------------------------------------------- state
    @property
    def pending(self) -> int:
        """Calls whose cost (or release) the store does not have yet."""
        with self._lock:
            return len({entry.reservation_id for entry in self._queue.values()})

    def unrecorded(self, feature: str | None = None) -> int:
        """Micro-dollars admitted without a reservation and not yet in the store (one feature, or all)."""
        with self._lock:
            if feature is not None:
                return self._unrecorded.get(feature, 0)
            return sum(self._unrecorded.values())

    def _new_seq(self) -> int:
        return self.spool.next_seq() if self.spool is not None else next(self._seq)

    def _enqueue(self, entries: Sequence[Entry], what: str) -> bool:
        """Queue entries and spool them; False (nothing queued) when the spool is full or the disk refuses."""
        with self._lock:
            if len(self._queue) + len(entries) > self.max_items:
                self.refused += len(entries)
                full = True
            else:
                full = False
                if self.spool is not None:
                    try:
                        self.spool.append(entries)
                    except OSError as exc:
                        self.refused += len(entries)
                        self._on_error(exc, f"spool write ({what})")
                        return False
                for entry in entries:
                    self._queue[entry.seq] = entry
                    if entry.plan is not None:
                        self._plans_queued.add(entry.reservation_id)
                    if entry.unreserved:
                        self._unrecorded[entry.feature] = self._unrecorded.get(entry.feature, 0) + entry.unreserved
        if full:
            self._on_error(
                StoreError(
                    f"the outage spool is full ({self.max_items} entries waiting for the store); {what} "
                    "could not be kept"
                ),
                "spool",
            )
            return False
        self._wake()
        return True

    def _done(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        with self._lock:
            for entry in entries:
                if entry.plan is not None:
                    self._plans_queued.discard(entry.reservation_id)
                if self._queue.pop(entry.seq, None) is not None and entry.unreserved:
                    left = self._unrecorded.get(entry.feature, 0) - entry.unreserved
                    if left > 0:
                        self._unrecorded[entry.feature] = left
                    else:
                        self._unrecorded.pop(entry.feature, None)
            if self.spool is not None:
                self.spool.done(entries)

    # ----------------------------------------------------------------- what the call path hands over
    def admit_unreserved(self, plan: ReservePlan, feature: str, allowance: int) -> Entry | None:
        """Keep an admission the store could not record (`on_store_error: open`): its plan is spooled
        before the call runs. None when the feature's outage allowance is used up or the spool is full."""
        amount = plan.estimate_usd
        with self._lock:
            used = self._unrecorded.get(feature, 0)
            if used >= allowance or used + amount > allowance:
                return None
            self._forced.add(plan.reservation_id)
        entry = Entry(
            self._new_seq(), plan.reservation_id, plan.at, plan=force(plan), feature=feature, unreserved=amount
        )
        if not self._enqueue([entry], "an admission while the store was unreachable"):
            with self._lock:
                self._forced.discard(plan.reservation_id)
            return None
        return entry

    def abandon(self, reservation_id: str, at: float) -> None:
        """A reserve whose outcome is unknown and whose call did not run: release it once the store answers
        (a release of an id the store never saw leaves a marker, so the reserve can't count if it arrives)."""
        self._enqueue([Entry(self._new_seq(), reservation_id, at, settle=True)], "the release of an abandoned reserve")

    def _settle_entry(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> Entry:
        return Entry(self._new_seq(), reservation_id, at, settle=True, actual=actual, record=record)

    def settle(
        self,
        reservation_id: str,
        actual: Mapping[Unit, int] | None,
        at: float,
        record: AuditRecord | None,
        *,
        background: bool,
    ) -> Steps[None]:
        """Steps: commit (`actual`) or release (None) now; what can't be written now is queued and spooled."""
        # A call admitted without a reservation: its forced reserve is still queued, the settle follows it.
        if background or reservation_id in self._plans_queued:
            self._enqueue([self._settle_entry(reservation_id, actual, at, record)], "a commit")
            return
        store = self.store
        try:
            outcome: CommitOutcome = yield Io(
                store.settle,
                store.asettle,
                (reservation_id, actual, at, record),
                deadline=dl.Deadline(self.deadline_s) if store.remote else None,
            )
        except StoreError as exc:
            self._on_error(exc, "commit")
            self._enqueue([self._settle_entry(reservation_id, actual, at, record)], "a commit")
            return
        self._report(outcome, at, reservation_id)
        if self._queue:
            self._wake()

    def _report(self, outcome: CommitOutcome, at: float, reservation_id: str, *, forced: bool = False) -> None:
        if self._forced:  # calls admitted without a reservation are rare: no lock otherwise
            with self._lock:
                forced = forced or reservation_id in self._forced
                self._forced.discard(reservation_id)
        if outcome.applied:
            self._on_written(outcome, at, forced)

    # ----------------------------------------------------------------- the writer
    def _wake(self) -> None:
        if self._closed:
            return
        writer = self._writer
        if writer is None or not writer.is_alive():
            with self._lock:
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(target=self._run, name="costguard-settle", daemon=True)
                    self._writer.start()
        self._wakeup.set()

    def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            self._wakeup.wait(1.0)
            self._wakeup.clear()
            try:
                self.flush()
            except Exception:  # the writer must survive anything
                log.exception("costguard: writing queued costs failed")
            if self._queue and not self._closed:
                time.sleep(backoff)  # the store is down: try again soon, not in a tight loop
                backoff = min(backoff * 2, 2.0)
                self._wakeup.set()
            else:
                backoff = 0.05

    def _write(self, entries: Sequence[Entry]) -> int:
        """Write entries in order (forced reserves first, then one `settle_many`); how many, counted
        from the first, the store took. Stops at the first failure."""
        cut = len(entries)
        for index, entry in enumerate(entries):
            if entry.plan is None:
                continue
            plan = entry.plan
            try:
                dl.call(lambda plan=plan: self.store.reserve(plan, None), dl.Deadline(self.deadline_s))  # type: ignore[misc]
            except StoreError as exc:
                self._writer_failed(exc)
                cut = index
                break
        forced_here = {e.reservation_id for e in entries[:cut] if e.plan is not None}
        settles = [(i, e) for i, e in enumerate(entries[:cut]) if e.settle]
        if settles:
            items = [(e.reservation_id, e.actual, e.at, e.record) for _, e in settles]
            try:
                results: Sequence[CommitOutcome | StoreError] = dl.call(
                    lambda: self.store.settle_many(items), dl.Deadline(self.deadline_s)
                )
            except StoreError as exc:
                results = [exc] * len(items)
            for (index, entry), result in zip(settles, results, strict=True):
                if isinstance(result, StoreError):
                    self._writer_failed(result)
                    cut = min(cut, index)
                    break
                self._report(result, entry.at, entry.reservation_id, forced=entry.reservation_id in forced_here)
        return cut

    def _writer_failed(self, exc: StoreError) -> None:
        if self._failing:
            log.debug("costguard: queued costs still not written: %s", exc)
            return
        self._failing = True
        self._on_error(exc, "writing queued costs")

    def flush(self, *, wait: bool = True) -> int:
        """Write queued entries in batches, then any dead process's spool; returns how many were written.
        One writer at a time: with `wait=False` a caller that finds another flush running leaves it to it."""
        if not self._flush_lock.acquire(blocking=wait):
            return 0
        try:
            written = 0
            while True:
                with self._lock:
                    batch = list(itertools.islice(self._queue.values(), self.batch))
                if not batch:
                    break
                done = self._write(batch)
                self._done(batch[:done])
                written += done
                if done < len(batch):
                    return written
            if self._failing:
                self._failing = False
                log.warning("costguard: the store answered again; %d queued costs written", written)
            return written + self._adopt()
        finally:
            self._flush_lock.release()

    def _adopt(self) -> int:
        """Write the entries of spool segments whose process is gone."""
        now = time.monotonic()
        if self.spool is None or now < self._next_orphan_scan:
            return 0
        self._next_orphan_scan = now + _ORPHAN_SCAN_S
        written = 0
        for orphan in self.spool.orphans():
            try:
                while orphan.entries:
                    batch = orphan.entries[: self.batch]
                    done = self._write(batch)
                    orphan.done(batch[:done])
                    written += done
                    if done < len(batch):
                        self._next_orphan_scan = now + 1.0  # the store went away: look again soon
                        break
            finally:
                orphan.finish()
        if written:
            log.warning("costguard: wrote %d costs left in the spool by a process that stopped", written)
        return written

    def scan_orphans(self) -> None:
        """Look for dead processes' spool segments on the next flush (at start, and now and then)."""
        if self.spool is not None and self.spool.directory.exists():
            self._next_orphan_scan = 0.0
            self._wake()

    def close(self, timeout: float) -> bool:
        """Write what the store takes within `timeout`; the rest stays in the spool for the next process.
        True when nothing was left."""
        end = time.monotonic() + timeout
        self._closed = True
        self._wakeup.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(max(0.0, end - time.monotonic()))
        while self._queue and time.monotonic() < end:
            before = len(self._queue)
            self.flush()
            if len(self._queue) == before:
                break
        left = len(self._queue)
        if left:
            where = f" (kept in the spool at {self.spool.directory})" if self.spool is not None else " (lost: no spool)"
            log.error("costguard: closing with %d costs not yet written to the store%s", left, where)
        if self.spool is not None:
            self.spool.close()
        return left == 0
