"""The hop to the upstream: httpcore's connection pool (httpx's own transport) without httpx's client layers.

`httpx.AsyncClient` builds and merges a URL, normalises headers, runs auth, redirect and cookie steps and
wraps the request and the answer in its own models: about 0.2 ms a call, a fifth of the proxy's hop against
a local upstream. The proxy needs none of it: its headers are bytes already, it follows no redirect, and a
cookie jar shared by every agent behind the proxy is the last thing it wants. What `AsyncClient` does that
the proxy keeps is kept here: its default headers, `Host` and `Content-Length`, the TLS context (certifi,
`SSL_CERT_FILE`), a proxy from `HTTP(S)_PROXY`/`ALL_PROXY` unless `NO_PROXY` says not, a 5-s keep-alive,
errors raised as httpx's own (mapped the way httpx maps httpcore's), and a decoded body from `aread()`.
"""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpcore
import httpx

__all__ = ["UpstreamClient", "UpstreamPool", "UpstreamResponse"]

UpstreamPool = httpcore.AsyncConnectionPool  # a pool to send every request through (tests, a custom network)

# What httpx.AsyncClient sends when the request doesn't (the proxy always sets accept-encoding itself).
_DEFAULT_HEADERS = (
    (b"accept", b"*/*"),
    (b"connection", b"keep-alive"),
    (b"user-agent", f"python-httpx/{httpx.__version__}".encode()),
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# httpcore's errors as httpx's, most specific first (httpx's transport maps them the same way).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> tuple[httpcore.URL, bytes]:
    """The parsed URL and its `Host` value; parsed by httpx (the same checks and percent-encoding), once."""
    parsed = httpx.URL(url)
    target = httpcore.URL(scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path)
    return target, parsed.netloc


class _Headers:
    """An answer's headers: `raw` as sent, `get` by name (the two uses httpx.Headers had here)."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str = "") -> str:
        """The first value of `name` (any case), or `default`."""
        wanted = name.encode("latin-1")
        for key, value in self.raw:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return default


class UpstreamResponse:
    """The upstream's answer, its body not read yet; `aclose()` it."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = _Headers(response.headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, as sent (not decoded)."""
        stream = self._response.aiter_stream()
        with _as_httpx():
            async for chunk in stream:
                yield chunk

    async def aread(self) -> bytes:
        """The whole body, decoded by its `content-encoding` (as httpx does: gzip, deflate, br or zstd)."""
        content = b"".join([chunk async for chunk in self.aiter_raw()])
        encoding = self.headers.get("content-encoding").strip().lower()
        if encoding and encoding != "identity":  # the proxy asked for identity; not every server listens
            coded = [(b"content-encoding", encoding.encode("latin-1"))]
            content = httpx.Response(self.status_code, headers=coded, content=content).content
        return content

    async def aclose(self) -> None:
        """Give the connection back to the pool (or close it, the body unread)."""
        with _as_httpx():
            await self._response.aclose()


class UpstreamClient:
    """Requests to the upstreams over pooled connections: one pool, or one per outbound proxy in use."""

    def __init__(self, pool: UpstreamPool | None = None, *, max_connections: int = 1000) -> None:
        self._fixed = pool
        self._max = max_connections
        self._pools: dict[str | None, httpcore.AsyncConnectionPool] = {}
        self._proxies = urllib.request.getproxies_environment()  # as httpx.AsyncClient(trust_env=True)

    def build_request(
        self, method: str, url: str, *, headers: list[tuple[bytes, bytes]], content: bytes, timeout: httpx.Timeout
    ) -> httpcore.Request:
        """The request; raises `httpx.InvalidURL` (or `UnicodeEncodeError`) for a URL no request can carry."""
        target, host = _target(url)
        sent = {name for name, _ in headers}
        out = [(b"host", host), *headers]
        out += [(name, value) for name, value in _DEFAULT_HEADERS if name not in sent]
        if content or method in _BODY_METHODS:
            out.append((b"content-length", b"%d" % len(content)))
        return httpcore.Request(method, target, headers=out, content=content, extensions={"timeout": timeout.as_dict()})

    async def send(self, request: httpcore.Request) -> UpstreamResponse:
        """Send `request`; the answer with its headers read. Raises httpx's `TransportError`s."""
        with _as_httpx():
            response = await self._pool(request.url).handle_async_request(request)
        return UpstreamResponse(response)

    def _pool(self, url: httpcore.URL) -> httpcore.AsyncConnectionPool:
        if self._fixed is not None:
            return self._fixed
        proxy = self._proxy_for(url)
        pool = self._pools.get(proxy)
        if pool is None:
            pool = self._pools[proxy] = _new_pool(proxy, self._max)
        return pool

    def _proxy_for(self, url: httpcore.URL) -> str | None:
        if not self._proxies:
            return None
        scheme = url.scheme.decode("ascii")
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if proxy is None or _bypassed(url.host.decode("ascii").lower(), self._proxies.get("no", "")):
            return None
        return proxy

    async def aclose(self) -> None:
        """Close every pooled connection."""
        pools = [*self._pools.values(), *([self._fixed] if self._fixed is not None else [])]
        self._pools.clear()
        for pool in pools:
            await pool.aclose()


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY (comma-separated: `*`, hosts, domains with their subdomains) names `host`."""
    for entry in no_proxy.split(","):
        name = entry.strip().lower().rpartition("://")[2].lstrip(".")
        if name == "*" or (name and (host == name or host.endswith("." + name))):
            return True
    return False


def _new_pool(proxy: str | None, max_connections: int) -> httpcore.AsyncConnectionPool:
    """A pool as httpx.AsyncClient would make it (its TLS context, 5-s keep-alive), direct or via `proxy`."""
    ssl_context = httpx.create_ssl_context()  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR
    keep = max_connections // 5
    if proxy is None:
        return httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=keep,
            keepalive_expiry=5.0,
        )
    kind = httpcore.AsyncSOCKSProxy if proxy.startswith("socks5") else httpcore.AsyncHTTPProxy
    return kind(
        proxy,
        ssl_context=ssl_context,
        max_connections=max_connections,
        max_keepalive_connections=keep,
        keepalive_expiry=5.0,
    )
