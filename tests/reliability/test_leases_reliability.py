"""Leased counters when things go wrong: a process killed while it holds slices leaves them counted
whole until the next process adopts its spool, then committed at their marks — over-counting by less
than one step of a mark per group, never under-counting; a Redis outage while a slice is held loses
nothing."""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import workers

from costguard import Guard
from helpers import usd_ceiling
from stores.redis_server import RedisServer

SPAWN = multiprocessing.get_context("spawn")


# What the killed holder's calls cost: some below their $0.01 estimate, some above (a mark follows the
# actual cost when it passes the estimate), $2.97 in all.
VICTIM_COSTS = [4_000, 8_000, 12_000, 9_000, 11_000, 10_000] * 55


def test_a_killed_holder_is_settled_at_its_marks_never_less(fleet_store_url: str, tmp_path: Path) -> None:
    """A process SIGKILLed holding slices, one of them partly used: until another process adopts its
    spool, its slices count whole; then each is committed at its last mark — exactly what its calls
    spent plus less than one step of a mark, never less — and nothing stays reserved."""
    ready, spool = tmp_path / "ready", tmp_path / "spool"
    victim = SPAWN.Process(
        target=workers.lease_and_die, args=(fleet_store_url, 100_000_000, VICTIM_COSTS, str(ready), str(spool))
    )
    victim.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline, "the victim never finished its calls"
        assert victim.is_alive(), "the victim died early"
        time.sleep(0.05)
    held: dict[str, dict[str, int]] = ast.literal_eval(ready.read_text())
    assert held, "330 calls of one feature made no slice"
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    spent = sum(VICTIM_COSTS)
    guard = workers.guard_for(fleet_store_url, 100_000_000, leases=False, spool_dir=False)
    try:
        for row in guard.status().ceilings:
            counted = round(row.spent * 1_000_000)  # spent counts what is reserved, slices included
            # Never less than what was spent, and at most the unused part of the slices it held more
            assert spent <= counted <= spent + held[row.ceiling]["unused"], (row, held)
    finally:
        guard.close()
    adopter = workers.guard_for(fleet_store_url, 100_000_000, leases=False, spool_dir=str(spool))
    try:
        assert adopter.flush(10.0)  # the first flush writes the spools of processes that died
        for row in adopter.status().ceilings:
            over = held[row.ceiling]["over"]
            assert 0 <= over <= held[row.ceiling]["step"], (row, held)
            assert round(row.spent * 1_000_000) == spent + over, (row, held)
            assert row.reserved == 0, row
    finally:
        adopter.close()
    assert list(spool.glob("*.jsonl")) == []


@pytest.mark.redis
def test_a_slice_held_through_a_redis_outage_loses_nothing(tmp_path: Path) -> None:
    """A hot feature's slice keeps serving while Redis is down; when it expires its settlement waits in
    the spool, the calls after it are admitted within the outage allowance, and once Redis is back
    the store has exactly what every call cost."""
    server = RedisServer(workdir=tmp_path, extra=("--appendonly", "yes", "--appendfsync", "always")).start()
    url = f"{server.url}?timeout_ms=100&breaker_s=0.3"
    cap = usd_ceiling({"feature": "chat"}, month=100.0)
    guard = Guard(url, ceilings=[cap], lease_period_ms=300, spool_dir=str(tmp_path / "spool"))
    try:
        leases = guard.calls.leases
        assert leases is not None
        calls, until = 0, time.monotonic() + 10
        # The feature's rate makes it hot, and a background thread reserves its slice: on a loaded machine
        # that may take more than the first 50 calls.
        while calls < 50 or not leases.book.slices():
            assert time.monotonic() < until, f"{calls} calls of one feature made no slice"
            with guard.reserve("chat", estimate_usd=0.01) as r:
                r.commit(0.01)
            calls += 1
        server.stop()
        for _ in range(30):  # from the slice while it lasts, then without a reservation ($1 allowance)
            with guard.reserve("chat", estimate_usd=0.01) as r:
                r.commit(0.01)
        time.sleep(0.5)  # the slice expires: its settlement can't be written, it is queued and spooled
        for _ in range(10):
            with guard.reserve("chat", estimate_usd=0.01) as r:
                r.commit(0.01)
        assert guard.pending > 0
        server.start()
        deadline = time.monotonic() + 10
        while not guard.flush(1.0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert guard.pending == 0
        (row,) = guard.status(feature="chat").ceilings
        # Every call at $0.01: nothing lost, nothing twice.
        assert (round(row.spent * 100), row.reserved) == (calls + 40, 0.0)
    finally:
        guard.close(timeout=1)
        server.stop()
