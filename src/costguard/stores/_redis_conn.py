"""The Redis store's plumbing: URL options, clients that never retry, Lua scripts, a circuit breaker, errors."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from costguard.errors import ConfigError, StoreBusy, StoreError, StoreTimeout, StoreUnavailable
from costguard.stores.base import redacted

__all__ = [
    "SCRIPTS",
    "AsyncClient",
    "Breaker",
    "RedisOptions",
    "Script",
    "SyncClient",
    "async_client",
    "busy_answer",
    "map_error",
    "parse_options",
    "redacted",
    "redis_errors",
    "sync_client",
]

_SCHEMES = {"redis": "redis", "rediss": "rediss", "redis+cluster": "redis", "rediss+cluster": "rediss"}
_OURS = ("namespace", "timeout_ms", "connect_timeout_ms", "breaker_s", "maxlen")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SyncPipeline(Protocol):
    """The part of a redis-py pipeline the store uses."""

    def execute_command(self, *args: Any) -> Any: ...

    def execute(self, raise_on_error: bool = True) -> list[Any]: ...


class SyncClient(Protocol):
    """The part of `redis.Redis` / `redis.cluster.RedisCluster` the store uses."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...

    def pipeline(self, transaction: bool = ...) -> SyncPipeline: ...

    def close(self) -> None: ...


class AsyncClient(Protocol):
    """The part of `redis.asyncio.Redis` / `redis.asyncio.cluster.RedisCluster` the store uses."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RedisOptions:
    """A parsed store URL: what redis-py gets, plus costguard's own query options."""

    client_url: str
    cluster: bool
    where: str
    namespace: str
    timeout_s: float
    connect_timeout_s: float
    breaker_s: float
    maxlen: int


def _number(raw: object, name: str, url: str, *, minimum: float, integer: bool = False) -> float:
    try:
        value = float(str(raw))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum or (integer and not value.is_integer()):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} in {redacted(url)} must be {kind} ≥ {minimum:g}, got {raw!r}", path="store")
    return value


def parse_options(url: str, **given: object) -> RedisOptions:
    """Split `url` into the redis-py URL and our options; keyword arguments win over the query string."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"{redacted(url)} is not a Redis URL: use redis://, rediss:// or redis+cluster://", path="store"
        )
    if not parts.netloc:
        raise ConfigError(
            f"{redacted(url)} names no server: use e.g. redis://127.0.0.1:6379/0 (or rediss://host:port/db)",
            path="store",
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in _OURS}
    for name, value in given.items():
        if value is not None:
            ours[name] = str(value)
    rest = [(name, value) for name, value in query if name not in _OURS]
    client_url = urlunsplit(parts._replace(scheme=_SCHEMES[scheme], query=urlencode(rest)))
    namespace = ours.get("namespace", "costguard")
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            f"namespace {namespace!r} in {redacted(url)} must be 1-64 letters, digits, '_', '.' or '-' "
            "(it becomes the hash tag of every key)",
            path="store",
        )
    timeout_ms = _number(ours.get("timeout_ms", 2000), "timeout_ms", url, minimum=1)
    connect_ms = _number(ours.get("connect_timeout_ms", timeout_ms), "connect_timeout_ms", url, minimum=1)
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"bad port in {redacted(url)}: {exc}", path="store") from None
    return RedisOptions(
        client_url=client_url,
        cluster=scheme.endswith("+cluster"),
        where=f"{parts.hostname or 'localhost'}:{port}",
        namespace=namespace,
        timeout_s=timeout_ms / 1000,
        connect_timeout_s=connect_ms / 1000,
        breaker_s=_number(ours.get("breaker_s", 1.0), "breaker_s", url, minimum=0),
        maxlen=int(_number(ours.get("maxlen", 1_000_000), "maxlen", url, minimum=1, integer=True)),
    )


def _no_retries(options: RedisOptions, retry: type[Any]) -> dict[str, Any]:
    """Client options for both clients: socket timeouts and no retries (a re-sent EVALSHA could count
    twice); `retry` is the client's own `Retry` class."""
    from redis.backoff import NoBackoff

    return {
        "socket_timeout": options.timeout_s,
        "socket_connect_timeout": options.connect_timeout_s,
        "retry": retry(NoBackoff(), 0),
    }


def sync_client(options: RedisOptions) -> SyncClient:
    """A client with one connection pool, socket timeouts and no retries."""
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    if options.cluster:
        return cast("SyncClient", RedisCluster.from_url(options.client_url, **_no_retries(options, Retry)))
    return cast("SyncClient", Redis.from_url(options.client_url, **_no_retries(options, Retry)))


def async_client(options: RedisOptions) -> AsyncClient:
    """The asyncio twin of `sync_client`; one per event loop (asyncio connections belong to their loop)."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry

    if options.cluster:
        return cast("AsyncClient", RedisCluster.from_url(options.client_url, **_no_retries(options, Retry)))
    client = Redis.from_url(options.client_url, **_no_retries(options, Retry))
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)  # connections are made on first use
    return cast("AsyncClient", client)


def _hiredis_packing(base: type[Any]) -> type[Any]:
    """`base` packing commands with hiredis, as redis-py's sync client does (its asyncio one packs each
    argument in Python: a reserve's ~130 arguments cost more than the round trip)."""
    try:
        import hiredis
    except ImportError:
        return base
    if not hasattr(hiredis, "pack_command"):
        return base

    class HiredisPacking(base):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            if isinstance(args[0], str):
                args = (*args[0].encode().split(), *args[1:])  # "CONFIG GET" → two words, as redis-py
            elif b" " in args[0]:
                args = (*args[0].split(), *args[1:])
            return [hiredis.pack_command(args)]

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"HiredisPacking{base.__name__}"
    return HiredisPacking


@dataclass(frozen=True)
class Script:
    """A Lua script (the shared `lib.lua` prepended) and its SHA-1 for EVALSHA."""

    name: str
    source: bytes
    sha: str


def _load_scripts() -> dict[str, Script]:
    folder = resources.files("costguard.stores").joinpath("lua")
    lib = folder.joinpath("lib.lua").read_text("utf-8")
    out = {}
    for name in ("reserve", "settle", "control", "append", "purge", "start"):
        source = (lib + "\n" + folder.joinpath(f"{name}.lua").read_text("utf-8")).encode()
        out[name] = Script(name, source, hashlib.sha1(source).hexdigest())  # noqa: S324 - Redis names scripts by SHA-1
    return out


SCRIPTS = _load_scripts()


class Breaker:
    """Fail fast for `cool_down_s` once `failures` connections in a row could not be made, then let one
    probe through.

    It opens on evidence of an outage — refused or reset connections, one after another — and never
    on a slow reply or a busy server: a burst that makes Redis answer late is overload, and the
    guard waits for it within its deadline. While open a call fails in microseconds and the guard
    applies `on_store_error` at once instead of every caller trying to connect.
    """

    def __init__(self, cool_down_s: float, where: str, failures: int = 3) -> None:
        self.cool_down_s = cool_down_s
        self.where = where
        self.failures = failures
        self._lock = threading.Lock()
        self._failed = 0  # connection failures in a row
        self._open_until: float | None = None
        self._probe_until = 0.0  # a probe in flight until then (bounded: a lost probe can't wedge it)

    def check(self) -> None:
        """Raise `StoreUnavailable` while the circuit is open; after the cool-down one caller probes."""
        if self._open_until is None:
            return
        with self._lock:
            if self._open_until is None:
                return
            now = time.monotonic()
            if now < self._open_until or now < self._probe_until:
                wait = max(self._open_until, self._probe_until) - now
                raise StoreUnavailable(
                    f"Redis store at {self.where} unavailable: circuit open after {self._failed} connection "
                    f"failures in a row, retrying in {wait:.2f} s"
                )
            self._probe_until = now + max(self.cool_down_s, 5.0)

    def succeeded(self) -> None:
        """Redis answered: close the circuit and forget earlier failures."""
        if self._open_until is not None or self._failed:
            with self._lock:
                self._failed = 0
                self._open_until = None
                self._probe_until = 0.0

    def failed(self) -> None:
        """A connection could not be made (refused, reset): open the circuit once that happened
        `failures` times in a row, or when the probe of an open circuit failed."""
        if self.cool_down_s <= 0:
            return
        with self._lock:
            self._failed += 1
            if self._failed >= self.failures or self._open_until is not None:
                self._open_until = time.monotonic() + self.cool_down_s
                self._probe_until = 0.0

    @property
    def is_open(self) -> bool:
        """Whether calls fail fast right now."""
        return self._open_until is not None


def redis_errors() -> tuple[type[BaseException], ...]:
    """The driver exceptions the store maps (redis-py's cluster bootstrap errors are not RedisErrors)."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)


# Replies of a server that is up but can't take the command now (a long script running, loading
# its data, a failover or resharding under way): asked again after a backoff.
_BUSY_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")
# Replies that won't change by asking again soon: writes refused on a replica or out of memory.
_REFUSING_REPLIES = ("READONLY", "OOM")
# Connection errors that mean too many clients, not a server that is gone.
_BUSY_CONNECTS = ("max number of clients", "too many connections")


def busy_answer(exc: BaseException) -> bool:
    """Whether the server itself answered that it is busy (a script running, `BUSY`): alive and taking
    requests, so a deadline that passes meanwhile is overload, not an outage (`Store.answered_at`)."""
    from redis import exceptions as rx

    return isinstance(exc, rx.ResponseError) and str(exc).startswith(("BUSY", "TRYAGAIN"))


def map_error(exc: BaseException, breaker: Breaker, what: str, where: str) -> StoreError:
    """The one place driver errors become costguard's: a reply that didn't come in time is
    `StoreTimeout` (its outcome unknown), an overloaded server `StoreBusy`, a server that can't be
    reached `StoreUnavailable` (counted by the breaker), anything else the server said `StoreError`."""
    from redis import exceptions as rx

    if isinstance(exc, rx.TimeoutError):
        return StoreTimeout(f"Redis store at {where} did not answer {what} in time: {exc}")
    if isinstance(exc, (rx.ConnectionError, rx.RedisClusterException, OSError)):
        if isinstance(exc, rx.BusyLoadingError) or any(part in str(exc).lower() for part in _BUSY_CONNECTS):
            return StoreBusy(f"Redis store at {where} busy during {what}: {exc}")
        breaker.failed()  # evidence of an outage: enough in a row and calls fail fast for a while
        return StoreUnavailable(f"Redis store at {where} unavailable during {what}: {exc}")
    breaker.succeeded()  # the server answered
    if str(exc).startswith(_BUSY_REPLIES):
        return StoreBusy(f"Redis store at {where} busy during {what}: {exc}")
    if isinstance(exc, (rx.ReadOnlyError, rx.OutOfMemoryError, rx.ClusterError)) or str(exc).startswith(
        _REFUSING_REPLIES
    ):
        return StoreUnavailable(f"Redis store at {where} refused {what}: {exc}")
    return StoreError(f"Redis store error during {what} at {where}: {exc}")
