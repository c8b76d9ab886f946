"""A frozen PostgreSQL (SIGSTOP: the kernel still acknowledges packets, nothing answers) never holds a
call past the store deadline; a cold start with the store down follows `on_store_error` instead of
raising, so an app's first request is never a 500, and what it admitted is recorded once the store is up."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import workers
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from costguard import Guard, Priced
from costguard.asgi import CostGuardMiddleware
from stores.postgres_server import PostgresServer
from stores.redis_server import RedisServer, free_port

DEADLINE_MS = 500
# A call makes its pre-call store attempts within the deadline, then (the open guard's first calls of
# the outage, and those waiting for them) a liveness check as long again, which finds no answer; when
# the store could not take the cost it spools it without asking again; the rest is scheduling on a
# loaded 2-core machine.
CALL_BOUND_S = 2 * DEADLINE_MS / 1000 + 0.5


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as running:
        yield running


def timed_calls(guard: Guard, threads: int, calls: int) -> list[tuple[str, float]]:
    """`calls` guarded calls from each of `threads` threads at once: (result, seconds) of each."""

    @guard.with_kill_switch("chat", cost=0.015)
    def chat() -> str:
        return "answer"

    out: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(calls):
            began = time.monotonic()
            result = chat()
            with lock:
                out.append((result, time.monotonic() - began))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return out


@pytest.mark.postgres
@pytest.mark.slow
def test_a_frozen_postgres_never_holds_a_call_past_the_deadline(postgres: PostgresServer, tmp_path: Path) -> None:
    url = f"{postgres.url}?prefix=z{uuid.uuid4().hex[:8]}_"
    opened = workers.chat_guard(url, str(tmp_path / "spool-open"), store_deadline_ms=DEADLINE_MS)
    closed = workers.chat_guard(
        url, str(tmp_path / "spool-closed"), store_deadline_ms=DEADLINE_MS, on_store_error="closed"
    )
    try:
        assert {r for r, _ in timed_calls(opened, 2, 3) + timed_calls(closed, 2, 3)} == {"answer"}
        postgres.freeze()
        # Thawed after 10 s whatever happens, so a regression fails the timing below instead of hanging.
        safety = threading.Timer(10.0, postgres.thaw)
        safety.start()
        try:
            during_open = timed_calls(opened, 8, 3)
            during_closed = timed_calls(closed, 8, 3)
        finally:
            safety.cancel()
            postgres.thaw()
        slowest = max(took for _, took in during_open + during_closed)
        assert slowest < CALL_BOUND_S, slowest  # the watchdog cut every wait at the deadline
        assert {r for r, _ in during_closed} == {"busy"}  # closed: the fallback, never an exception
        admitted = [r for r, _ in during_open].count("answer")
        assert admitted == len(during_open)  # open: 24 calls x $0.02 fit the $1 allowance
        deadline = time.monotonic() + 30
        # The open guard's spooled costs, and the closed guard's releases of the reserves whose replies
        # the freeze swallowed (the server runs those reserves when it resumes: released all the same).
        while not (opened.flush(1.0) and closed.flush(1.0)):
            assert time.monotonic() < deadline, "the spooled costs were never written"
        (row,) = opened.status(feature="chat").ceilings
        assert (round(row.spent * 1e6), round(row.reserved * 1e6)) == ((2 * 3 * 2 + admitted) * 15_000, 0)
    finally:
        opened.close(timeout=1)
        closed.close(timeout=1)


class Down:
    """A store URL whose server isn't there yet, and a way to bring it up."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.port = free_port()
        self.servers: list[RedisServer | PostgresServer] = []
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'not-yet' / 'costguard.db'}"  # its folder doesn't exist
        elif kind == "redis":
            self.url = f"redis://127.0.0.1:{self.port}/0?namespace=cold"
        else:
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres?prefix=cold_"

    def up(self) -> None:
        if self.kind == "sqlite":
            (self.tmp_path / "not-yet").mkdir()
        elif self.kind == "redis":
            self.servers.append(RedisServer(self.port, workdir=self.tmp_path).start())
        else:
            self.servers.append(PostgresServer(self.port).start())

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def down(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Down]:
    store = Down(request.param, tmp_path)
    yield store
    store.close()


def app_for(guard: Guard) -> Starlette:
    @guard.with_kill_switch("chat", estimate=0.02)
    async def answer() -> Priced[str]:
        return Priced("answer", 0.013)

    async def chat(request: Request) -> JSONResponse:
        return JSONResponse({"answer": await answer()})

    return Starlette(routes=[Route("/chat", chat)], middleware=[Middleware(CostGuardMiddleware, guard=guard)])


def test_a_cold_start_with_the_store_down_follows_the_policy_and_records_later(down: Down, tmp_path: Path) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(
        f"store: {down.url!r}\nspool_dir: {str(tmp_path / 'spool')!r}\nfeatures:\n  chat: {{monthly_usd: 100}}\n"
    )
    opened = Guard.from_yaml(config)  # no exception: nothing is opened until a call needs it
    closed_config = tmp_path / "closed.yaml"
    closed_config.write_text(config.read_text() + "on_store_error: closed\n")
    closed = Guard.from_yaml(closed_config)
    try:
        with TestClient(app_for(opened)) as client:
            replies = [client.get("/chat", headers={"X-Customer-Id": "acme"}) for _ in range(3)]
        assert [(r.status_code, r.json()) for r in replies] == [(200, {"answer": "answer"})] * 3
        with TestClient(app_for(closed)) as client:
            refused = client.get("/chat")
        assert (refused.status_code, refused.json()["code"]) == (503, "store_unavailable")
        assert opened.unrecorded_usd == pytest.approx(0.06)  # three estimates, admitted unreserved

        down.up()
        deadline = time.monotonic() + 30
        while not opened.flush(1.0):
            assert time.monotonic() < deadline, "the admitted costs were never written"
        assert opened.unrecorded_usd == 0.0
        (row,) = opened.status(feature="chat").ceilings
        assert (row.spent, row.reserved) == (0.039, 0.0)  # what the three calls cost, once
    finally:
        opened.close(timeout=1)
        closed.close(timeout=1)


@pytest.mark.postgres
def test_too_many_clients_is_overload_waited_for_within_the_deadline(postgres: PostgresServer, tmp_path: Path) -> None:
    """The server's connection limit reached: the guard backs off and asks again within its deadline,
    and a slot freed meanwhile lets the call through — not an outage, no fallback."""
    import psycopg

    url = f"{postgres.url}?prefix=m{uuid.uuid4().hex[:8]}_"
    guard = workers.chat_guard(url, str(tmp_path / "spool"), on_store_error="closed")
    assert timed_calls(guard, 1, 1)[0][0] == "answer"
    guard.store.close()  # no pooled connection: the next call needs a new one
    held = []
    refusal = ""
    while not refusal:  # take every connection the server will give
        try:
            held.append(psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres"))
        except psycopg.OperationalError as exc:
            refusal = str(exc)
    assert "too many clients" in refusal
    release = threading.Timer(0.5, lambda: [conn.close() for conn in held[:2]])
    release.start()
    try:
        ((result, took),) = timed_calls(guard, 1, 1)
    finally:
        release.cancel()
        for conn in held:
            conn.close()
    assert result == "answer"  # waited for, not refused
    assert 0.4 < took < 2.0
    guard.close()
