"""Real HTTP servers on 127.0.0.1 standing in for Slack, PagerDuty and webhook receivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"  # a scripted answer: never respond (until the server stops)


@dataclass
class Request:
    path: str
    headers: Message  # case-insensitive, as HTTP headers are
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Records every POST; answers from `script` in order, then with `default`."""

    def __init__(self, script: Iterable[Reply | str] = (), default: Reply | None = None) -> None:
        self.script = list(script)
        self.default = default or Reply()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._changed:
                    receiver.requests.append(Request(self.path, self.headers, body, time.monotonic()))
                    reply = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver._changed.notify_all()
                if reply == HANG:
                    receiver._stop.wait()
                    return
                assert isinstance(reply, Reply)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Block until at least `count` requests arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
                self._changed.wait(left)
            return list(self.requests)

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
