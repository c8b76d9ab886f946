"""A process killed while it holds slices of leased counters: the store over-counts by at most the
unused part of one slice per group, and never under-counts."""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import time
from pathlib import Path

import workers

SPAWN = multiprocessing.get_context("spawn")


def test_a_killed_holder_leaves_its_slices_counted_never_less(fleet_store_url: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    victim = SPAWN.Process(target=workers.lease_and_die, args=(fleet_store_url, 100_000_000, 300, str(ready)))
    victim.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline, "the victim never finished its calls"
        assert victim.is_alive(), "the victim died early"
        time.sleep(0.05)
    unused: dict[str, int] = ast.literal_eval(ready.read_text())
    assert unused, "300 calls of one feature made no slice"
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    guard = workers.guard_for(fleet_store_url, 100_000_000, leases=False)
    for row in guard.status().ceilings:
        counted = round(row.spent * 1_000_000)  # spent counts what is reserved, slices included
        # $3.00 spent: never less, and at most the unused part of the ceiling's slice more
        assert 3_000_000 <= counted <= 3_000_000 + unused.get(row.ceiling, 0), (row, unused)
    guard.close()
