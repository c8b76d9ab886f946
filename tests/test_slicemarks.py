"""Slice marks: a holder keeps, in its spool, how much it may have used of each slice — a step ahead,
written before a call takes the slice past the last mark — and a process that adopts a dead holder's
spool commits each of its slices at its last mark: never below what the slice's calls used, at most a
step above, and a slice its holder settled is never settled twice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from costguard import Guard, engine
from costguard.engine.slices import LEASE_PREFIX, MARK_STEPS, Slice
from costguard.model import Unit
from costguard.settlement import Settlement
from costguard.slicemarks import SliceMarks
from costguard.spool import Entry, Spool, _read_segment, decode, encode
from costguard.stores import MemoryStore
from costguard.stores.base import CounterRow
from helpers import FakeClock, make_guard, usd_ceiling

NOW = 1_780_000_000.0
CAP = usd_ceiling({"feature": "f"}, month=100.0)


def a_slice(granted: tuple[int, int, int] = (1_000_000, 100, 0)) -> Slice:
    return Slice(LEASE_PREFIX + "x", ("c", ()), (), (), list(granted), {}, expires=NOW + 1)


def lease_plan(rid: str, usd: int) -> engine.ReservePlan:
    """A slice's reservation of `usd` micro-dollars on feature f's month counter."""
    return engine.plan_reservation(
        reservation_id=LEASE_PREFIX + rid,
        ceilings=[CAP],
        overrides={},
        labels={"feature": "f"},
        amounts={Unit.USD: usd, Unit.CALLS: 1, Unit.TOKENS: 0},
        now=NOW,
        tz=ZoneInfo("UTC"),
        thresholds=(0.8, 1.0),
    )


def die(spool: Spool) -> None:
    """What a SIGKILL does to a spool: its files close (their locks go with them), nothing else happens."""
    for segment in {*spool._where.values(), *([spool._current] if spool._current else [])}:
        os.close(segment.fd)


def adopter(store: MemoryStore, directory: Path) -> Settlement:
    return Settlement(
        store,
        Spool(directory),
        deadline_s=1.0,
        batch=100,
        max_items=100,
        on_written=lambda *_: None,
        on_error=lambda exc, _: pytest.fail(str(exc)),
    )


def month_row(store: MemoryStore, plan: engine.ReservePlan) -> CounterRow:
    """The plan's month counter (not its history counter), as status reads it."""
    rows = store.list_counters({op.period: op.bucket for op in plan.counters})
    (row,) = [r for r in rows if not r.ceiling_id.startswith(engine.HISTORY_PREFIX)]
    return row


def counted(store: MemoryStore, plan: engine.ReservePlan) -> tuple[int, int]:
    """(committed, reserved) of the plan's month counter."""
    row = month_row(store, plan)
    return row.committed, row.reserved


def on_disk(directory: Path) -> dict[str, dict[Unit, int]]:
    """The outstanding marks in a spool's segments (live or not), by slice."""
    out: dict[str, dict[Unit, int]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        fd = os.open(path, os.O_RDONLY)
        try:
            for entry in _read_segment(fd, path):
                if entry.mark:
                    assert entry.reservation_id not in out, "two outstanding marks of one slice"
                    out[entry.reservation_id] = dict(entry.actual or {})
        finally:
            os.close(fd)
    return out


# ----------------------------------------------------------------------------- the arithmetic (engine.slices)
def test_a_mark_is_a_step_ahead_never_past_the_slice_and_never_back() -> None:
    s = a_slice()
    assert not s.unmarked()  # nothing used: the mark of 0 written before its reserve covers it
    s.used = [10_000, 1, 0]
    assert s.unmarked()
    step = (1_000_000 // MARK_STEPS, -(-100 // MARK_STEPS))  # an eighth of the slice, per unit
    assert s.next_mark() == [10_000 + step[0], 1 + step[1], 0]
    s.marked = s.next_mark()
    s.used = [10_000 + step[0], 1, 0]  # up to the mark is covered
    assert not s.unmarked()
    s.used = [990_000, 99, 0]
    assert s.next_mark() == [1_000_000, 100, 0]  # never past the slice...
    s.used = [1_040_000, 100, 0]
    assert s.next_mark() == [1_040_000, 100, 0]  # ...unless actual costs above their estimates took it there
    s.marked = s.next_mark()
    s.used = [500_000, 60, 0]  # calls given back: the mark stays where it was
    assert s.next_mark() == [1_040_000, 100, 0]
    tokens = a_slice((0, 10, 80_000))
    tokens.used = [0, 1, 8_000]
    assert tokens.next_mark() == [0, 3, 18_000]


def test_a_mark_is_its_own_line_kind_that_a_version_before_marks_skips() -> None:
    entry = Entry(
        3, LEASE_PREFIX + "x", NOW, settle=True, actual={Unit.USD: 7, Unit.CALLS: 1, Unit.TOKENS: 0}, mark=True
    )
    line = encode(entry)
    data = json.loads(line)
    # Not a `settle`: read by a version before marks as "neither records nor settles" and skipped, so the
    # slice counts whole there rather than being committed at an early mark.
    assert "settle" not in data and data["mark"] == {"usd": 7, "calls": 1, "tokens": 0}
    assert decode(line) == entry
    for bad in ('{"seq":1,"id":"x","at":1,"mark":null}', '{"seq":1,"id":"x","at":1,"mark":{"usd":"7"}}'):
        with pytest.raises(ValueError, match=r"mark|settle"):
            decode(bad)


# ----------------------------------------------------------------------------- the record (slicemarks, spool)
def test_one_mark_per_slice_is_outstanding_each_written_with_the_done_of_the_one_before(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    marks = SliceMarks(spool)
    marks.mark("lease-a", (0, 0, 0), NOW)
    marks.mark("lease-a", (50_000, 5, 0), NOW)
    marks.mark("lease-b", (0, 0, 0), NOW)
    marks.mark("lease-a", (75_000, 8, 0), NOW)
    assert spool.outstanding == len(marks) == 2
    (segment,) = tmp_path.glob("*.jsonl")
    lines = [json.loads(line) for line in segment.read_text().splitlines()]
    # A new mark and the done of the one before share a line pair written at once: 4 marks, 2 dones.
    assert [sorted(line) for line in lines].count(["done"]) == 2
    assert on_disk(tmp_path) == {
        "lease-a": {Unit.USD: 75_000, Unit.CALLS: 8, Unit.TOKENS: 0},
        "lease-b": {Unit.USD: 0, Unit.CALLS: 0, Unit.TOKENS: 0},
    }
    marks.done(["lease-a", "lease-b", "lease-never-marked"])
    assert spool.outstanding == len(marks) == 0
    assert segment.read_text() == ""  # nothing owed: the file starts again
    spool.close()
    assert list(tmp_path.glob("*.jsonl")) == []


def test_a_slices_marks_stay_in_the_segment_of_its_first_even_after_a_rollover(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1)  # every new entry starts a segment
    marks = SliceMarks(spool)
    marks.mark("lease-a", (0, 0, 0), NOW)
    spool.append([Entry(spool.next_seq(), "r-1", NOW, settle=True, actual={Unit.USD: 1})])
    for used in (10, 20, 30):
        marks.mark("lease-a", (used, 1, 0), NOW)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    die(spool)
    # Each segment is adopted on its own (another process may take the other): the one holding the
    # slice's marks holds the last of them.
    found = [[(e.reservation_id, e.actual) for e in orphan.entries] for orphan in Spool(tmp_path).orphans()]
    assert sorted(found) == [[("lease-a", {Unit.USD: 30, Unit.CALLS: 1, Unit.TOKENS: 0})], [("r-1", {Unit.USD: 1})]]


# ----------------------------------------------------------------------------- adoption (settlement)
def test_a_dead_holders_slices_are_committed_at_their_last_marks_once(tmp_path: Path) -> None:
    store = MemoryStore()
    a, b, c, d = (lease_plan(name, 200_000) for name in "abcd")
    for plan in (a, b, c, d):
        assert store.reserve(plan, None).allowed
    spool = Spool(tmp_path)
    marks = SliceMarks(spool)
    for plan in (a, b, c, d):
        marks.mark(plan.reservation_id, (0, 0, 0), NOW)  # before its reserve
    marks.mark(a.reservation_id, (25_000, 3, 0), NOW)
    marks.mark(a.reservation_id, (75_000, 8, 0), NOW)  # a: calls served up to here
    # b: settled by its holder at what it cost, which died before the mark's done line.
    marks.mark(b.reservation_id, (50_000, 5, 0), NOW)
    assert store.settle(b.reservation_id, {Unit.USD: 41_000, Unit.CALLS: 4}, NOW, None).applied
    # c: the next slice, reserved and never used. d: its settle was queued (the store was away).
    marks.mark(d.reservation_id, (25_000, 3, 0), NOW)
    spool.append([Entry(spool.next_seq(), d.reservation_id, NOW, settle=True, actual={Unit.USD: 17_000})])
    assert counted(store, a) == (41_000, 600_000)

    # While the holder lives, its segment is never taken: the slices count whole.
    alive = adopter(store, tmp_path)
    assert alive.flush() == 0
    assert counted(store, a) == (41_000, 600_000)
    alive.close(1.0)

    die(spool)
    late = adopter(store, tmp_path)
    assert late.flush() == 4  # a, b (a no-op: settled already), c at 0, d at what it really cost
    assert counted(store, a) == (75_000 + 41_000 + 0 + 17_000, 0)
    row = month_row(store, a)
    assert (row.leased, row.holders) == (0, 0)
    late.close(1.0)
    assert list(tmp_path.glob("*.jsonl")) == []
    assert adopter(store, tmp_path).flush() == 0  # nothing left for anyone


# ----------------------------------------------------------------------------- the guard's hot path
class LeasingMemory(MemoryStore):
    """A memory store that leases, as a server would: the guard's slices, marks and settles, in-process."""

    leases = True

    @property
    def identity(self) -> str:
        return "memory://leasing-test"


def a_guard(tmp_path: Path, store: MemoryStore | None = None) -> Guard:
    return make_guard(CAP, store=store or LeasingMemory(), spool_dir=str(tmp_path), clock=FakeClock(NOW))


def live_slices(guard: Guard) -> list[tuple[Slice, dict[str, dict[Unit, int]]]]:
    """The live slices and the marks on disk, read under the leases' lock (the background thread
    installs the next slice and settles the last one meanwhile)."""
    leases = guard.calls.leases
    assert leases is not None
    with leases._lock:
        slices = leases.book.slices()
        return [(s, on_disk(leases.marks.spool.directory)) for s in slices]  # type: ignore[union-attr]


def test_the_mark_on_disk_covers_what_each_slice_used_after_every_call(tmp_path: Path) -> None:
    """Calls costing less and more than their estimate: after every call (and before each is served, as
    `used` counts it then) the slice's mark on disk is at least what it used and at most a step above."""
    store = LeasingMemory()
    guard = a_guard(tmp_path, store)
    costs = [0.004, 0.03, 0.01, 0.012] * 100
    try:
        for cost in costs:
            with guard.reserve("f", estimate_usd=0.01) as r:
                for s, marks in live_slices(guard):
                    mark = marks[s.lease_id]
                    assert [mark[Unit.USD], mark[Unit.CALLS]] == s.marked[:2]
                    assert s.marked[0] >= s.used[0] and s.marked[1] >= s.used[1]
                r.commit(cost)
            for s, marks in live_slices(guard):
                assert marks[s.lease_id][Unit.USD] >= s.used[0]  # 0.03 > 0.01: marked on commit
        assert live_slices(guard), "400 calls made no slice"
    finally:
        guard.close()
    assert list(tmp_path.glob("*.jsonl")) == []  # every slice settled: every mark done
    (row,) = make_guard(CAP, store=store, spool_dir=False, leases=False).status().ceilings
    assert (round(row.spent * 1_000_000), row.reserved) == (100 * 56_000, 0)


def test_a_mark_is_written_once_per_step_not_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, tuple[int, ...]]] = []
    real = SliceMarks.mark

    def counting(self: SliceMarks, lease_id: str, upto: tuple[int, ...], at: float) -> None:
        written.append((lease_id, tuple(upto)))
        real(self, lease_id, upto, at)

    monkeypatch.setattr(SliceMarks, "mark", counting)
    guard = a_guard(tmp_path)
    try:
        # Until three slices were taken (how many calls that is depends on how soon the background thread
        # reserves the next one: calls between a slice's end and the next go to the store one by one).
        calls = 0
        while len({lease_id for lease_id, _ in written}) < 3:
            assert calls < 5_000, "5 000 calls took fewer than three slices"
            with guard.reserve("f", estimate_usd=0.01) as r:
                r.commit(0.01)
            calls += 1
        leased = {lease_id for lease_id, _ in written}
        # One mark of 0 before each slice's reserve, then at most one per eighth of the slice.
        assert len(written) <= len(leased) * (1 + MARK_STEPS)
        assert len(written) < calls / 10
    finally:
        guard.close()


def test_a_mark_the_disk_refuses_sends_the_call_to_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LeasingMemory()
    guard = a_guard(tmp_path, store)
    try:
        for _ in range(40):
            with guard.reserve("f", estimate_usd=0.01) as r:
                r.commit(0.01)
        ((held, _),) = live_slices(guard)
        while held.used[0] + 10_000 <= held.marked[0]:  # up to the mark: the next call needs a new one
            with guard.reserve("f", estimate_usd=0.01) as r:
                r.commit(0.01)
        used = list(held.used)

        def refuse(*_: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Spool, "replace", refuse)
        with guard.reserve("f", estimate_usd=0.01) as r:
            assert r.plan.reservation_id in store._reservations  # reserved in the store, one by one
            r.commit(0.01)
        assert held.retired and held.used == used  # given back, no more calls from it
        assert held not in [s for s, _ in live_slices(guard)]
    finally:
        monkeypatch.undo()
        guard.close()
