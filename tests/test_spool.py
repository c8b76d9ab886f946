"""The outage spool: entries survive as JSON lines, segments are emptied or deleted once written, and a
dead process's segments are found, locked and finished by the next one. Nothing read back is executed."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from costguard import engine
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.spool import Entry, Spool, decode, default_spool_dir, encode
from helpers import usd_ceiling


def a_plan() -> engine.ReservePlan:
    return engine.plan_reservation(
        reservation_id="r-1",
        ceilings=[usd_ceiling({"feature": "f"}, month=1.0, day=0.5), usd_ceiling({"customer": "*"}, month=0.3)],
        overrides={},
        labels={"feature": "f", "customer": "acme"},
        amounts={Unit.USD: 20_000, Unit.CALLS: 1, Unit.TOKENS: 0},
        now=1_780_000_000.0,
        tz=ZoneInfo("UTC"),
        thresholds=(0.8, 1.0),
        force=True,
    )


def entries(spool: Spool, count: int) -> list[Entry]:
    return [
        Entry(spool.next_seq(), f"r{i}", 1_780_000_000.0 + i, settle=True, actual={Unit.USD: i}) for i in range(count)
    ]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def test_an_entry_round_trips_as_one_json_line() -> None:
    plan = a_plan()
    record = AuditRecord(1_780_000_000.5, "commit", {"feature": "f", "customer": "é"}, plan.reservation_id, {"x": [1]})
    entry = Entry(
        7,
        plan.reservation_id,
        plan.at,
        plan=plan,
        settle=True,
        actual={Unit.USD: 13_000, Unit.CALLS: 1},
        record=record,
        feature="f",
        unreserved=20_000,
    )
    line = encode(entry)
    assert line.endswith("\n") and "\n" not in line[:-1]
    back = decode(line)
    assert back.plan == plan and back.plan.force
    assert (back.seq, back.reservation_id, back.settle, back.actual, back.record) == (
        7,
        plan.reservation_id,
        True,
        {Unit.USD: 13_000, Unit.CALLS: 1},
        record,
    )
    release = decode(encode(Entry(8, "r", 1.0, settle=True)))
    assert (release.settle, release.actual, release.plan) == (True, None, None)


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"seq": "1", "id": "r", "at": 1, "settle": null}',
        '{"seq": 1, "id": 2, "at": 1, "settle": null}',
        '{"seq": 1, "id": "r", "at": "now", "settle": null}',
        '{"seq": 1, "id": "r", "at": 1}',
        '{"seq": 1, "id": "r", "at": 1, "settle": {"usd": 1.5}}',
        '{"seq": 1, "id": "r", "at": 1, "settle": {"euro": 1}}',
        '{"seq": 1, "id": "r", "at": 1, "plan": {"counters": [["k"]], "estimate": 1, "at": 1, "labels": []}}',
        '{"seq": 1, "id": "r", "at": 1, "settle": null, "record": "x"}',
        json.dumps({"seq": 1, "id": "r", "at": 1, "settle": None, "pickle": pickle.dumps(os.system).hex()}) + "x",
    ],
)
def test_a_malformed_line_is_a_value_error(line: str) -> None:
    with pytest.raises(ValueError):
        decode(line)


def test_written_entries_empty_the_segment_and_a_closed_spool_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = entries(spool, 3)
    spool.append(first)
    (segment,) = segments(tmp_path)
    assert len(segment.read_text().splitlines()) == 3
    spool.done(first[:1])
    assert spool.outstanding == 2
    assert json.loads(segment.read_text().splitlines()[-1]) == {"done": [first[0].seq]}
    spool.done(first[1:])
    assert segment.read_text() == ""  # all written: the file starts again
    spool.append(entries(spool, 1))
    assert len(segment.read_text().splitlines()) == 1
    spool.done([])
    spool.close()
    assert segments(tmp_path) == [segment]  # one entry still owed: kept for the next process
    spool = Spool(tmp_path)
    (orphan,) = spool.orphans()
    orphan.done(orphan.entries)
    orphan.finish()
    assert segments(tmp_path) == []


def test_a_full_segment_rolls_over_and_is_deleted_once_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    old = entries(spool, 3)  # > 100 bytes: the next append opens a new segment
    spool.append(old)
    new = entries(spool, 1)
    spool.append(new)
    assert len(segments(tmp_path)) == 2
    spool.done(old)
    assert len(segments(tmp_path)) == 1  # the old one, fully written, is gone
    spool.done(new)
    spool.close()
    assert segments(tmp_path) == []


def test_a_live_processs_segment_is_never_taken(tmp_path: Path) -> None:
    live = Spool(tmp_path)
    live.append(entries(live, 2))
    other = Spool(tmp_path)
    assert list(other.orphans()) == []  # locked by its writer
    live.close()
    (orphan,) = other.orphans()  # its writer let go with two entries owed
    assert [e.reservation_id for e in orphan.entries] == ["r0", "r1"]
    assert list(Spool(tmp_path).orphans()) == []  # and now this one holds it
    orphan.done(orphan.entries[:1])
    orphan.finish()  # one still owed: the segment stays, unlocked
    (again,) = Spool(tmp_path).orphans()
    assert [e.reservation_id for e in again.entries] == ["r1"]  # the done line kept the first from going twice
    again.done(again.entries)
    again.finish()
    assert segments(tmp_path) == []


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Spool(tmp_path)
    dead.append(entries(dead, 2))
    dead.close()
    (segment,) = segments(tmp_path)
    with segment.open("a") as file:
        file.write('{"seq": 99, "id": "cut", "at": 1, "set')
    with caplog.at_level(logging.WARNING, logger="costguard"):
        (orphan,) = Spool(tmp_path).orphans()
    assert [e.reservation_id for e in orphan.entries] == ["r0", "r1"]
    assert "line 3 skipped" in caplog.text
    orphan.finish()


def test_the_default_directory_is_per_store_and_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTGUARD_SPOOL_DIR", str(tmp_path))
    one, two = default_spool_dir("redis://h:6379/0#a"), default_spool_dir("redis://h:6379/0#b")
    assert one.parent == two.parent == tmp_path
    assert one != two
    monkeypatch.delenv("COSTGUARD_SPOOL_DIR")
    assert "costguard" in str(default_spool_dir("x"))
