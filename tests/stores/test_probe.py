"""The liveness check (`Store.ping`) behind the overload-or-outage question: its connection kept, one
check at a time whose answer waiting callers share, a broken idle connection replaced within the check,
a failure remembered for a moment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from costguard.stores._probe import Probe


class Server:
    """Connections are numbers; `ask` answers after `delay` unless the connection is in `broken` or the
    server is `down`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.down = False
        self.connects = 0
        self.asked: list[int] = []
        self.dropped: list[int] = []
        self.broken: set[int] = set()
        self.noted = 0

    def connect(self, _timeout_s: float) -> int:
        if self.down:
            raise ConnectionRefusedError("down")
        self.connects += 1
        return self.connects

    def ask(self, conn: int, timeout_s: float) -> None:
        self.asked.append(conn)
        if self.down or conn in self.broken:
            raise OSError("no answer")
        if self.delay > timeout_s:
            time.sleep(timeout_s)
            raise TimeoutError("no answer in time")
        time.sleep(self.delay)

    def drop(self, conn: int) -> None:
        self.dropped.append(conn)

    def note(self) -> None:
        self.noted += 1

    def probe(self) -> Probe:
        return Probe(self.connect, self.ask, self.drop, self.note)


def test_the_connection_is_kept_for_the_next_check_and_closed_with_the_store() -> None:
    server = Server()
    probe = server.probe()
    assert probe.check(0.5) and probe.check(0.5)
    assert (server.connects, server.asked, server.noted) == (1, [1, 1], 2)
    probe.close()
    assert server.dropped == [1]


def test_a_caller_that_waited_for_another_check_takes_its_answer() -> None:
    server = Server(delay=0.2)
    probe = server.probe()
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(probe.check(0.5)))
    first.start()
    time.sleep(0.05)  # the first check is waiting for its answer
    assert probe.check(0.5) is True
    first.join()
    assert results == [True]
    assert server.asked == [1]  # one question for both


def test_a_caller_that_waited_for_a_failed_check_fails_without_asking_again() -> None:
    server = Server(delay=1.0)  # never within the check's time: a frozen server
    probe = server.probe()
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(probe.check(0.2)))
    first.start()
    time.sleep(0.05)
    began = time.monotonic()
    assert probe.check(0.2) is False
    assert time.monotonic() - began < 0.3
    first.join()
    assert results == [False]
    assert server.asked == [1]
    assert server.dropped == [1]  # a connection that didn't answer is not kept


def test_a_kept_connection_that_broke_while_idle_is_replaced_within_the_check() -> None:
    """A restarted server: the kept connection fails at once; a new one answers — the server is alive."""
    server = Server()
    probe = server.probe()
    assert probe.check(0.5)
    server.broken.add(1)
    assert probe.check(0.5) is True
    assert (server.connects, server.asked, server.dropped) == (2, [1, 1, 2], [1])


def test_a_failed_check_is_remembered_for_a_moment() -> None:
    server = Server()
    server.down = True
    probe = server.probe()
    assert probe.check(0.1) is False
    server.down = False
    assert probe.check(0.1) is False  # within the moment: no new attempt
    assert server.connects == 0
    time.sleep(0.55)
    assert probe.check(0.1) is True


def test_a_forked_child_never_uses_or_closes_its_parents_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    server = Server()
    probe = server.probe()
    assert probe.check(0.5)
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    assert probe.check(0.5)
    probe.close()
    assert (server.asked, server.dropped) == ([1, 2], [2])  # the parent's connection 1 untouched


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_a_stores_kept_check_connection_is_closed_with_a_store_nobody_closed(kind: str, tmp_path: Path) -> None:
    """A store dropped without `close()` (a test, a script) leaves no connection behind."""
    import gc

    from conftest import drop_tables, store_url_for
    from costguard.stores import open_store

    url = store_url_for(kind, tmp_path)
    store = open_store(url)
    try:
        assert store.ping(1.0)
        conn = store._probe._held.conn  # type: ignore[attr-defined]
        assert conn is not None
        if kind == "redis":
            pool = conn.connection_pool
            opened = [c for c in pool._available_connections if c._sock is not None]
            assert opened
    finally:
        if kind == "postgres":
            drop_tables(url)
    del store
    gc.collect()
    if kind == "postgres":
        assert conn.closed
    else:
        assert [c._sock for c in opened] == [None] * len(opened)
