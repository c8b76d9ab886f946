"""A fleet through a store outage, on a private Redis and a private PostgreSQL that the test kills
and restarts: worker processes call a guarded function throughout; while the store is down each
admits at most its outage allowance ($1 by default here) without a reservation and then serves the
fallback; one worker is SIGKILLed during the outage; after the restart a new process picks up the
dead one's spool. In the end the store holds exactly what every call that ran cost — the calls a
crash caught between its model call and its commit count their estimate, never less."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import workers

from stores.postgres_server import PostgresServer
from stores.redis_server import RedisServer

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
THREADS = 4
ALLOWANCE = 1_000_000  # min($1, 1 % of the $100 cap), in micro-dollars


class Store:
    """A private server the test can kill and start again with its data."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        if kind == "redis":
            self.redis = RedisServer(workdir=tmp_path, extra=("--appendonly", "yes", "--appendfsync", "always"))
        else:
            self.postgres = PostgresServer()

    def start(self) -> None:
        if self.kind == "redis":
            self.redis.start()
        else:
            self.postgres.start()

    def kill(self) -> None:
        if self.kind == "redis":
            self.redis.stop()
        else:
            self.postgres.kill()

    def close(self) -> None:
        if self.kind == "redis":
            self.redis.stop()
        else:
            self.postgres.stop()

    @property
    def url(self) -> str:
        if self.kind == "redis":
            return f"{self.redis.url}?namespace=fleet"
        return f"{self.postgres.url}?prefix=f{uuid.uuid4().hex[:8]}_"


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    server = Store(request.param, tmp_path)
    server.start()
    yield server
    server.close()


@dataclass
class Log:
    """What one worker logged: per call, its cost and the decision that let it run; which finished."""

    ran: dict[str, tuple[int, str]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> Log:
        log = cls()
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts[0] == "ran" and len(parts) == 4:
                log.ran[parts[1]] = (int(parts[2]), parts[3])
            elif parts[0] == "done" and len(parts) == 2:
                log.done.add(parts[1])
        return log

    def admitted_unreserved(self) -> int:
        """Micro-dollars reserved for calls admitted while the store could not be reached."""
        return sum(workers.CHAT_ESTIMATE for _, reason in self.ran.values() if reason == "store_error")


def wait_for(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_outage_admits_at_most_the_allowance_and_every_admitted_cost_is_recorded_once(
    store: Store, tmp_path: Path
) -> None:
    url = store.url
    spool = tmp_path / "spool"
    stop = tmp_path / "stop"
    logs = [tmp_path / f"worker{i}.log" for i in range(4)]
    for log in logs:
        log.touch()

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = SPAWN.Process(target=workers.chatter, args=(url, str(spool), str(logs[index]), str(stop), THREADS))
        process.start()
        return process

    procs = [spawn(i) for i in range(3)]
    try:
        wait_for(lambda: all(len(Log.read(log).done) >= 10 for log in logs[:3]), "the workers never got going")
        store.kill()
        # Each worker admits up to its allowance unreserved, then serves the fallback.
        wait_for(
            lambda: all(Log.read(log).admitted_unreserved() >= ALLOWANCE for log in logs[:3]),
            "a worker did not use its outage allowance",
        )
        time.sleep(0.5)  # more calls come, and get the fallback
        victim = procs[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # its admitted costs are only in its spool now
        victim.join(30)
        assert list(spool.rglob("*.jsonl")), "the outage left no spool"

        store.start()
        procs.append(spawn(3))  # a new process on this machine: it finds the dead one's spool
        wait_for(lambda: len(Log.read(logs[3]).done) >= 10, "the new worker never got going")
        time.sleep(0.5)
    finally:
        stop.touch()
        for process in procs:
            process.join(60)
    assert [p.exitcode for p in procs] == [-signal.SIGKILL, 0, 0, 0]

    read = [Log.read(log) for log in logs]
    for index, log in enumerate(read):
        assert log.admitted_unreserved() <= ALLOWANCE, index  # open is bounded, per process
    assert read[0].admitted_unreserved() == ALLOWANCE  # the victim did use its allowance before dying
    assert sum(log.admitted_unreserved() for log in read) <= ALLOWANCE * len(read)

    # Every call that finished counts its cost; one a crash caught mid-call counts its estimate.
    finished = sum(cost for log in read for rid, (cost, _) in log.ran.items() if rid in log.done)
    caught = sum(workers.CHAT_ESTIMATE for log in read for rid in log.ran if rid not in log.done)
    assert caught <= THREADS * workers.CHAT_ESTIMATE  # only the victim's calls in flight
    guard = workers.chat_guard(url, str(tmp_path / "reader-spool"))
    try:
        (row,) = guard.status(feature="chat").ceilings
    finally:
        guard.close()
    spent = round(row.spent * 1_000_000)
    reserved = round(row.reserved * 1_000_000)
    # A reserve the victim made just before SIGKILL, whose model call never started, also stays
    # counted at its estimate: never less than what ran, and over by whole estimates at most.
    extra = spent - (finished + caught)
    assert extra >= 0
    assert extra % workers.CHAT_ESTIMATE == 0
    assert extra // workers.CHAT_ESTIMATE + len([1 for rid in read[0].ran if rid not in read[0].done]) <= THREADS
    assert reserved == caught + extra  # held for the crashed calls only
    assert list(spool.rglob("*.jsonl")) == []  # every segment written and deleted
