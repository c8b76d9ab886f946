"""The Redis store's overhead: a guarded call against raw EVALSHA and the `limits` library, sync and async.

    .venv/bin/python benchmarks/redis_bench.py [--calls 5000] [--rounds 5] [--profile]

Starts its own redis-server on a free 127.0.0.1 port pinned to CPU 1 (`taskset -c 1`), pins
itself to CPU 0, and measures medians (after a warm-up, rounds interleaved so background load
hits every series alike) of:

  (a1) one raw EVALSHA of a trivial script (`INCRBY`) from redis-py
  (a)  two of them: the floor for a call that reserves before and commits after
  (b)  a call through `Guard.with_kill_switch` matching 3 ceilings x 2 periods (6 counters, plus
       the 3 hourly history counters forecasts ride along): one EVALSHA to reserve, one to commit
  (c)  `limits`' FixedWindowRateLimiter.hit on the same server (one EVALSHA, one counter)

and async throughput with 64 tasks: `await guarded()` against raw `redis.asyncio` EVALSHA pairs.
Targets: (b)/(a) <= 1.3 and async guarded >= 80 % of raw. `--profile` prints a cProfile of (b).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata

import redis
import redis.asyncio

from costguard import Ceiling, Guard, Limit, Period, Priced, Unit
from costguard.model import make_match

# Per-call reservations, the figures docs/performance.md gives for this script (leased calls:
# hot_row.py and overhead.py --leases); an older checkout has no `leases` option.
PER_CALL = {"leases": False} if "leases" in inspect.signature(Guard).parameters else {}

LIMITS = (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
CEILINGS = [
    Ceiling(make_match({"feature": "chat"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "customer": "*"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "team": "*"}), LIMITS),
]
LABELS = {"customer": "acme", "team": "search"}
FLOOR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
TASKS = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        args = ["taskset", "-c", "1", *args]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return process
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"redis-server did not start on port {port}") from None
            time.sleep(0.02)


def machine(port: int) -> dict[str, str]:
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    except OSError:
        pass
    server = redis.Redis(port=port).info("server")
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU": model,
        "Python": platform.python_version(),
        "redis-server": str(server["redis_version"]),
        "redis-py": redis.__version__,
        "hiredis": metadata.version("hiredis") if _installed("hiredis") else "not installed",
        "limits": metadata.version("limits"),
        "costguard": metadata.version("costguard-ai"),
    }


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def timed(fn: Callable[[], object], calls: int, samples: list[float]) -> float:
    """Appends each call's wall time to `samples`; returns the process CPU time the calls used."""
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return time.process_time() - cpu


def server_us(port: int, fn: Callable[[], object], calls: int) -> float:
    """Redis CPU per call of `fn` (INFO commandstats: EVALSHA calls x usec_per_call)."""
    client = redis.Redis(port=port)
    client.config_resetstat()
    for _ in range(calls):
        fn()
    stats = client.info("commandstats")
    client.close()
    return sum(float(v["usec"]) for k, v in stats.items() if k == "cmdstat_evalsha") / calls


def build(port: int) -> dict[str, Callable[[], object]]:
    client = redis.Redis(port=port)
    sha = client.script_load(FLOOR_SCRIPT)

    def one() -> None:
        client.evalsha(sha, 1, "{floor}:k", 2000)

    def two() -> None:
        client.evalsha(sha, 1, "{floor}:k", 2000)
        client.evalsha(sha, 1, "{floor}:k", -500)

    guard = Guard(f"redis://127.0.0.1:{port}/0?namespace=bench", ceilings=CEILINGS, **PER_CALL)

    @guard.with_kill_switch("chat", estimate=0.002, labels=LABELS)
    def guarded() -> Priced[int]:
        return Priced(1, 0.0015)

    from limits import RateLimitItemPerSecond
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(storage_from_string(f"redis://127.0.0.1:{port}"))
    item = RateLimitItemPerSecond(10**9)

    def limits_hit() -> None:
        limiter.hit(item, "chat", "acme")

    return {"a1": one, "a": two, "b": guarded, "c": limits_hit}


async def throughput(port: int, seconds: float, leased: bool = False) -> tuple[float, float]:
    """Calls per second with TASKS concurrent tasks: guarded calls, and raw EVALSHA pairs (with
    `leased`, leases on and one raw EVALSHA per call: issue 16's floor for a leased hot feature)."""
    client = redis.asyncio.Redis(port=port)
    sha = await client.script_load(FLOOR_SCRIPT)

    async def raw_pair() -> None:
        await client.evalsha(sha, 1, "{floor}:k", 2000)
        if not leased:
            await client.evalsha(sha, 1, "{floor}:k", -500)

    options = {} if leased else PER_CALL
    guard = Guard(f"redis://127.0.0.1:{port}/0?namespace=abench&timeout_ms=5000", ceilings=CEILINGS, **options)

    @guard.with_kill_switch("chat", estimate=0.002, labels=LABELS)
    async def guarded() -> Priced[int]:
        return Priced(1, 0.0015)

    async def rate(op: Callable[[], Awaitable[object]]) -> float:
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await op()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(TASKS)))
        return done / (time.perf_counter() - started)

    await rate(raw_pair)  # warm-up: connections for every task
    await rate(guarded)
    raw_rates, guarded_rates = [], []
    for _ in range(3):
        raw_rates.append(await rate(raw_pair))
        guarded_rates.append(await rate(guarded))
    store = guard.store
    await store.aclose()  # type: ignore[attr-defined]
    guard.close()
    await client.aclose()
    return statistics.median(guarded_rates), statistics.median(raw_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per series per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per async throughput run")
    parser.add_argument("--profile", action="store_true", help="cProfile the guarded call")
    parser.add_argument(
        "--async-leased",
        action="store_true",
        help="only the async throughput, leases on, against one raw EVALSHA per call (issue 16's target)",
    )
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    port = free_port()
    server = start_server(port)
    if args.async_leased:
        try:
            guarded_rate, raw_rate = asyncio.run(throughput(port, args.seconds, leased=True))
        finally:
            server.kill()
            server.wait()
        print(f"| async, {TASKS} tasks, leases on | calls/s |\n|---|---:|")
        print(f"| raw redis.asyncio EVALSHA | {raw_rate:,.0f} |")
        print(f"| await guarded() | {guarded_rate:,.0f} |")
        print(f"| guarded / raw | {guarded_rate / raw_rate:.0%} (target >= 80 %) |")
        return
    try:
        info = machine(port)
        series = build(port)
        for fn in series.values():  # warm-up: connections, scripts, caches
            for _ in range(500):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in series}
        cpu: dict[str, float] = dict.fromkeys(series, 0.0)
        for _ in range(args.rounds):
            for name, fn in series.items():
                cpu[name] += timed(fn, args.calls, samples[name])
        us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
        client_us = {name: used / (args.calls * args.rounds) * 1e6 for name, used in cpu.items()}
        redis_us = {name: server_us(port, series[name], args.calls) for name in ("a", "b")}
        guarded_rate, raw_rate = asyncio.run(throughput(port, args.seconds))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(timed, series["b"], args.calls, [])
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    finally:
        server.kill()
        server.wait()

    print("| machine | |\n|---|---|")
    for key, value in info.items():
        print(f"| {key} | {value} |")
    n = args.calls * args.rounds
    print(f"\n| series (median of {n} calls) | µs |\n|---|---:|")
    print(f"| (a1) one raw EVALSHA | {us['a1']:.1f} |")
    print(f"| (a) two raw EVALSHA (floor) | {us['a']:.1f} |")
    print(f"| (b) guarded call, 3 ceilings x 2 periods | {us['b']:.1f} |")
    print(f"| (c) limits FixedWindowRateLimiter.hit | {us['c']:.1f} |")
    print("\n| where the time of one call goes | (a) floor | (b) guarded |\n|---|---:|---:|")
    print(f"| client CPU (Python, redis-py), µs | {client_us['a']:.1f} | {client_us['b']:.1f} |")
    print(f"| Redis CPU (the scripts), µs | {redis_us['a']:.1f} | {redis_us['b']:.1f} |")
    rest_a = us["a"] - client_us["a"] - redis_us["a"]
    rest_b = us["b"] - client_us["b"] - redis_us["b"]
    print(f"| the rest (network, wake-ups), µs | {rest_a:.1f} | {rest_b:.1f} |")
    print("\n| ratio | value | target |\n|---|---:|---:|")
    print(f"| (b)/(a) | {us['b'] / us['a']:.2f} | <= 1.30 |")
    print(f"| (b)/(c) | {us['b'] / us['c']:.2f} | |")
    print(f"| (b)/(a1) | {us['b'] / us['a1']:.2f} | |")
    print(f"\n| async, {TASKS} tasks | calls/s |\n|---|---:|")
    print(f"| raw redis.asyncio EVALSHA pairs | {raw_rate:,.0f} |")
    print(f"| await guarded() | {guarded_rate:,.0f} |")
    print(f"| guarded / raw | {guarded_rate / raw_rate:.0%} (target >= 80 %) |")


if __name__ == "__main__":
    main()
