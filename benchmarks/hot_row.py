"""One hot feature under load: 8 processes x N threads calling one guarded feature, against the raw
throughput of one hot row (PostgreSQL `UPDATE … SET v = v + 1`) or key (Redis `EVALSHA` INCRBY)
at the same concurrency, with latency percentiles, calls that did not get a reservation, and the
store operations each guarded call costs.

    .venv/bin/python benchmarks/hot_row.py [--stores postgres,redis,sqlite] [--processes 8] [--threads 8]
                                           [--seconds 5] [--warmup 2] [--leases both|on|off] [--rounds 1]
                                           [--keep]

Every call goes through `with_kill_switch` on one feature ceiling (month and day limits, and its
history counter) with default settings, and commits its cost. `--leases` runs the guarded series
with `Guard(..., leases=False)` (a reserve and a commit in the store per call), with leases on (a
hot counter group served from slices reserved in the store), or both, side by side in one run;
SQLite never leases, so it is run once.

Each series runs `--warmup` seconds before its measured window of `--seconds` (the callers don't
stop in between): rates, latencies and store operations are of the window only, at steady state.
"unreserved" counts calls that ran without a reservation or were refused because the store did not
answer in time: under load both should be 0. `--rounds N` runs each store's series (its floor, then
the guarded ones) N times in turn and ends with the median of the per-round ratios: other work on
the machine moves the rates from one series to the next, and a ratio within a round is steadier.

Store operations per call over the window ("ops/call") are counted in the workers: every command
redis-py sends (a pipeline's each one), every statement psycopg executes (for the raw floors,
one per call). The server's own counters give the column "server" as a cross-check; they count
every client of the server, so the rate from other clients just before each store's runs is
printed too:
- Redis: the delta of `INFO commandstats` calls, less the data commands costguard's Lua scripts
  run inside Redis (Redis 7 counts those as well): what clients sent, `EVALSHA` (a reserve, a
  settle, a batch of audit records), the `HGETALL` of the kill switches, and so on. The notes
  give the count with those commands kept.
- PostgreSQL: the delta of `xact_commit + xact_rollback` of the database in `pg_stat_database`
  (a reserve or a settle is one server-function call in autocommit: one transaction). A backend
  reports its counts at most once a second, so each reading lags by up to a second; at steady
  state the lags cancel out.
"cpu µs" is the workers' CPU time per call (every thread of the process: callers, background
writers, the lease sweeper); "srv µs" the store server's (its processes alive through the window,
from /proc: other clients' work included). With clients and server on one machine, the sum bounds
the rate: cores / (cpu + srv).

After each guarded series the totals are checked: what the store has committed for the feature
(month and day counters, through `guard.status()`) must equal what the workers' calls committed,
with nothing left reserved; and the audit records in the store are counted (a reserve and a commit
record per call). Only public API is used, so an older checkout can be measured the
same way (PYTHONPATH=<checkout>/src; `--leases off` there, which has no leases).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SPAWN = multiprocessing.get_context("spawn")
COST_MICROS = 1500  # what each guarded call commits ($0.0015)
# Data commands costguard's Lua scripts run inside Redis (src/costguard/stores/lua/*.lua): INFO
# commandstats counts them too. GET, SET, HMGET and XREVRANGE are also sent by clients, but off the
# hot path (tombstones, status, the audit query), so leaving them out undercounts nothing here.
LUA_DATA_COMMANDS = frozenset(
    {
        *("del", "exists", "get", "hdel", "hexists", "hincrby", "hmget", "hset", "incr", "incrby", "persist"),
        *("pexpire", "sadd", "set", "srem", "xadd", "xrevrange", "zadd", "zrem", "zscore"),
    }
)

# --------------------------------------------------------------------------- workers


def _drive(
    calls: list[Callable[[], bool]], warmup: float, seconds: float, start: Any, probe: Callable[[], int] | None
) -> tuple[int, int, list[float], int | None, float]:
    """Run one caller per thread: `warmup` seconds, then the measured window. Returns the window's
    calls, its unreserved calls, its latencies, the store operations `probe` counted in it, and
    this process's CPU time in it (every thread: callers, background writers, the sweeper)."""
    threads = len(calls)
    counts = [0] * threads
    unreserved = [0] * threads
    latencies: list[float] = []
    lock = threading.Lock()
    start.wait()
    began_at = time.monotonic()
    window = began_at + warmup
    stop = window + seconds

    def loop(index: int) -> None:
        call = calls[index]
        mine = []
        n = u = 0
        while True:
            began = time.monotonic()
            if began >= stop:
                break
            missed = call()
            took = time.monotonic() - began
            if began >= window:
                mine.append(took)
                n += 1
                u += missed
        counts[index], unreserved[index] = n, u
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    readings, cpu = [], []
    for at in (window, stop):
        time.sleep(max(0.0, at - time.monotonic()))
        cpu.append(time.process_time())
        if probe is not None:
            readings.append(probe())
    for thread in pool:
        thread.join()
    ops = readings[1] - readings[0] if readings else None
    return sum(counts), sum(unreserved), latencies, ops, cpu[1] - cpu[0]


class Tally:
    """A count several threads tick and one reads (`next` on an `itertools.count` is atomic under the GIL)."""

    def __init__(self) -> None:
        self._ticks = itertools.count()
        self._reads = 0

    def tick(self, *_: object) -> None:
        next(self._ticks)

    def read(self) -> int:
        self._reads += 1
        return next(self._ticks) - (self._reads - 1)


def count_ops(store: str) -> Callable[[], int] | None:
    """Count, in this process, the operations sent to the store: Redis commands (a pipeline's each
    one) through redis-py's connections, SQL statements through SQLAlchemy's engines. Returns a
    reader of the count so far (None when this redis-py can't be hooked)."""
    tally = Tally()
    if store == "redis":
        from redis.connection import AbstractConnection

        send = getattr(AbstractConnection, "send_command", None)
        pack = getattr(AbstractConnection, "pack_commands", None)
        if send is None or pack is None:
            return None

        def send_command(self: Any, *args: Any, **kwargs: Any) -> Any:
            tally.tick()
            return send(self, *args, **kwargs)

        def pack_commands(self: Any, commands: Any) -> Any:
            commands = list(commands)
            for _ in commands:
                tally.tick()
            return pack(self, commands)

        AbstractConnection.send_command = send_command  # type: ignore[method-assign]
        AbstractConnection.pack_commands = pack_commands  # type: ignore[method-assign]
    elif store == "postgres":
        # At the driver: SQLAlchemy's statements and the server-function calls costguard makes on the
        # pooled driver connection itself both go through psycopg's cursor.
        import psycopg

        execute = psycopg.Cursor.execute

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            tally.tick()
            return execute(self, *args, **kwargs)

        psycopg.Cursor.execute = counted  # type: ignore[method-assign]
    else:
        return None
    return tally.read


def make_guard(url: str, leases: bool | None, **options: Any) -> Any:
    """A guard on the hot feature's ceiling; `leases` None leaves the checkout's default."""
    from costguard import Ceiling, Guard, Limit, Period, Unit
    from costguard.model import make_match

    limits = (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
    ceilings = [Ceiling(make_match({"feature": "chat"}), limits)]
    if leases is None:
        return Guard(url, ceilings=ceilings, **options)
    try:
        return Guard(url, ceilings=ceilings, leases=leases, **options)
    except TypeError as exc:
        if leases:
            raise SystemExit("this checkout's Guard takes no leases= (no leased budget): use --leases off") from exc
        return Guard(url, ceilings=ceilings, **options)  # before leases: per-call reservations


def leasing_checkout() -> bool:
    """Whether the costguard imported has leased budget (`Guard(leases=...)`)."""
    import inspect

    from costguard import Guard

    return "leases" in inspect.signature(Guard).parameters


def guarded(job: dict[str, Any], start: Any, results: Any) -> None:
    import logging

    probe = count_ops(job["store"])  # before the store's modules are loaded
    import costguard
    from costguard import Blocked, Priced

    logging.disable(logging.WARNING)
    guard = make_guard(job["url"], job["leases"])

    @guard.with_kill_switch("chat", estimate=0.002)
    def paid() -> Priced[str]:
        decision = costguard.current_decision()
        return Priced("ok" if decision is None or decision.reason != "store_error" else "unreserved", 0.0015)

    paid()
    threads = job["threads"]
    counts = [0] * threads  # calls that committed their cost, per thread (a Blocked call commits nothing)

    def counted(index: int) -> Callable[[], bool]:
        def call() -> bool:
            try:
                missed = paid() == "unreserved"
            except Blocked:
                return True
            counts[index] += 1
            return missed

        return call

    outcome = _drive([counted(i) for i in range(threads)], job["warmup"], job["seconds"], start, probe)
    guard.close()
    results.put((*outcome, (1 + sum(counts)) * COST_MICROS))


def _pg_dsn(url: str) -> str:
    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    return f"host={parts.hostname} port={parts.port or 5432} user={parts.username} dbname={parts.path.lstrip('/')}"


def raw_postgres(job: dict[str, Any], start: Any, results: Any) -> None:
    import psycopg

    tally = Tally()
    conns = [psycopg.connect(_pg_dsn(job["url"]), autocommit=True) for _ in range(job["threads"])]

    def caller(conn: Any) -> Callable[[], bool]:
        def call() -> bool:
            tally.tick()
            conn.execute("UPDATE costguard_bench_hot SET v = v + 1 WHERE k = 1")
            return False

        return call

    outcome = _drive([caller(c) for c in conns], job["warmup"], job["seconds"], start, tally.read)
    for conn in conns:
        conn.close()
    results.put((*outcome, 0))


def raw_redis(job: dict[str, Any], start: Any, results: Any) -> None:
    probe = count_ops("redis")
    import redis

    client = redis.Redis.from_url(job["url"].split("?", 1)[0], max_connections=job["threads"])
    sha = client.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")

    def call() -> bool:
        client.evalsha(sha, 1, "costguard-bench-hot", 1)
        return False

    outcome = _drive([call] * job["threads"], job["warmup"], job["seconds"], start, probe)
    client.close()
    results.put((*outcome, 0))


# --------------------------------------------------------------------------- the server's counters


def server_cpu(command: str) -> dict[str, int] | None:
    """CPU clock ticks used so far by each process named `command` (the store server on this machine,
    whoever its processes work for), from /proc; None where that can't be read."""
    ticks: dict[str, int] = {}
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read().decode()
            except OSError:
                continue
            name, _, rest = stat.partition("(")[2].rpartition(")")
            if name == command:
                fields = rest.split()
                ticks[entry.name] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    except OSError:
        return None
    return ticks or None


def cpu_between(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """CPU seconds the processes alive at both readings used in between."""
    if not before or not after:
        return None
    used = sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
    return used / os.sysconf("SC_CLK_TCK")


class Ops:
    """Reads a store server's counters: (client operations, all operations, server CPU seconds)."""

    def __init__(self, store: str, url: str) -> None:
        self.store = store
        self.command = "redis-server" if store == "redis" else "postgres"
        if store == "redis":
            import redis

            self.client: Any = redis.Redis.from_url(url.split("?", 1)[0])
        else:
            import psycopg

            self.client = psycopg.connect(_pg_dsn(url), autocommit=True)

    def read(self) -> tuple[int, int, dict[str, int] | None]:
        cpu = server_cpu(self.command)
        if self.store == "redis":
            stats = self.client.info("commandstats")
            every = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
            total = sum(every.values())
            return total - sum(n for name, n in every.items() if name in LUA_DATA_COMMANDS), total, cpu
        row = self.client.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0]), int(row[0]), cpu

    def close(self) -> None:
        self.client.close()


def background_rate(ops: Ops | None, seconds: float = 1.0) -> float | None:
    """Operations per second the server counts with no benchmark running (other clients)."""
    if ops is None:
        return None
    if ops.store == "postgres":
        seconds = max(seconds, 2.0)  # backends report at most once a second
    before = ops.read()[0]
    time.sleep(seconds)
    return (ops.read()[0] - before) / seconds


# --------------------------------------------------------------------------- a series


class Series:
    """One series' figures, over its measured window."""

    def __init__(self, name: str, seconds: float, outcomes: list[tuple[Any, ...]], readings: list[Any]) -> None:
        self.name = name
        calls = sum(o[0] for o in outcomes)
        self.rate = calls / seconds
        self.unreserved = sum(o[1] for o in outcomes)
        self.latencies = sorted(x for o in outcomes for x in o[2])
        counted = [o[3] for o in outcomes]
        self.ops = sum(counted) / calls if calls and None not in counted else None
        self.cpu = sum(o[4] for o in outcomes) / calls * 1e6 if calls else None  # client CPU µs per call
        self.committed = sum(o[5] for o in outcomes)  # micro-USD the workers' calls committed, warm-up included
        self.server: float | None = None
        self.server_all: float | None = None
        self.server_cpu: float | None = None
        if len(readings) == 2 and calls:
            self.server = (readings[1][0] - readings[0][0]) / calls
            self.server_all = (readings[1][1] - readings[0][1]) / calls
            used = cpu_between(readings[0][2], readings[1][2])
            self.server_cpu = None if used is None else used / calls * 1e6


def run(name: str, target: Any, job: dict[str, Any], processes: int, ops: Ops | None) -> Series:
    """Start the processes; read the server's counters when their window opens and closes."""
    start = SPAWN.Barrier(processes + 1)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(job, start, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    start.wait(timeout=300)
    began = time.monotonic()
    readings: list[tuple[int, int, dict[str, int] | None]] = []
    for at in (began + job["warmup"], began + job["warmup"] + job["seconds"]):
        time.sleep(max(0.0, at - time.monotonic()))
        if ops is not None:
            readings.append(ops.read())
    outcomes = [results.get(timeout=job["seconds"] + job["warmup"] + 300) for _ in procs]
    for proc in procs:
        proc.join()
    return Series(name, job["seconds"], outcomes, readings)


def check_totals(url: str, expected_micros: int) -> str:
    """What the store recorded for the feature against what the workers committed."""
    guard = make_guard(url, False)
    try:
        rows = [row for row in guard.status(feature="chat").ceilings if dict(row.labels) == {"feature": "chat"}]
    finally:
        guard.close()
    parts, exact = [], bool(rows)
    for row in sorted(rows, key=lambda r: r.period):
        committed = round((row.spent - row.reserved) * 1_000_000)
        reserved = round(row.reserved * 1_000_000)
        exact = exact and committed == expected_micros and reserved == 0
        parts.append(f"{row.period} ${committed / 1e6:.4f} (reserved ${reserved / 1e6:g})")
    verdict = "exact" if exact else "MISMATCH"
    return f"recorded {', '.join(parts) or 'nothing'}; workers committed ${expected_micros / 1e6:.4f}: {verdict}"


def audit_count(store: str, url: str, namespace: str) -> int | None:
    """Audit records the series left in the store (its stream or table, read directly), if readable."""
    try:
        if store == "redis":
            import redis

            client = redis.Redis.from_url(url.split("?", 1)[0])
            try:
                return int(client.xlen("{" + namespace + "}:audit"))
            finally:
                client.close()
        if store == "postgres":
            import psycopg

            with psycopg.connect(_pg_dsn(url), autocommit=True) as conn:
                row = conn.execute(f'SELECT count(*) FROM "{namespace}events"').fetchone()
                return None if row is None else int(row[0])
    except Exception:  # noqa: BLE001 - an older checkout's layout: not counted
        return None
    return None


def drop(store: str, url: str, namespace: str) -> None:
    """Remove what a guarded series left in the store (its own prefix or namespace only)."""
    try:
        if store == "redis":
            import redis

            client = redis.Redis.from_url(url.split("?", 1)[0])
            keys = list(client.scan_iter(match="{" + namespace + "}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()
        elif store == "postgres":
            from costguard.stores import open_store

            sql = open_store(url)
            sql.drop_schema()  # type: ignore[attr-defined]
            sql.close()
    except Exception as exc:  # noqa: BLE001 - an older checkout, or a store that won't: leave it
        print(f"  (could not drop {namespace}: {exc})")


# --------------------------------------------------------------------------- report


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    value = values[min(len(values) - 1, int(len(values) * q))] * 1000
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def row(store: str, series: Series, floor: float | None) -> str:
    ratio = f"{series.rate / floor:.2f}" if floor and series.name != "raw floor" else "-"
    lat = series.latencies

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    return (
        f"{store:<9} {series.name:<11} {series.rate:>9.0f} {ratio:>6} {ms(lat, 0.5):>7} {ms(lat, 0.99):>7} "
        f"{ms(lat, 1.0):>7} {series.unreserved:>10} {num(series.ops):>8} {num(series.server):>8} "
        f"{us(series.cpu):>7} {us(series.server_cpu):>7}"
    )


def guarded_series(
    store: str,
    name: str,
    leases: bool | None,
    job: dict[str, Any],
    args: argparse.Namespace,
    ops: Ops | None,
    pg: str | None,
    rd: str | None,
) -> tuple[Series, str, str]:
    """One guarded series in a fresh prefix (PostgreSQL), namespace (Redis) or file (SQLite)."""
    tag = uuid.uuid4().hex[:6]
    namespace = ""
    if store == "postgres" and pg:
        namespace = f"hot{tag}_"
        url = f"{pg}{'&' if '?' in pg else '?'}prefix={namespace}"
    elif store == "redis" and rd:
        namespace = f"hot{tag}"
        url = f"{rd}{'&' if '?' in rd else '?'}namespace={namespace}"
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='costguard-hot-')) / 'hot.db'}"
    series = run(name, guarded, {**job, "url": url, "leases": leases}, args.processes, ops)
    return series, url, namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="postgres,redis,sqlite")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="the measured window of each series")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds each series runs before its window")
    parser.add_argument("--leases", choices=("both", "on", "off"), default="both")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each store's series, interleaved")
    parser.add_argument("--keep", action="store_true", help="leave the guarded series' tables and keys")
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.leases]
    if True in modes and not leasing_checkout():
        raise SystemExit("this checkout's Guard takes no leases= (no leased budget): run it with --leases off")
    shape = f"{args.processes} processes x {args.threads} threads, {args.seconds:g} s after {args.warmup:g} s warm-up"
    print(f"one hot feature, {shape}")
    header = ("calls/s", "ratio", "p50 ms", "p99 ms", "max ms", "unreserved", "ops/call", "server", "cpu µs", "srv µs")
    print(
        f"{'store':<9} {'series':<11} "
        + " ".join(f"{c:>{w}}" for c, w in zip(header, (9, 6, 7, 7, 7, 10, 8, 8, 7, 7), strict=True)),
        flush=True,
    )
    notes: list[str] = []
    summary: list[str] = []
    for store in args.stores.split(","):
        base = {"postgres": pg, "redis": rd}.get(store)
        if store in ("postgres", "redis") and not base:
            print(f"{store:<9} skipped (no URL)")
            continue
        if store not in ("postgres", "redis", "sqlite"):
            print(f"{store:<9} unknown store")
            continue
        ops = Ops(store, base) if base else None
        idle = background_rate(ops)
        job = {"store": store, "threads": args.threads, "warmup": args.warmup, "seconds": args.seconds}
        if store == "postgres" and pg:
            import psycopg

            with psycopg.connect(_pg_dsn(pg), autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS costguard_bench_hot (k int PRIMARY KEY, v bigint)")
                conn.execute("INSERT INTO costguard_bench_hot VALUES (1, 0) ON CONFLICT DO NOTHING")
        ratios: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            floor: Series | None = None
            if store == "postgres" and pg:
                floor = run("raw floor", raw_postgres, {**job, "url": pg, "leases": None}, args.processes, ops)
            elif store == "redis" and rd:
                floor = run("raw floor", raw_redis, {**job, "url": rd, "leases": None}, args.processes, ops)
            if floor is not None:
                print(row(store, floor, None), flush=True)
            for leases in modes if store != "sqlite" else [None]:
                name = "guarded" if leases is None else f"leases {'on' if leases else 'off'}"
                series, url, namespace = guarded_series(store, name, leases, job, args, ops, pg, rd)
                print(row(store, series, floor.rate if floor else None), flush=True)
                if floor is not None and floor.rate:
                    ratios.setdefault(name, []).append(series.rate / floor.rate)
                notes.append(f"{store} {name}: {check_totals(url, series.committed)}")
                records = audit_count(store, url, namespace)
                if records is not None:
                    wanted = 2 * series.committed // COST_MICROS  # a reserve and a commit record per call
                    notes.append(f"{store} {name}: audit records in the store {records} of {wanted} (2 per call)")
                if store == "redis" and series.server_all is not None:
                    notes.append(
                        f"{store} {name}: {series.server_all:.3f} commands/call with those scripts run inside Redis"
                    )
                if not args.keep and namespace:
                    drop(store, url, namespace)
        for name, values in ratios.items():
            if len(values) > 1:
                shown = ", ".join(f"{v:.2f}" for v in values)
                summary.append(f"{store} {name}: guarded/floor {statistics.median(values):.2f} (median of {shown})")
        if ops is not None and idle is not None:
            notes.append(
                f"{store}: {idle:.0f} operations/s from other clients just before (the server column counts them)"
            )
            ops.close()
    for line in summary:
        print(line)
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
