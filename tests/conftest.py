"""Shared fixtures: one table of stores drives every contract test (real services by marker)."""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import costguard.guard
import costguard.wiring
from costguard.stores import Store, open_store

IN_CI = os.environ.get("CI", "").lower() == "true"


# The suite talks to loopback only (real servers it starts or is given on 127.0.0.1, fakes): a library
# that would fetch something from the internet on the way (tiktoken's encodings, LiteLLM's price
# map, a typo'd URL) gets the error an offline machine gives, at once, and nothing leaves the box.
def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    name = (host.decode() if isinstance(host, bytes) else str(host)).strip("[]")
    if name in ("", "localhost") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


def _loopback_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, f"the test suite reaches loopback only, not {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _loopback_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise ConnectionRefusedError(f"the test suite reaches loopback only, not {address[0]!r}")
    _real_connect(self, address)


socket.getaddrinfo = _loopback_getaddrinfo
socket.socket.connect = _loopback_connect  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _spool_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Guards of the suite (and the worker processes it spawns) spool under a temporary directory,
    never in the user's state directory."""
    before = os.environ.get("COSTGUARD_SPOOL_DIR")
    os.environ["COSTGUARD_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))
    yield
    if before is None:
        os.environ.pop("COSTGUARD_SPOOL_DIR", None)
    else:
        os.environ["COSTGUARD_SPOOL_DIR"] = before


def service_url(env: str, what: str) -> str:
    """A real service's URL from the environment; skipped locally when unset, a failure in CI."""
    url = os.environ.get(env)
    if not url:
        if IN_CI:
            pytest.fail(f"{env} must be set when CI=true: {what} tests may not skip in CI")
        pytest.skip(f"set {env} to run the {what} tests")
    return url


# fakeredis stands in for Redis behind URLs on a loopback port nothing listens on (so a client that
# wasn't injected fails at once instead of reaching anything); one FakeServer per URL.
_FAKE_SERVERS: dict[str, Any] = {}


def fake_redis_url(same_server_as: str | None = None) -> str:
    """A URL backed by a fresh in-process fakeredis server (or another URL's, in a new namespace)."""
    import fakeredis

    url = f"redis://127.0.0.1:1/0?namespace=t{uuid.uuid4().hex[:10]}"
    _FAKE_SERVERS[url] = _FAKE_SERVERS[same_server_as] if same_server_as else fakeredis.FakeServer()
    return url


def open_test_store(url: str, **options: Any) -> Store:
    """`open_store`, with fakeredis clients injected for `fake_redis_url()` URLs."""
    server = _FAKE_SERVERS.get(url)
    if server is None:
        return open_store(url, **options)
    import fakeredis

    from costguard.stores.redis import RedisStore

    return RedisStore(
        url,
        client=fakeredis.FakeRedis(server=server),
        async_client_factory=lambda: fakeredis.FakeAsyncRedis(server=server),
        **options,
    )


def redis_test_url() -> str:
    """The real Redis from COSTGUARD_TEST_REDIS_URL with a fresh namespace (drop it with `drop_namespace`)."""
    base = service_url("COSTGUARD_TEST_REDIS_URL", "Redis")
    sep = "&" if "?" in base else "?"
    # A loaded CI machine is not an outage: a generous timeout (the default 100 ms is tested on a private server).
    return f"{base}{sep}namespace=t{uuid.uuid4().hex[:10]}&timeout_ms=2000"


def drop_namespace(url: str) -> None:
    """Delete every key of a test's Redis namespace."""
    import redis

    from costguard.stores._redis_conn import parse_options

    options = parse_options(url)
    client = redis.Redis.from_url(options.client_url)
    try:
        keys = list(client.scan_iter(match="{" + options.namespace + "}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def store_url_for(kind: str, tmp_path: Path) -> str:
    """A fresh, isolated store URL of the given kind."""
    if kind == "memory":
        return "memory://"
    if kind == "fakeredis":
        return fake_redis_url()
    if kind == "redis":
        return redis_test_url()
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'costguard.db'}"
    if kind == "postgres":
        base = service_url("COSTGUARD_TEST_POSTGRES_URL", "PostgreSQL")
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}prefix=t{uuid.uuid4().hex[:10]}_"
    raise AssertionError(kind)


def drop_tables(url: str) -> None:
    """Remove a test's PostgreSQL tables (each test has its own prefix)."""
    from costguard.stores.sql import SQLStore

    store = open_store(url)
    assert isinstance(store, SQLStore)
    store.drop_schema()
    store.close()


STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("fakeredis", id="fakeredis"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
# Stores several processes can share (a fakeredis server lives in one process).
SHARED_STORE_KINDS = [STORE_KINDS[1], STORE_KINDS[2], STORE_KINDS[4]]
FLEET_STORE_KINDS = [STORE_KINDS[2], STORE_KINDS[4]]  # what a fleet shares: PostgreSQL and Redis


def _cleanup(kind: str, url: str) -> None:
    if kind == "postgres":
        drop_tables(url)
    elif kind == "redis":
        drop_namespace(url)
    _FAKE_SERVERS.pop(url, None)


class RedisURLs:
    """Fresh Redis namespaces for a test (`new("fakeredis")`, `new("redis")`), all dropped at teardown."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []

    def new(self, kind: str, same_server_as: str | None = None) -> str:
        url = fake_redis_url(same_server_as) if kind == "fakeredis" else redis_test_url()
        self.made.append((kind, url))
        return url

    @staticmethod
    def open(url: str, **options: Any) -> Store:
        """Open a store; fakeredis URLs get fakeredis clients."""
        return open_test_store(url, **options)

    def cleanup(self) -> None:
        for kind, url in self.made:
            _cleanup(kind, url)


@pytest.fixture
def redis_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisURLs]:
    """Make fresh Redis namespaces; guards built from their URLs get fakeredis clients where needed."""
    monkeypatch.setattr(costguard.wiring, "open_store", open_test_store)
    urls = RedisURLs()
    yield urls
    urls.cleanup()


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each store kind in turn, isolated per test (guards built from a fakeredis URL get its clients)."""
    url = store_url_for(request.param, tmp_path)
    if request.param == "fakeredis":
        monkeypatch.setattr(costguard.wiring, "open_store", open_test_store)
    yield url
    _cleanup(request.param, url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store of each kind."""
    opened = open_test_store(store_url)
    yield opened
    opened.close()


@pytest.fixture(params=FLEET_STORE_KINDS)
def fleet_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The stores a fleet of processes shares across machines (PostgreSQL, Redis)."""
    url = store_url_for(request.param, tmp_path)
    yield url
    _cleanup(request.param, url)


@pytest.fixture(params=SHARED_STORE_KINDS)
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Stores that several processes share (SQLite file, PostgreSQL, Redis)."""
    url = store_url_for(request.param, tmp_path)
    yield url
    _cleanup(request.param, url)
