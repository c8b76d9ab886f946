"""The upstream hop over httpcore keeps what httpx.AsyncClient did for the proxy, and drops its cookie jar."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
import pytest
from proxy_helpers import VENDOR_KEY, free_port, serve, spent

from costguard.config import parse_config
from costguard.proxy import ProxyApp
from costguard.proxy.upstream import UpstreamClient
from costguard.runkeys import RunKeys

ANSWER = json.dumps({"ok": True}).encode()


class Recorder:
    """An upstream that records each request's headers; it sets a cookie, and gzips its answer when told."""

    def __init__(self) -> None:
        self.headers: list[dict[bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        self.headers.append(headers)
        body, out = ANSWER, [(b"content-type", b"application/json"), (b"set-cookie", b"session=agent-a")]
        if headers.get(b"x-gzip"):  # a server that ignores the accept-encoding: identity the proxy sends
            body = gzip.compress(ANSWER)
            out.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})


async def fetch(client: UpstreamClient, url: str, headers: list[tuple[bytes, bytes]], content: bytes) -> bytes:
    request = client.build_request("POST", url, headers=headers, content=content, timeout=httpx.Timeout(5.0))
    response = await client.send(request)
    try:
        return await response.aread()
    finally:
        await response.aclose()


def test_the_request_carries_host_length_and_httpx_s_defaults_and_no_cookie_comes_back() -> None:
    upstream = Recorder()

    async def main(url: str) -> None:
        client = UpstreamClient()
        try:
            for _ in range(2):  # the second request on the kept-alive connection, after a set-cookie
                await fetch(client, f"{url}/v1/x?a=1", [(b"content-type", b"application/json")], b"{}")
            await fetch(client, f"{url}/v1/x", [(b"accept", b"text/plain"), (b"user-agent", b"agent/1")], b"")
        finally:
            await client.aclose()

    with serve(upstream) as url:
        asyncio.run(main(url))
        host = url.removeprefix("http://").encode()
    first, second, third = upstream.headers
    assert first[b"host"] == host
    assert first[b"content-length"] == b"2"
    assert first[b"accept"] == b"*/*"
    assert first[b"user-agent"] == f"python-httpx/{httpx.__version__}".encode()
    assert b"cookie" not in second  # no jar: one agent's cookies never reach the upstream with another's call
    assert third[b"content-length"] == b"0"  # a POST with no body says so, as httpx does
    assert (third[b"accept"], third[b"user-agent"]) == (b"text/plain", b"agent/1")  # the agent's own kept


def test_a_compressed_answer_is_decoded_before_it_is_priced_and_passed_on() -> None:
    upstream = Recorder()
    with serve(upstream) as upstream_url:
        config = parse_config(
            {
                "store": "memory://",
                "spool_dir": False,
                "proxy": {
                    "upstreams": {
                        "twilio": {"kind": "generic", "url": upstream_url, "api_key": VENDOR_KEY, "price_usd": 0.02}
                    }
                },
            }
        )
        guard = config.build()
        issued = RunKeys(guard).issue({"run": "gz"}, {"total_usd": 5})
        with serve(ProxyApp(guard, config.proxy)) as url, httpx.Client() as http:
            response = http.post(
                f"{url}/twilio/v1/messages",
                content=b"{}",
                headers={"authorization": f"Bearer {issued.key}", "x-gzip": "1"},
            )
            assert response.status_code == 200, response.text
            assert "content-encoding" not in response.headers
            assert response.content == ANSWER
            assert spent(guard, run="gz") == 0.02
        guard.close()


def test_an_upstream_that_refuses_the_connection_raises_httpx_s_connect_error() -> None:
    async def main() -> None:
        client = UpstreamClient()
        try:
            with pytest.raises(httpx.ConnectError):
                await fetch(client, f"http://127.0.0.1:{free_port()}/v1/x", [], b"{}")
        finally:
            await client.aclose()

    asyncio.run(main())


def test_an_outbound_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As httpx.AsyncClient(trust_env=True): HTTP_PROXY routes the call through the proxy (here the
    recorder, which sees the upstream's host), NO_PROXY sends it straight (to a port nobody listens on)."""
    forward_proxy = Recorder()
    vendor = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        client = UpstreamClient()
        try:
            await fetch(client, f"http://{vendor}/v1/x", [], b"{}")
        finally:
            await client.aclose()

    with serve(forward_proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "")
        asyncio.run(main())
        assert forward_proxy.headers[-1][b"host"] == vendor.encode()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with pytest.raises(httpx.ConnectError):
            asyncio.run(main())
    assert len(forward_proxy.headers) == 1
