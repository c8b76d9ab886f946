"""The Redis store's connections: one sync client (one pool), one asyncio client per event loop, the
scripts loaded at startup and again when the server lost them, the eviction-policy check, closing
async clients from sync code, and the boundary where redis-py errors become costguard's behind the
circuit breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from costguard.stores._probe import Probe
from costguard.stores._redis_codec import config_value
from costguard.stores._redis_conn import (
    SCRIPTS,
    AsyncClient,
    Breaker,
    RedisOptions,
    Script,
    SyncClient,
    async_client,
    busy_answer,
    map_error,
    redis_errors,
    sync_client,
)

__all__ = ["ERRORS", "RedisClients", "amapped", "mapped", "noscript"]

log = logging.getLogger("costguard")

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound="RedisClients")

ERRORS = redis_errors()


def mapped(method: Callable[Concatenate[C, P], T]) -> Callable[Concatenate[C, P], T]:
    """The one boundary where redis-py errors become costguard's, behind the circuit breaker; an answer
    (a `BUSY` reply included) is noted (`Store.answered_at`)."""

    def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._breaker.check()
        try:
            result = method(self, *args, **kwargs)
        except ERRORS as exc:
            if busy_answer(exc):
                self.answered_at = time.monotonic()
            raise map_error(exc, self._breaker, method.__name__, self.where) from exc
        self._breaker.succeeded()
        self.answered_at = time.monotonic()
        return result

    functools.update_wrapper(wrapper, method)
    return wrapper


def amapped(
    method: Callable[Concatenate[C, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[C, P], Coroutine[Any, Any, T]]:
    """`mapped` for the native async methods."""

    async def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._breaker.check()
        try:
            result = await method(self, *args, **kwargs)
        except ERRORS as exc:
            if busy_answer(exc):
                self.answered_at = time.monotonic()
            raise map_error(exc, self._breaker, method.__name__.lstrip("a"), self.where) from exc
        self._breaker.succeeded()
        self.answered_at = time.monotonic()
        return result

    functools.update_wrapper(wrapper, method)
    return wrapper


def noscript() -> type[Exception]:
    """redis-py's error for an EVALSHA of a script the server doesn't have (it did not run)."""
    from redis.exceptions import NoScriptError

    return NoScriptError


class RedisClients:
    """The connections of a Redis store (its base class): clients made on first use, scripts run by SHA.

    `client` / `async_client_factory` inject ready clients (e.g. fakeredis in tests); by default one
    connection pool is opened from the options, and one per event loop for the async methods.
    """

    def __init__(
        self,
        options: RedisOptions,
        where: str,
        client: Any = None,
        async_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.options = options
        self.where = where
        self._breaker = Breaker(options.breaker_s, where)
        self.answered_at = float("-inf")  # `Store.answered_at`: noted at the boundary below
        self._lock = threading.Lock()
        self._client_obj: SyncClient | None = client
        self._async_factory: Callable[[], Any] = async_client_factory or (lambda: async_client(self.options))
        self._async: dict[asyncio.AbstractEventLoop, AsyncClient] = {}
        # The liveness check's own client (`Store.ping`); none when clients are injected (tests).
        self._probe = None if client is not None else Probe(self._probe_client, _ping, _close, self._noted)
        if self._probe is not None:  # its connection is closed with clients nobody closed, too
            weakref.finalize(self, self._probe.closer())

    def _client(self) -> SyncClient:
        client = self._client_obj
        if client is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = sync_client(self.options)  # a cluster client connects here
                client = self._client_obj
        return client

    def _aclient(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            with self._lock:
                for old in [old for old in self._async if old.is_closed()]:
                    del self._async[old]  # its connections died with it
                client = self._async[loop] = self._async_factory()
        return client

    def _startup(self) -> None:
        """Load the scripts once and check the eviction policy; an outage here only opens the breaker."""
        try:
            client = self._client()
            for script in SCRIPTS.values():
                client.execute_command("SCRIPT", "LOAD", script.source)
        except ERRORS as exc:
            error = map_error(exc, self._breaker, "open", self.where)
            log.warning("costguard: %s; calls follow on_store_error until it answers", error)
            return
        try:
            reply = client.execute_command("CONFIG", "GET", "maxmemory-policy")
        except ERRORS:
            return  # managed Redis often forbids CONFIG
        policy = config_value(reply)
        if policy.startswith("allkeys-"):
            log.warning(
                "costguard: Redis at %s evicts any key under memory pressure (maxmemory-policy %s): an evicted "
                "counter is a budget silently reset to zero. Use maxmemory-policy noeviction (writes then fail "
                "and calls follow on_store_error), or volatile-* where other data must stay evictable (only keys "
                "with an expiry go, idle ones first), and give Redis the memory it needs.",
                self.options.where,
                policy,
            )

    def _eval(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        client = self._client()
        try:
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except noscript():
            # The server lost its script cache (restart, failover, SCRIPT FLUSH): the script didn't
            # run, so loading it and trying once more can't count anything twice.
            client.execute_command("SCRIPT", "LOAD", script.source)
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _aeval(self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        client = self._aclient()
        try:
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except noscript():
            await client.execute_command("SCRIPT", "LOAD", script.source)
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connections of the running event loop's client (call before the loop ends)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.pop(loop, None)
        if client is not None:
            await client.aclose()

    def _noted(self) -> None:
        self.answered_at = time.monotonic()

    def _probe_client(self, timeout_s: float) -> SyncClient:
        return sync_client(dataclasses.replace(self.options, timeout_s=timeout_s, connect_timeout_s=timeout_s))

    def ping(self, timeout_s: float) -> bool:
        """`Store.ping`: PING on a connection of its own, with `timeout_s` as its socket timeouts."""
        return self._probe is not None and self._probe.check(timeout_s)

    def close(self) -> None:
        """Disconnect the pool; async clients are closed on their loops where those still run."""
        if self._probe is not None:
            self._probe.close()
        with self._lock:
            client, self._client_obj = self._client_obj, None
            clients, self._async = self._async, {}
        if client is not None:
            client.close()
        for loop, aclient in clients.items():
            _close_on_loop(loop, aclient)


def _close_on_loop(loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
    """Close an async client from sync code, as far as its loop's state allows."""
    if loop.is_closed():
        return  # its sockets can no longer be closed cleanly; call `await store.aclose()` before the loop ends
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        # Inside the loop's own thread we can't wait, and a task may never run (asyncio.run cancels
        # what is left when main returns): close the sockets now where redis-py lets us.
        if not _close_connections_now(client):
            loop.create_task(client.aclose())  # nothing can await it from sync code
    elif loop.is_running():
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
    else:
        loop.run_until_complete(client.aclose())


def _close_connections_now(client: object) -> bool:
    """Close an asyncio client's pooled connections without awaiting (redis-py's `Connection._close`)."""
    pool = getattr(client, "connection_pool", None)
    available = getattr(pool, "_available_connections", None)
    in_use = getattr(pool, "_in_use_connections", None)
    if available is None or in_use is None:
        return False  # not a plain redis.asyncio client (a cluster client, a test double)
    for connection in [*available, *in_use]:
        close = getattr(connection, "_close", None)
        if close is None:
            return False
        close()
    return True


def _ping(client: SyncClient, _timeout_s: float) -> None:
    client.execute_command("PING")  # the client's socket timeouts bound it


def _close(client: SyncClient) -> None:
    client.close()
