"""Network round trips per guarded call on PostgreSQL and Redis, counted on the wire, and statements
per call on SQLite.

    .venv/bin/python benchmarks/roundtrips.py [--stores sqlite,postgres,redis] [--calls 500]

A small TCP proxy on 127.0.0.1 sits between the guard and the server and counts each burst of
bytes the client sends after the server last spoke: one round trip, whatever the driver does
(BEGIN and COMMIT included, pipelined commands counted once). Each call goes through
`with_kill_switch` on one feature ceiling (a month and a day limit, plus its history counter) and
commits its cost; the kill switch refresh (every 500 ms) is included. PostgreSQL and Redis come
from COSTGUARD_BENCH_POSTGRES_URL / COSTGUARD_BENCH_REDIS_URL (or the test URLs). Only public API
is used, so an older checkout can be measured the same way (PYTHONPATH=<checkout>/src).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from costguard import Ceiling, Guard, Limit, Period, Priced, Unit
from costguard.model import make_match

# Per-call reservations, the figures docs/performance.md gives for this script (leased calls:
# hot_row.py and overhead.py --leases); an older checkout has no `leases` option.
PER_CALL = {"leases": False} if "leases" in inspect.signature(Guard).parameters else {}

CEILINGS = [
    Ceiling(
        make_match({"feature": "chat"}), (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
    )
]


class CountingProxy:
    """Forwards 127.0.0.1:<port> to a server and counts the client's request bursts."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bursts = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"last": "server"}  # who spoke last on this connection
            threading.Thread(target=self._pump, args=(client, server, state, "client"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, "server"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, state: dict[str, str], side: str) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if side == "client" and state["last"] == "server":
                        self.bursts += 1
                    state["last"] = side
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def through(url: str, proxy: CountingProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))


def calls_through(guard: Guard, calls: int) -> None:
    @guard.with_kill_switch("chat", estimate=0.002)
    def paid() -> Priced[str]:
        return Priced("ok", 0.0015)

    for _ in range(calls):
        paid()


def network(url: str, calls: int) -> float:
    parts = urlsplit(url)
    proxy = CountingProxy(parts.hostname or "127.0.0.1", parts.port or (6379 if url.startswith("redis") else 5432))
    guard = Guard(through(url, proxy), ceilings=CEILINGS, **PER_CALL)
    calls_through(guard, 20)  # warm up: schema, scripts, pool
    before = proxy.bursts
    calls_through(guard, calls)
    per_call = (proxy.bursts - before) / calls
    guard.close()
    proxy.close()
    return per_call


def sqlite_statements(path: Path, calls: int) -> float:
    import sqlalchemy as sa

    guard = Guard(f"sqlite:///{path}", ceilings=CEILINGS, **PER_CALL)
    calls_through(guard, 20)
    engine = guard.store.engine  # type: ignore[attr-defined]
    count = [0]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _count(*_: object) -> None:
        count[0] += 1

    @sa.event.listens_for(engine, "commit")
    def _commit(*_: object) -> None:
        count[0] += 1

    calls_through(guard, calls)
    guard.close()
    return count[0] / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    print(f"{'store':<9} {'per guarded call':>18}")
    for store in args.stores.split(","):
        if store == "sqlite":
            path = Path(tempfile.mkdtemp(prefix="costguard-rt-")) / "rt.db"
            print(f"{store:<9} {sqlite_statements(path, args.calls):>11.2f} statements")
        elif store == "postgres" and pg:
            url = f"{pg}{'&' if '?' in pg else '?'}prefix=rt{uuid.uuid4().hex[:6]}_"
            print(f"{store:<9} {network(url, args.calls):>11.2f} round trips")
        elif store == "redis" and rd:
            url = f"{rd}{'&' if '?' in rd else '?'}namespace=rt{uuid.uuid4().hex[:6]}"
            print(f"{store:<9} {network(url, args.calls):>11.2f} round trips")
        else:
            print(f"{store:<9} skipped (no URL)")


if __name__ == "__main__":
    main()
