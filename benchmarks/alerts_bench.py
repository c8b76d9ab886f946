"""Does a notifier that never answers slow a guarded call? Median latency with and without one.

Every measured call crosses a threshold (each call is its own `run` with a tiny total ceiling), so
every call emits an event. Compared in one run: no notifiers (the floor), a webhook whose receiver
answers at once, and a webhook whose receiver accepts the connection and never answers.

    .venv/bin/python benchmarks/alerts_bench.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match
from costguard.notify.webhook import WebhookNotifier


@contextmanager
def server(hang: bool) -> Iterator[str]:
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if hang:
                stop.wait()
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def _guard(notifiers: list[WebhookNotifier]) -> Guard:
    ceiling = Ceiling(make_match({"run": "*"}), (Limit(Period.TOTAL, Unit.USD, 1_000),))
    return Guard("memory://", ceilings=[ceiling], notifiers=notifiers)


def interleaved(guards: list[Guard], calls: int) -> list[list[float]]:
    """Calls alternate between the guards, so each sees the same machine at the same moment."""
    samples: list[list[float]] = [[] for _ in guards]
    for index in range(calls + 200):
        for guard, out in zip(guards, samples, strict=True):
            started = time.perf_counter()
            with guard.reserve("bench", estimate_usd=0.0009, run=str(index)):  # 90 %: a warn per call
                pass
            if index >= 200:  # warm-up
                out.append(time.perf_counter() - started)
    for guard in guards:
        guard.close(timeout=0.2)
    return samples


def row(name: str, samples: list[float], floor: list[float]) -> str:
    median, p99 = statistics.median(samples), statistics.quantiles(samples, n=100)[98]
    return f"{name:<44} {median * 1e6:>10.1f} {p99 * 1e6:>10.1f} {median / statistics.median(floor):>8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    logging.getLogger("costguard").setLevel(logging.ERROR)  # the hung receiver's drops are expected
    print(f"{'guarded call; every call emits an event':<44} {'median µs':>10} {'p99 µs':>10} {'x floor':>8}")
    with server(hang=True) as url:
        floor, hung = interleaved([_guard([]), _guard([WebhookNotifier(url, timeout_s=60)])], args.calls)
    print(row("no notifier (floor)", floor, floor))
    print(row("webhook whose receiver never answers", hung, floor))
    with server(hang=False) as url:
        floor, fine = interleaved([_guard([]), _guard([WebhookNotifier(url)])], args.calls)
    print(row("no notifier (floor, second run)", floor, floor))
    print(row("webhook whose receiver answers at once", fine, floor))


if __name__ == "__main__":
    main()
