"""Leasing: slices of hot counters' headroom, reserved in the store and spent here without a round trip.

`engine.leases` keeps the books (pure); this part holds its lock, reserves slices in the store (an
ordinary atomic reservation each, so the cap stays exact across the fleet), hands retired slices to
the settlement (what their calls cost is committed, the rest goes back) and retires idle slices from a
background thread. With a spool, it keeps each slice's write-ahead mark there (`costguard.slicemarks`),
under its lock, before a call is served past the last one: a holder killed with slices is settled at
its marks by the next process, not counted whole. Only remote stores lease: memory and SQLite answer
in-process already.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping

from costguard import deadline as dl
from costguard import engine
from costguard.engine.leases import LeaseBook, Slice, Take
from costguard.errors import StoreError
from costguard.model import Unit
from costguard.reporting import Reporter
from costguard.settlement import Settlement
from costguard.slicemarks import SliceMarks
from costguard.steps import Io, Steps, run
from costguard.stores.base import Store

__all__ = ["Leases"]

log = logging.getLogger("costguard")


class Leases:
    """This process's slices of hot counters (see `costguard.engine.leases`)."""

    def __init__(
        self,
        store: Store,
        settlement: Settlement,
        reporter: Reporter,
        *,
        period_s: float,
        deadline_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.settlement = settlement
        self.reporter = reporter
        self.period_s = period_s
        self.clock = clock
        self.book = LeaseBook(period_s)
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pending: list[Slice] = []  # retired, no call in flight, not yet settled
        self._settling = 0  # retired slices taken from `_pending` whose settles are on their way
        self._renewals: list[engine.Grant] = []  # next slices to reserve, off the calls' path
        self.marks = None if settlement.spool is None else SliceMarks(settlement.spool)
        self.deadline_s = deadline_s
        self._closed = False
        os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    def _forked(self) -> None:
        """In a forked child: the slices are the parent's (it spends and settles them); start empty."""
        self.book = LeaseBook(self.period_s)
        self._lock = threading.Lock()
        self._pending = []
        self._settling = 0
        self._renewals = []
        self._sweeper = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        if self.marks is not None:
            self.marks.forget()

    # ----------------------------------------------------------------- admission
    def admit(
        self,
        plan: engine.ReservePlan,
        amounts: Mapping[Unit, int],
        control: object,
        now: float,
        deadline: dl.Deadline | None,
    ) -> Steps[Take | None]:
        """Steps: take what slices cover of the call (reserving new slices for hot groups on the way)."""
        if self._closed:
            return None
        book = self.book
        marks = self.marks
        with self._lock:
            book.revoke_if_changed(control)
            take, grants = book.take(plan, amounts, now)
            if take is not None and marks is not None:
                for slice_, _ in take.parts:
                    used, marked = slice_.used, slice_.marked
                    if used[0] > marked[0] or used[1] > marked[1] or used[2] > marked[2]:
                        take = self._mark(take, now)
                        break
            done = book.done()
        self._settle(done)
        if not grants:
            return take
        covered = {slice_.group for slice_, _ in take.parts} if take is not None else set()
        renewals = [grant for grant in grants if grant.group in covered]
        if renewals:  # the next slice of a group this call is served from: reserved off the call's path
            with self._lock:
                self._renewals.extend(renewals)
            self._start_sweeper()
            self._wake.set()
            grants = [grant for grant in grants if grant.group not in covered]
            if not grants:
                return take
        installed = yield from self._reserve(grants, now, deadline)
        if not installed:
            return take
        self._start_sweeper()
        with self._lock:
            if take is not None:
                book.finish(take, None)
            take, _ = book.take(plan, amounts, now, count=False)
            if take is not None and marks is not None:
                take = self._mark(take, now)
            done = book.done()
        self._settle(done)
        return take

    def _mark(self, take: Take, now: float) -> Take | None:
        """Under the lock, before the call is served: a new mark for each slice it takes past its last one.
        A mark the disk refuses gives the call back (to the store) and retires its slices."""
        assert self.marks is not None
        for slice_, _ in take.parts:
            if slice_.unmarked():
                try:
                    self.marks.advance(slice_, now)
                except OSError as exc:
                    self.book.finish(take, None)
                    for failed, _ in take.parts:
                        self.book.retire(failed)
                    self.reporter.write_error(exc, "spool write (a slice's mark)")
                    return None
        return take

    def _reserve(self, grants: list[engine.Grant], now: float, deadline: dl.Deadline | None) -> Steps[bool]:
        """Steps: reserve slices in the store and install them; whether any was granted."""
        installed = False
        store = self.store
        book = self.book
        marks = self.marks
        for index, grant in enumerate(grants):
            lease_id = grant.plan.reservation_id
            if marks is not None:  # nothing used yet: a holder killed from here on has it committed at 0
                try:
                    marks.mark(lease_id, (0, 0, 0), now)
                except OSError as exc:  # without a mark, a crash leaves the slice counted whole
                    self.reporter.write_error(exc, "spool write (a slice's mark)")
            try:
                outcome = yield Io(store.reserve, store.areserve, (grant.plan, None), deadline=deadline)
            except BaseException as exc:
                # Failed or cancelled mid-grant: it may have been applied, so it is given back; this group and
                # the rest go one by one for a period (the call's own reserve finds out what the store is up to).
                if not isinstance(exc, StoreError) or deadline is None or deadline.unknown:
                    self.settlement.abandon(lease_id, now)
                with self._lock:
                    for failed in grants[index:]:
                        book.install(failed, engine.ReserveOutcome(False, ()), now)
                if marks is not None:
                    marks.done([lease_id])
                if isinstance(exc, StoreError):
                    return installed
                raise
            self.reporter.crossings(outcome.crossings, now)
            with self._lock:
                installed = book.install(grant, outcome, now) or installed
            if marks is not None and not outcome.allowed:
                marks.done([lease_id])
        return installed

    def observe(self, plan: engine.ReservePlan, outcome: engine.ReserveOutcome) -> None:
        """Where the store says the call's counters stand (sizes the next slices)."""
        with self._lock:
            self.book.observe(plan.counters, outcome.totals)

    def finish(self, take: Take, actual: Mapping[Unit, int] | None) -> None:
        """A call served from slices ended: its actual cost (None: given back)."""
        marks = self.marks
        with self._lock:
            self.book.finish(take, actual)
            if actual is not None and marks is not None:
                # An actual cost above its estimate may take a slice past its mark: a new one before returning.
                for slice_, _ in take.parts:
                    used, marked = slice_.used, slice_.marked
                    if used[0] > marked[0] or used[1] > marked[1] or used[2] > marked[2]:
                        try:
                            marks.advance(slice_, self.clock())
                        except OSError as exc:
                            self.book.retire(slice_)
                            self.reporter.write_error(exc, "spool write (a slice's mark)")
            done = self.book.done()
        self._settle(done)

    # ----------------------------------------------------------------- settling slices
    def _settle(self, done: list[Slice]) -> None:
        """Retired slices with no call in flight: settled by the sweeper at once (or by `settle_now`)."""
        if done:
            with self._lock:
                self._pending.extend(done)
            self._start_sweeper()
            self._wake.set()

    @property
    def unsettled(self) -> bool:
        """Whether retired slices wait to be settled or are being settled (their unused headroom still
        counts in the store); one the store couldn't take is in the settlement's queue instead."""
        return bool(self._pending) or self._settling > 0

    def settle_now(self, deadline: dl.Deadline | None) -> Steps[None]:
        """Steps: settle the retired slices now — what their calls cost is committed, the rest goes back.
        One the store can't take is handed to the settlement (queued, spooled, written when it answers)."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._settling += len(batch)
        store = self.store
        try:
            for index, slice_ in enumerate(batch):
                at = self.clock()
                try:
                    outcome = yield Io(
                        store.settle, store.asettle, (slice_.lease_id, slice_.settlement(), at, None), deadline=deadline
                    )
                except StoreError:
                    for rest in batch[index:]:
                        run(self.settlement.settle(rest.lease_id, rest.settlement(), at, None, background=True))
                    if self.marks is not None:  # queued and spooled after them: the marks give way to it
                        self.marks.done(rest.lease_id for rest in batch[index:])
                    return
                if self.marks is not None:
                    self.marks.done([slice_.lease_id])
                self.reporter.settled(outcome, at, False)
        finally:
            with self._lock:
                self._settling -= len(batch)

    def sweep(self) -> None:
        """Reserve the next slices asked for, retire slices older than their period (an idle process gives
        its headroom back) and settle the retired ones."""
        with self._lock:
            renewals, self._renewals = self._renewals, []
        if renewals and not self._closed:
            run(self._reserve(renewals, self.clock(), dl.Deadline(self.deadline_s)))
        with self._lock:
            self.book.expire(self.clock())
            self._pending.extend(self.book.done())
        run(self.settle_now(dl.Deadline(self.deadline_s)))

    def _start_sweeper(self) -> None:
        if self._sweeper is not None or self._closed:
            return
        with self._lock:
            if self._sweeper is not None:
                return
            self._sweeper = threading.Thread(target=self._sweep_loop, name="costguard-leases", daemon=True)
            self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period_s / 2)
            self._wake.clear()
            try:
                self.sweep()
            except Exception:  # pragma: no cover - the sweeper must outlive any one failure
                log.exception("costguard: settling leases failed")

    def revoke(self, *, now: bool = False) -> None:
        """Retire every slice (its unused headroom goes back once its calls in flight end); with `now`,
        settle those with no call in flight before returning."""
        with self._lock:
            self.book.retire_all()
            done = self.book.done()
            if now:
                self._pending.extend(done)
        if now:
            run(self.settle_now(dl.Deadline(self.deadline_s)))
        else:
            self._settle(done)

    def close(self) -> None:
        """Stop leasing and give every slice back (before the settlement's last write)."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=2 * self.deadline_s + 1.0)
        with self._lock:
            self.book.retire_all()
            self._pending.extend(self.book.done())
        run(self.settle_now(dl.Deadline(self.deadline_s)))


def _forked(ref: weakref.ref[Leases]) -> None:
    leases = ref()
    if leases is not None:
        leases._forked()
