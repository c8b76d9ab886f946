"""`commit: background`: commits leave the request path, go out in batches, and are never lost on close."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from costguard import BudgetExceeded, FeatureSettings, Guard
from costguard.engine import CommitOutcome
from costguard.errors import StoreError
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores import MemoryStore
from costguard.testing import FakeClock, RecordingNotifier
from helpers import FlakyStore, make_guard, usd_ceiling

Item = tuple[str, Mapping[Unit, int] | None, float, AuditRecord | None]


class GatedStore(MemoryStore):
    """Records batch sizes; the first batch waits until `gate` is set, so commits pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.settles = 0

    def settle(self, *args, **kwargs) -> CommitOutcome:  # type: ignore[no-untyped-def]
        self.settles += 1
        return super().settle(*args, **kwargs)

    def settle_many(self, items: Sequence[Item]) -> list[CommitOutcome | StoreError]:
        self.gate.wait(10)
        self.batches.append(len(items))
        return super().settle_many(items)


def spent(guard: Guard) -> float:
    (row,) = guard.status(feature="f").ceilings
    return row.spent


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_commit_returns_before_the_store_write_and_batches_follow() -> None:
    store = GatedStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, commit="background")
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.02) as r:
            r.commit(0.01)
    # Nothing is settled yet (the worker is held at the gate), but every estimate is counted.
    assert store.settles == 0
    assert spent(guard) == pytest.approx(1.0)
    assert guard.pending == 50
    store.gate.set()
    wait_until(lambda: guard.pending == 0)
    assert spent(guard) == pytest.approx(0.5)
    assert sum(store.batches) == 50
    assert len(store.batches) < 50  # batched: commits that piled up went out together
    assert max(store.batches) > 1
    guard.close()


def test_batch_size_is_bounded() -> None:
    store = GatedStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, commit="background", commit_batch=8)
    for _ in range(30):
        with guard.reserve("f", estimate_usd=0.02) as r:
            r.commit(0.01)
    store.gate.set()
    guard.flush()
    assert max(store.batches) <= 8
    assert sum(store.batches) == 30
    guard.close()


def test_close_writes_every_queued_commit() -> None:
    store = MemoryStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, commit="background")
    plans = []
    for _ in range(100):
        with guard.reserve("f", estimate_usd=0.05) as r:
            plans.append(r.plan)
            r.commit(0.01)
    guard.close()
    assert store.totals([plans[0].counters[0].key]) == [1_000_000]  # 100 of $0.01, no estimate left


def test_crossings_from_background_commits_alert_once() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), notifier=notifier, commit="background")
    for _ in range(4):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.3)  # the estimate is small; the actual cost is what crosses 80 % and 100 %
    guard.flush()
    assert [(e.kind, e.threshold) for e in notifier.events] == [("warn", 0.8), ("kill", 1.0)]
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", estimate_usd=0.01)
    guard.close()


def test_release_goes_through_the_background_too() -> None:
    store = MemoryStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), store=store, commit="background")

    def boom() -> None:
        raise RuntimeError("model timed out")

    decorated = guard.with_kill_switch("f", estimate=0.1)(boom)
    for _ in range(5):
        with pytest.raises(RuntimeError):
            decorated()
    guard.flush()
    assert spent(guard) == 0
    guard.close()


def test_store_outage_keeps_commits_until_it_returns() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, commit="background")
    reservations = [guard.reserve("f", estimate_usd=0.05) for _ in range(10)]
    store.down = True
    for r in reservations:
        r.commit(0.01)
    time.sleep(0.2)  # the worker tries, fails and backs off
    assert guard.pending == 10
    store.down = False
    wait_until(lambda: guard.pending == 0)
    assert spent(guard) == pytest.approx(0.1)
    guard.close()


def test_per_feature_setting_wins() -> None:
    store = GatedStore()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, day=10.0),
        usd_ceiling({"feature": "g"}, day=10.0),
        store=store,
        features={"g": FeatureSettings(commit="sync")},
        commit="background",
    )
    with guard.reserve("g", estimate_usd=0.02) as r:
        r.commit(0.01)  # sync: settled before it returns, no batch involved
    assert store.settles == 1
    assert store.batches == []
    store.gate.set()
    guard.close()


def test_async_commit_in_background() -> None:
    store = MemoryStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, commit="background")

    async def main() -> None:
        for _ in range(20):
            async with guard.areserve("f", estimate_usd=0.05) as r:
                await r.acommit(0.01)

    asyncio.run(main())
    guard.flush()
    assert spent(guard) == pytest.approx(0.2)
    guard.close()


def test_config_key(tmp_path: Path) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text("store: memory://\ncommit: background\nfeatures:\n  f: {daily_usd: 1, commit: sync}\n")
    guard = Guard.from_yaml(path, clock=FakeClock())
    assert guard.commit_mode == "background"
    assert guard.feature("f").commit == "sync"
    guard.close()


def test_a_crash_leaves_the_estimate_counted_and_the_spool_brings_the_actual_costs(tmp_path: Path) -> None:
    db = tmp_path / "costguard.db"
    spool = tmp_path / "spool"
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import os
            from costguard import Ceiling, Guard, Limit, Period, Unit
            from costguard.model import make_match

            cap = Ceiling(make_match({{"feature": "f"}}), (Limit(Period.DAY, Unit.USD, 10_000_000),))
            guard = Guard("sqlite:///{db}", ceilings=[cap], commit="background", spool_dir="{spool}")
            guard._settlement._flush_lock.acquire()  # hold the writer off, as if the process died mid-batch
            for _ in range(10):
                with guard.reserve("f", estimate_usd=0.05) as r:
                    r.commit(0.01)
            os._exit(0)  # a crash: no close, no exit hooks
            """
        )
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    guard = Guard(f"sqlite:///{db}", ceilings=[usd_ceiling({"feature": "f"}, day=10.0)], spool_dir=spool)
    (row,) = guard.status(feature="f").ceilings
    assert row.spent == pytest.approx(0.5)  # the estimates, never less
    assert guard.flush()  # this process finds the dead one's spool and writes its commits, once
    (row,) = guard.status(feature="f").ceilings
    assert (row.spent, row.reserved) == (0.1, 0.0)
    assert list(spool.iterdir()) == []  # the dead process's segment is gone
    assert guard.flush()
    assert guard.status(feature="f").ceilings[0].spent == 0.1  # and a second look writes nothing twice
    guard.close()
