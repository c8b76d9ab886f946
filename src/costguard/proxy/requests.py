"""What a proxied request may be: its path (forwarded exactly as written, never out of the upstream's
URL) and its body (read whole, up to `MAX_BODY`)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from costguard._config.proxy import UpstreamConfig

__all__ = ["MAX_BODY", "DuplicateKey", "hop_by_hop", "parse_json", "path_problem", "read_body"]

MAX_BODY = 32 * 1024 * 1024

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class DuplicateKey(ValueError):
    """A JSON object names a key twice."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the JSON body names {key!r} twice")
            seen.add(key)
    return out


def parse_json(raw: bytes) -> Any:
    """The body's JSON (None when it isn't JSON). A key named twice raises DuplicateKey: the proxy would
    price one `max_tokens` (or amount) and the vendor might read the other."""
    try:
        return json.loads(raw, object_pairs_hook=_object)
    except DuplicateKey:
        raise
    except ValueError:
        return None


def hop_by_hop(connection: str | None) -> frozenset[str]:
    """The header names a `Connection` header lists: meant for this hop only, never forwarded."""
    if not connection:
        return frozenset()
    return frozenset(part.strip().lower() for part in connection.split(",") if part.strip())


def path_problem(upstream: UpstreamConfig, rest: str) -> str | None:
    """Why a request path can't go to `upstream` (None: it can). The path is the one the server decoded:
    a `?`, `#` or control character in it was percent-encoded by the agent, and would be taken by the
    upstream's URL for a query, a fragment or worse; `.` and `..` would climb out of the upstream's URL."""
    return _path_problem(upstream.url, rest)


@functools.lru_cache(maxsize=1024)  # two URL parses, ~40 µs: agents call the same few paths again and again
def _path_problem(url: str, rest: str) -> str | None:
    if any(part in (".", "..") for part in rest.split("/")):
        return "'.' and '..' are not allowed in the path"
    if any(ch in "?#\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in rest):
        return "the path may not hold '?', '#', '\\' or control characters (percent-encoded or not)"
    base = httpx.URL(url).path.rstrip("/")
    try:
        sent = httpx.URL(url.rstrip("/") + "/" + rest).path
    except httpx.InvalidURL:
        return "the path is not one a URL can hold"
    if sent != f"{base}/{rest}":
        return "the path would not reach the upstream as written"
    return None


async def read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # the client left before sending its request: nothing to do
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
