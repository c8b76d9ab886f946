"""Latency `costguard proxy` adds to a call, and streamed time to first byte, against a local upstream.

    .venv/bin/python benchmarks/proxy_bench.py [--calls 2000] [--stores memory,redis]

The upstream is a minimal ASGI app (uvicorn, its own process) that answers an OpenAI chat completion with
usage, or streams one (its first event at once). The proxy runs in another process, with a run key
capped on a far-off `total_usd`; the client is one keep-alive `httpx.Client` calling sequentially. Printed:
p50 / p90 of the direct call and of the proxied one, the difference (the proxy's added latency), and the
same for the time to the first streamed byte. Redis comes from COSTGUARD_BENCH_REDIS_URL (or the test URL).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import time
import uuid
from typing import Any

import httpx

USAGE = {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
).encode()
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def _chunk(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The local vendor: a chat completion, or a stream of four events, usage and [DONE]."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body or b"{}")
    if not request.get("stream"):
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench-model"}
    for word in ("o", "k", "!", ""):
        delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        await send({"type": "http.response.body", "body": _chunk({**base, "choices": [delta]}), "more_body": True})
    await send(
        {"type": "http.response.body", "body": _chunk({**base, "choices": [], "usage": USAGE}), "more_body": True}
    )
    await send({"type": "http.response.body", "body": _chunk("[DONE]"), "more_body": False})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_floor(port: int, upstream_url: str) -> None:
    """The floor: any Python proxy's extra hop — the same uvicorn + httpx forwarding, no key, no guard."""
    import httpx as hx
    import uvicorn

    client: list[hx.AsyncClient] = []

    async def forward(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not client:
            client.append(hx.AsyncClient())
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix("/openai")
        request = client[0].build_request(
            "POST", upstream_url + path, content=body, headers={"content-type": "application/json"}
        )
        response = await client[0].send(request, stream=True)
        headers = [
            (k.encode(), v.encode())
            for k, v in response.headers.items()
            if k not in ("content-length", "transfer-encoding")
        ]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await response.aclose()

    uvicorn.run(forward, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_proxy(port: int, upstream_url: str, store: str, keys: Any) -> None:
    import uvicorn

    from costguard.config import parse_config
    from costguard.proxy import ProxyApp
    from costguard.runkeys import RunKeys

    config = parse_config(
        {
            "store": store,
            "spool_dir": False,
            "pricing": {"models": {"bench-model": {"input_per_mtok": 1, "output_per_mtok": 1}}},
            "proxy": {"upstreams": {"openai": {"kind": "openai", "url": upstream_url, "api_key": "sk-bench"}}},
        }
    )
    guard = config.build()
    keys.put(RunKeys(guard).issue({"run": f"bench-{uuid.uuid4().hex[:8]}"}, {"total_usd": 1_000_000}).key)
    uvicorn.run(ProxyApp(guard, config.proxy), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def measure(client: httpx.Client, url: str, key: str, calls: int, stream: bool) -> list[float]:
    """Seconds per call (stream: to the first byte of the body)."""
    body = {**BODY, "stream": True} if stream else BODY
    headers = {"authorization": f"Bearer {key}"}
    samples = []
    for index in range(calls + calls // 10):
        started = time.perf_counter()
        if stream:
            with client.stream("POST", url, json=body, headers=headers) as response:
                chunks = response.iter_raw()
                first = next(chunks)
                elapsed = time.perf_counter() - started
                assert first, "an empty first chunk"
                assert response.status_code == 200, response.status_code
                for _ in chunks:
                    pass
        else:
            response = client.post(url, json=body, headers=headers)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
        if index >= calls // 10:  # the first tenth warms up
            samples.append(elapsed)
    return samples


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1000 if q != 50 else statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--stores", default="memory,redis")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    up_port = free_port()
    up = ctx.Process(target=run_upstream, args=(up_port,), daemon=True)
    up.start()
    up_url = f"http://127.0.0.1:{up_port}"
    wait_up(up_url)
    stores = {"memory": "memory://"}
    redis = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    if redis:
        sep = "&" if "?" in redis else "?"
        stores["redis"] = f"{redis}{sep}namespace=bench{uuid.uuid4().hex[:8]}"
    print(f"{args.calls} sequential calls per row, one keep-alive client; ms")
    head = f"{'proxy':<8} {'what':<22} {'direct p50':>10} {'proxied p50':>11} {'added p50':>9} {'added p90':>9}"
    print(head + f" {'over floor p50':>14}")
    try:
        with httpx.Client(timeout=30) as client:
            direct = {
                stream: measure(client, f"{up_url}/v1/chat/completions", "sk-bench", args.calls, stream)
                for stream in (False, True)
            }
            floor: dict[bool, float] = {}
            for name in ["floor", *args.stores.split(",")]:
                if name not in stores and name != "floor":
                    continue
                port = free_port()
                if name == "floor":
                    proxy = ctx.Process(target=run_floor, args=(port, up_url), daemon=True)
                    proxy.start()
                    key = "none"
                    wait_up(f"http://127.0.0.1:{port}/")
                else:
                    keys = ctx.Queue()
                    proxy = ctx.Process(target=run_proxy, args=(port, up_url, stores[name], keys), daemon=True)
                    proxy.start()
                    key = keys.get(timeout=30)
                    wait_up(f"http://127.0.0.1:{port}/health")
                try:
                    for stream, what in ((False, "call (non-streamed)"), (True, "time to first byte")):
                        url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
                        proxied = measure(client, url, key, args.calls, stream)
                        d50, p50 = pct(direct[stream], 50), pct(proxied, 50)
                        added90 = pct(proxied, 90) - pct(direct[stream], 90)
                        if name == "floor":
                            floor[stream] = p50
                        over = p50 - floor.get(stream, p50)
                        print(
                            f"{name:<8} {what:<22} {d50:>10.3f} {p50:>11.3f} {p50 - d50:>9.3f} {added90:>9.3f} "
                            f"{over:>14.3f}"
                        )
                finally:
                    proxy.terminate()
                    proxy.join(10)
    finally:
        up.terminate()
        up.join(10)


if __name__ == "__main__":
    main()
