"""What a proxied request may be: its path (forwarded exactly as written, never out of the upstream's
URL), its body (read whole, up to `MAX_BODY`) and which headers belong to this hop only."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import httpx

from costguard._config.proxy import UpstreamConfig

__all__ = [
    "HOP_BY_HOP",
    "MAX_BODY",
    "DuplicateKey",
    "header_key",
    "hop_by_hop",
    "parse_json",
    "path_problem",
    "read_body",
]

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


# Meant for one connection, never forwarded either way: RFC 9110 §7.6.1's list and RFC 2616 §13.5.1's
# (`Proxy-Authenticate`, `Proxy-Authorization`, `Trailer`).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
    }
)


def header_key(name: bytes | str) -> str:
    """A header's name as the proxy compares it: lower case, `_` read as `-` (CGI and WSGI servers, and
    some frameworks behind a vendor's edge, take `OpenAI_Organization` for `OpenAI-Organization`)."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.strip().lower().replace("_", "-")


def hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[str]:
    """The names (as `header_key`s) of `headers` meant for this hop only, never forwarded: RFC 9110's, and
    every name any `Connection` line lists (a client or server may send several lines: each counts)."""
    named = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(header_key(part) for part in value.decode("latin-1").split(","))
    named.discard("")
    return frozenset(named)


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
