"""Worker processes for the reliability suite (imported by spawned interpreters)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from costguard import Blocked, Ceiling, Guard, Limit, Period, Unit
from costguard.engine.slices import MARK_STEPS
from costguard.model import make_match


def guard_for(url: str, cap_micros: int, **options: object) -> Guard:
    """A guard with a monthly USD ceiling on feature `f` and a daily one per customer."""
    ceilings = [
        Ceiling(make_match({"feature": "f"}), (Limit(Period.MONTH, Unit.USD, cap_micros),)),
        Ceiling(make_match({"feature": "f", "customer": "*"}), (Limit(Period.DAY, Unit.USD, cap_micros),)),
    ]
    return Guard(url, ceilings=ceilings, store_options={"timeout_ms": 30_000}, **options)  # type: ignore[arg-type]


def reserve_and_die(url: str, cap_micros: int, ready_path: str) -> None:
    """Reserve $0.05, tell the parent, and wait to be killed before committing."""
    guard = guard_for(url, cap_micros)
    guard.reserve("f", estimate_usd=0.05, customer="victim")
    with open(ready_path, "w") as ready:
        ready.write(str(os.getpid()))
    time.sleep(600)  # SIGKILL arrives here: no commit, no release, no exit hooks


def steady(url: str, cap_micros: int, calls: int, customer: str) -> int:
    """Reserve-and-commit $0.01 `calls` times; returns how many were allowed."""
    guard = guard_for(url, cap_micros)
    allowed = 0
    for _ in range(calls):
        try:
            with guard.reserve("f", estimate_usd=0.01, customer=customer) as r:
                r.commit(0.01)
        except Blocked:
            continue
        allowed += 1
    guard.close()
    return allowed


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(url: str, calls: int, customers: int, worker: int) -> dict[str, Any]:
    """`calls` guarded calls spread over `customers`; returns micro-dollars spent per customer and
    the process's RSS and open file descriptors after a warm-up tenth and at the end."""
    guard = guard_for(url, 10**12)
    spent: dict[str, int] = {}
    warm: tuple[int, int] = (0, 0)
    for index in range(calls):
        if index == calls // 10:
            warm = (_rss_kb(), _open_fds())
        customer = f"c{(index * 7 + worker) % customers:04d}"
        cost = 1000 + (index % 7) * 10  # $0.00100 … $0.00106
        with guard.reserve("f", estimate_usd=0.002, customer=customer) as r:
            r.commit(cost / 1_000_000)
        spent[customer] = spent.get(customer, 0) + cost
    end = (_rss_kb(), _open_fds())
    guard.close()
    return {"spent": spent, "rss_kb": (warm[0], end[0]), "fds": (warm[1], end[1])}


def watch_killswitch(url: str, cache_ms: float, ready: Any, results: Any, deadline_s: float) -> None:
    """Poll until the kill switch blocks a call; put when (epoch) on `results` (None on timeout).

    Waits on the `ready` barrier after its first check, so the parent activates only once every
    watcher is up and polling.
    """
    guard = guard_for(url, 10**12, killswitch_cache_ms=cache_ms)
    guard.check("f", estimate_usd=0.0)
    ready.wait()
    end = time.time() + deadline_s
    seen: float | None = None
    while time.time() < end:
        # `check` runs the same kill switch step as a guarded call, without writing a reservation.
        if guard.check("f", estimate_usd=0.0).reason == "kill_switch":
            seen = time.time()
            break
        time.sleep(0.01)
    guard.close()
    results.put(seen)


def hold_forever() -> None:  # pragma: no cover - a target for SIGKILL tests
    signal.pause()


def threads_racing(url: str, cap_micros: int, threads: int, estimate: float, customer: str) -> int:
    """`threads` threads each try one call at the same moment; returns how many were allowed."""
    guard = guard_for(url, cap_micros)
    barrier = threading.Barrier(threads)
    allowed = [0] * threads

    def one(index: int) -> None:
        barrier.wait()
        try:
            with guard.reserve("f", estimate_usd=estimate, customer=customer) as r:
                r.commit(estimate)
        except Blocked:
            return
        allowed[index] = 1

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close()
    return sum(allowed)


def race_ceiling(cap_micros: int) -> Ceiling:
    """A hard monthly USD ceiling on feature `race`."""
    return Ceiling(make_match({"feature": "race"}), (Limit(Period.MONTH, Unit.USD, cap_micros),))


def hog(stop: Any) -> None:  # pragma: no cover - runs in a child process
    """Keep one core busy until `stop` is set (a CPU hog beside a load test)."""
    while not stop.is_set():
        for _ in range(100_000):
            pass


def burst(url: str, cap_micros: int, threads: int, attempts: int, start: Any, results: Any) -> None:
    """`threads` threads each call a guarded function `attempts` times, all starting together across
    processes (`start` is a barrier). Default settings: no timeout or store option is given. Puts
    (calls that ran, refusals by reason, calls not yet recorded at close) on `results`."""
    from costguard import Priced

    guard = Guard(url, ceilings=[race_ceiling(cap_micros)])

    @guard.with_kill_switch("race", estimate=0.01)
    def paid_call() -> Priced[str]:
        return Priced("answer", 0.01)

    ran = [0] * threads
    refused: dict[str, int] = {}
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)

    def loop(index: int) -> None:
        ready.wait()
        for _ in range(attempts):
            try:
                paid_call()
            except Blocked as blocked:
                with lock:
                    refused[blocked.decision.reason] = refused.get(blocked.decision.reason, 0) + 1
                continue
            ran[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    ready.wait()
    for worker in workers:
        worker.join()
    unrecorded = guard.pending
    guard.close()
    results.put((sum(ran), refused, unrecorded))


CHAT_ESTIMATE = 20_000  # micro-dollars reserved per call
CHAT_COSTS = [11_000, 12_000, 13_000, 14_000, 15_000, 16_000, 17_000, 18_000, 19_000, 20_000]


def chat_guard(url: str, spool_dir: str, **options: Any) -> Guard:
    """Feature `chat` under a $100 monthly cap (so the default outage allowance is $1 per process),
    estimate $0.02, fallback "busy"."""
    from costguard import FeatureSettings
    from costguard.fallback import static

    return Guard(
        url,
        ceilings=[Ceiling(make_match({"feature": "chat"}), (Limit(Period.MONTH, Unit.USD, 100_000_000),))],
        features={"chat": FeatureSettings(estimate_usd=CHAT_ESTIMATE, fallback=static("busy"))},
        spool_dir=spool_dir,
        **options,  # type: ignore[arg-type]
    )


def chatter(url: str, spool_dir: str, log_path: str, stop_path: str, threads: int) -> None:
    """Call `chat` from `threads` threads until `stop_path` exists, logging to `log_path` (unbuffered,
    so a SIGKILL loses nothing logged) `ran <id> <cost> <decision reason>` when the paid call happens
    and `done <id>` once the guard has taken its cost."""
    import costguard
    from costguard import Priced

    guard = chat_guard(url, spool_dir)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    @guard.with_kill_switch("chat")
    def chat(cost: int) -> Priced[str]:
        decision = costguard.current_decision()
        assert decision is not None
        os.write(log, f"ran {decision.reservation_id} {cost} {decision.reason}\n".encode())
        time.sleep(0.002)  # the model answers
        return Priced(str(decision.reservation_id), cost / 1_000_000)

    def loop(index: int) -> None:
        n = index
        while not os.path.exists(stop_path):
            n += 1
            result = chat(CHAT_COSTS[n % len(CHAT_COSTS)])
            if result != "busy":
                os.write(log, f"done {result}\n".encode())
            time.sleep(0.001)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close(timeout=10)
    os.close(log)


def lease_and_die(url: str, cap_micros: int, costs: list[int], ready_path: str, spool_dir: str) -> None:
    """Make one call per cost in `costs` (micro-dollars, each reserved at $0.01) of one hot feature, served
    from slices that live 30 s; tell the parent, per ceiling, what the slices it holds have left unused,
    how far their marks in the spool are above what their calls spent, and the largest step of a mark;
    then wait to be killed: the slices are never settled."""
    guard = guard_for(url, cap_micros, spool_dir=spool_dir, lease_period_ms=30_000)
    for cost in costs:
        with guard.reserve("f", estimate_usd=0.01, customer="hot") as r:
            r.commit(cost / 1_000_000)
    leases = guard.calls.leases
    deadline = time.monotonic() + 10
    while (
        leases is not None
        and time.monotonic() < deadline
        and (
            leases._renewals
            or any(group.granting for group in leases.book._groups.values())
            or leases.unsettled
            or guard.pending
        )
    ):
        # A next slice being reserved in the background (held too, once it is granted), or a retired
        # one whose settle is on its way (not held any more, but the store counts it until it lands).
        time.sleep(0.01)
    # What it holds: the live slices, and retired ones not settled yet (just after a renewal).
    held = [] if leases is None else [*leases.book.slices(), *leases._pending, *leases.book._done]
    report: dict[str, dict[str, int]] = {}
    for s in held:
        row = report.setdefault(s.ops[0].ceiling_id, {"unused": 0, "over": 0, "step": 0})
        row["unused"] += s.granted[0] - s.spent[0]
        row["over"] += s.marked[0] - s.spent[0]
        row["step"] = max(row["step"], -(-s.granted[0] // MARK_STEPS))
    with open(ready_path + ".tmp", "w") as ready:
        ready.write(repr(report))
    os.rename(ready_path + ".tmp", ready_path)
    time.sleep(600)  # SIGKILL arrives here: no settle, no close, no exit hooks
