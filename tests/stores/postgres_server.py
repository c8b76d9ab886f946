"""A private PostgreSQL cluster on a free loopback port, for tests that kill the server and start it again.

The cluster lives in its own temporary directory (data, Unix socket, log). initdb and postgres refuse
to run as root, so under root they run as the `postgres` OS user (the child process switches user
before exec, so `process.pid` is the postmaster's own PID and SIGKILL reaches it, not a wrapper).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from stores.redis_server import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"

_BINARIES = ("initdb", "postgres")


def _version(bindir: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir))


def postgres_bindir() -> Path:
    """The directory holding initdb and postgres; skipped locally when missing, a failure in CI."""
    candidates: list[str] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(str(Path(on_path).parent))
    # Debian/Ubuntu keep the server binaries off PATH; RHEL-like systems use /usr/pgsql-N.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), key=_version, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, name), os.X_OK) for name in _BINARIES):
            return Path(bindir)
    message = "PostgreSQL's server binaries (initdb, postgres) are not on PATH nor in /usr/lib/postgresql/*/bin"
    if IN_CI:
        pytest.fail(f"{message}; they must be installed when CI=true (apt-get install postgresql)")
    pytest.skip(message)


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the `postgres` user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        message = "running as root and there is no `postgres` OS user to run initdb/postgres as"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": user.pw_dir}}


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (the postmaster's backends and auxiliary processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie nobody reaps counts as gone: it holds no memory or sockets)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1 (trust auth, user `postgres`, fsync off).

    `start()` runs initdb the first time, then the postmaster; `kill()` SIGKILLs the postmaster and
    its children (a crash: no shutdown checkpoint, crash recovery on the next start); `start()` again
    reuses the port and the data directory, so committed data survives; `stop()` kills and deletes
    the directory.
    """

    def __init__(self, port: int | None = None) -> None:
        self.bindir = postgres_bindir()
        self.run_as = _run_as()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="costguard-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        if self.run_as:
            os.chown(self.root, self.run_as["user"], self.run_as["group"])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        args = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.datadir),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        result = subprocess.run(
            args,
            check=False,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            **self.run_as,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout.decode(errors='replace')}")

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",  # a killed process loses nothing the kernel has: only an OS crash would
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "50",
            "max_wal_senders": "0",
            "wal_level": "minimal",
            "autovacuum": "off",
            "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.logfile, "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **self.run_as
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
                ) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                assert self.process is not None
                if time.monotonic() > deadline or self.process.poll() is not None:
                    tail = self._log_tail()
                    self.kill()
                    raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it forked, and wait until they are gone.

        The children are killed too (a whole-server crash) rather than left to notice the
        postmaster's death: a new postmaster refuses to start while old backends still hold the
        shared memory, and the port must be free when `kill()` returns.
        """
        if self.process is None:
            return
        # Frozen first, so it forks nothing between listing its children and the kill.
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGSTOP)
        children = _children(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL's children did not exit: {[p for p in children if _alive(p)]}")
            time.sleep(0.01)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every process it forked: the kernel still accepts and acknowledges
        connections and packets, but nothing answers (a hung VM, a stalled disk, a debugger)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        for pid in _children(self.process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server."""
        assert self.process is not None
        for pid in [self.process.pid, *_children(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server (if running) and delete its directory."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
