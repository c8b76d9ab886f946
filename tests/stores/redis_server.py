"""Private redis-server processes on free loopback ports, for tests that stop, pause or reconfigure Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() == "true"


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now (and, for a cluster node, port + 10000 too)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not cluster_bus or (port + 10_000 <= 65_535 and _bindable(port + 10_000)):
            return port


def redis_server_binary() -> str:
    """The redis-server executable; skipped locally when missing, a failure in CI."""
    found = shutil.which("redis-server")
    if found is None:
        if IN_CI:
            pytest.fail("redis-server must be installed when CI=true")
        pytest.skip("redis-server is not installed")
    return found


class RedisServer:
    """One redis-server on 127.0.0.1 without persistence; `stop()` kills it by PID, `start()` starts it again."""

    def __init__(self, port: int | None = None, *, workdir: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster:
    """Three cluster-enabled redis-servers on loopback ports joined into one cluster (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(
                free_port(cluster_bus=True),
                workdir=workdir,
                extra=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf"),
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def __enter__(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.__exit__()  # the nodes that did start
            raise
        cli = shutil.which("redis-cli")
        if cli is None:
            self.__exit__()
            pytest.skip("redis-cli is not installed")
        hosts = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *hosts, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    states.append(client.cluster("info")["cluster_state"])
            if all(state == "ok" for state in states):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster did not become ready: {states}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()
