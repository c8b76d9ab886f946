"""The burst of `tests/reliability/test_load.py`, timed: 8 processes x 32 threads against a $10.00 cap at
$0.01 a call (12 attempts each: 3 072 for 1 000 calls of room), default settings, with a CPU hog on
every core (and `--hogs N` more). Prints the calls that ran, the refusals by reason, and each guarded
call's latency — p50, p99 and max — which is what the store deadline (2 s) sees: a call past it
follows `on_store_error`, so the max is the margin the cap's exactness has under this load.

    .venv/bin/python benchmarks/burst.py [--store URL] [--hogs 0] [--rounds 3] [--deadline-ms 2000]

`--deadline-ms` sets the guards' `store_deadline_ms`: a short one plays a machine too slow for the
default, where calls miss the deadline and the overload-or-outage question decides them. "recorded" is
what the cap holds once every process has closed and what they left is written: $10.00 exactly when
1 000 calls fit, never more.

The store defaults to `COSTGUARD_BENCH_POSTGRES_URL` (else the test URL; skipped without either); each
round gets a fresh table prefix (PostgreSQL), namespace (Redis) or file (SQLite). Compare checkouts
with `PYTHONPATH=<checkout>/src`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SPAWN = multiprocessing.get_context("spawn")
PROCESSES, THREADS, ATTEMPTS, CAP = 8, 32, 12, 10_000_000


def _ceiling() -> Any:
    from costguard import Ceiling, Limit, Period, Unit
    from costguard.model import make_match

    return Ceiling(make_match({"feature": "race"}), (Limit(Period.MONTH, Unit.USD, CAP),))


def _worker(url: str, deadline_ms: float, start: Any, results: Any) -> None:
    from costguard import Blocked, Guard, Priced

    guard = Guard(url, ceilings=[_ceiling()], store_deadline_ms=deadline_ms)

    @guard.with_kill_switch("race", estimate=0.01)
    def paid_call() -> Priced[str]:
        return Priced("answer", 0.01)

    latencies: list[float] = []
    refused: dict[str, int] = {}
    ran = [0]
    lock = threading.Lock()
    ready = threading.Barrier(THREADS + 1)

    def loop() -> None:
        ready.wait()
        for _ in range(ATTEMPTS):
            began = time.monotonic()
            reason = None
            try:
                paid_call()
            except Blocked as blocked:
                reason = blocked.decision.reason
            took = time.monotonic() - began
            with lock:
                latencies.append(took)
                if reason is None:
                    ran[0] += 1
                else:
                    refused[reason] = refused.get(reason, 0) + 1

    threads = [threading.Thread(target=loop) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    ready.wait()
    for thread in threads:
        thread.join()
    guard.close()
    results.put((ran[0], refused, latencies))


def _hog(stop: Any) -> None:
    while not stop.is_set():
        pass


def _fresh(url: str) -> str:
    tag = uuid.uuid4().hex[:8]
    if url.startswith("sqlite"):
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix='costguard-burst-')) / 'burst.db'}"
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{'namespace' if url.startswith('redis') else 'prefix'}=burst{tag}_"


def recorded(url: str) -> float:
    """The cap's spend once what the processes left (spooled costs, releases) is written."""
    from costguard import Guard

    guard = Guard(url, ceilings=[_ceiling()], leases=False)
    try:
        guard.flush(30.0)
        (row,) = guard.status(feature="race").ceilings
        return row.spent
    finally:
        guard.close()


def one_round(url: str, hogs: int, deadline_ms: float) -> tuple[int, dict[str, int], list[float]]:
    stop = SPAWN.Event()
    hog_procs = [SPAWN.Process(target=_hog, args=(stop,), daemon=True) for _ in range(hogs)]
    for process in hog_procs:
        process.start()
    start = SPAWN.Barrier(PROCESSES)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_worker, args=(url, deadline_ms, start, results)) for _ in range(PROCESSES)]
    try:
        for process in procs:
            process.start()
        outcomes = []
        while len(outcomes) < len(procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                raise SystemExit("a worker failed (its traceback is above)")
            try:
                outcomes.append(results.get(timeout=1))
            except queue.Empty:
                continue
        for process in procs:
            process.join(60)
    finally:
        stop.set()
        for process in hog_procs:
            process.join(10)
    refused: dict[str, int] = {}
    for _, reasons, _ in outcomes:
        for reason, count in reasons.items():
            refused[reason] = refused.get(reason, 0) + count
    latencies = sorted(x for _, _, lat in outcomes for x in lat)
    return sum(ran for ran, _, _ in outcomes), refused, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL", "")
    parser.add_argument("--store", default=default)
    parser.add_argument("--hogs", type=int, default=0, help="CPU hogs beyond one per core")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline-ms", type=float, default=2000.0, help="the guards' store_deadline_ms")
    args = parser.parse_args()
    if not args.store:
        print("burst: skipped (no URL: give --store, or set COSTGUARD_BENCH_POSTGRES_URL)")
        return
    hogs = (os.cpu_count() or 2) + args.hogs
    print(f"8 x 32 threads, $10.00 cap at $0.01, {hogs} CPU hogs, store_deadline_ms {args.deadline_ms:g}")
    print(f"{'round':>5} {'ran':>5} {'refused':<50} {'recorded':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for index in range(args.rounds):
        url = _fresh(args.store)
        ran, refused, lat = one_round(url, hogs, args.deadline_ms)
        spent = recorded(url)
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        shown = ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
        print(
            f"{index + 1:>5} {ran:>5} {shown:<50} {spent:>8.2f} {p50 * 1000:>7.0f} {p99 * 1000:>7.0f} "
            f"{lat[-1] * 1000:>7.0f}"
        )


if __name__ == "__main__":
    main()
