"""Latency `costguard proxy` adds to a call, and streamed time to first byte, against a local upstream.

    .venv/bin/python benchmarks/proxy_bench.py [--calls 2000] [--stores memory,redis]
        [--stacks h11/asyncio,httptools/uvloop] [--floors httpx,httpcore] [--rounds 1] [--baseline-src PATH]

The upstream is a minimal ASGI app (uvicorn on its fastest installed stack, its own process) that answers
an OpenAI chat completion with usage, or streams one (its first event at once). Each forwarder runs in its
own process: the floors, bare forwarders with no key and no guard (`floor-httpx` through an
`httpx.AsyncClient`, `floor-httpcore` through an `httpcore.AsyncConnectionPool`), and `costguard proxy` on
each store, with a run key capped on a far-off `total_usd`. Every forwarder runs once per `--stacks` entry,
uvicorn's `http/loop`: `h11/asyncio` is uvicorn's pure-Python stack, `httptools/uvloop` the one
`costguard proxy` picks when the `[proxy]` extra is installed. `--baseline-src` adds `costguard proxy` rows
(named `<store>@base`) served from another checkout's `src` — a before/after in one run.

The client is one keep-alive `httpx.Client` calling sequentially, alternating a direct call and a proxied
one, so both see the same load on a shared machine. Printed per forwarder and stack: p50 of the direct
call and of the proxied one, the difference (the added latency) at p50 and p90, what `costguard proxy`
adds over the floor of the same stack (`--reference-floor`, default the httpcore one, the client it
uses), and the forwarder process's CPU time per call. The same for the time to the first streamed byte.
`--rounds N` repeats everything, interleaved, and ends with the median and range of each added p50.
Redis comes from COSTGUARD_BENCH_REDIS_URL (or the test URL).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import time
import uuid
from collections import defaultdict
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
MODES = ((False, "call (non-streamed)"), (True, "time to first byte"))
Rows = dict[tuple[str, str, str], float]  # (forwarder, stack, what) -> added p50, ms
Running = tuple[str, str, Any, int, str]  # forwarder, stack, its process, its port, the key to send


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


def _serve(app: Any, port: int, stack: str) -> None:
    import uvicorn

    http, _, loop = stack.partition("/")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=http, loop=loop)


def run_upstream(port: int) -> None:
    _serve(upstream, port, "auto/auto")


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def floor_httpx(upstream_url: str) -> Any:
    """The floor through httpx: any Python proxy's extra hop — uvicorn + httpx forwarding, no key, no guard."""
    client: list[httpx.AsyncClient] = []

    async def forward(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not client:
            client.append(httpx.AsyncClient())
        body = await _read_body(receive)
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

    return forward


def floor_httpcore(upstream_url: str) -> Any:
    """The floor through httpcore (httpx's transport) directly, the client `costguard proxy` uses."""
    import httpcore

    pool = httpcore.AsyncConnectionPool()
    host = upstream_url.removeprefix("http://").encode()

    async def forward(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path = scope["path"].removeprefix("/openai")
        headers = [(b"host", host), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        response = await pool.handle_async_request(
            httpcore.Request(b"POST", upstream_url + path, headers=headers, content=body)
        )
        try:
            kept = [(k, v) for k, v in response.headers if k.lower() not in (b"content-length", b"transfer-encoding")]
            await send({"type": "http.response.start", "status": response.status, "headers": kept})
            async for chunk in response.aiter_stream():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return forward


def run_floor(port: int, upstream_url: str, client: str, stack: str) -> None:
    build = {"httpx": floor_httpx, "httpcore": floor_httpcore}[client]
    _serve(build(upstream_url), port, stack)


def run_proxy(port: int, upstream_url: str, store: str, keys: Any, stack: str, src: str | None) -> None:
    if src is not None:  # another checkout's costguard, imported before anything imports ours
        sys.path.insert(0, src)
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
    _serve(ProxyApp(guard, config.proxy), port, stack)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (every thread), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(client: httpx.Client, url: str, key: str, stream: bool) -> float:
    """Seconds for one call (stream: to the first byte of the body)."""
    body = {**BODY, "stream": True} if stream else BODY
    headers = {"authorization": f"Bearer {key}"}
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
        return elapsed
    response = client.post(url, json=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def measure(client: httpx.Client, targets: list[tuple[str, str]], calls: int, stream: bool) -> list[list[float]]:
    """Seconds per call of each (url, key) target, called in turn (a fresh order each time, so that no target
    always follows the same one); the first tenth warms up."""
    samples: list[list[float]] = [[] for _ in targets]
    order = list(range(len(targets)))
    shuffle = random.Random(7).shuffle
    for index in range(calls + calls // 10):
        shuffle(order)
        for at in order:
            elapsed = one(client, *targets[at], stream)
            if index >= calls // 10:
                samples[at].append(elapsed)
    return samples


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1000 if q != 50 else statistics.median(samples) * 1000


def forwarders(args: argparse.Namespace, stores: dict[str, str]) -> list[tuple[str, str]]:
    """(name, stack) in the order they run: per stack the floors, then the proxies (the baseline's first)."""
    wanted = [s for s in args.stores.split(",") if s in stores]
    names = [f"floor-{c}" for c in args.floors.split(",") if c]
    if args.baseline_src:
        names += [f"{s}@base" for s in wanted]
    names += wanted
    return [(name, stack) for stack in args.stacks.split(",") for name in names]


def start(
    ctx: Any, name: str, stack: str, up_url: str, stores: dict[str, str], baseline: str | None
) -> tuple[Any, int, str]:
    port = free_port()
    if name.startswith("floor-"):
        process = ctx.Process(target=run_floor, args=(port, up_url, name.removeprefix("floor-"), stack), daemon=True)
        process.start()
        wait_up(f"http://127.0.0.1:{port}/")
        return process, port, "none"
    store, _, base = name.partition("@")
    keys = ctx.Queue()
    src = baseline if base else None
    process = ctx.Process(target=run_proxy, args=(port, up_url, stores[store], keys, stack, src), daemon=True)
    process.start()
    key = keys.get(timeout=30)
    wait_up(f"http://127.0.0.1:{port}/health")
    return process, port, key


def one_round(args: argparse.Namespace, client: httpx.Client, up_url: str, running: list[Running]) -> Rows:
    """Direct and every forwarder in turn, per mode; prints a row per forwarder, stack and mode."""
    rows: Rows = {}
    targets = [(f"{up_url}/v1/chat/completions", "sk-bench")]
    targets += [(f"http://127.0.0.1:{port}/openai/v1/chat/completions", key) for _, _, _, port, key in running]
    for stream, what in MODES:
        cpu = [cpu_seconds(process.pid) for _, _, process, _, _ in running]
        direct, *proxied = measure(client, targets, args.calls, stream)
        d50 = pct(direct, 50)
        floor = {
            stack: pct(samples, 50) - d50
            for (name, stack, *_), samples in zip(running, proxied, strict=True)
            if name == f"floor-{args.reference_floor}"
        }
        for (name, stack, process, _, _), samples, before in zip(running, proxied, cpu, strict=True):
            used = (cpu_seconds(process.pid) - before) / (args.calls + args.calls // 10) * 1000
            added = pct(samples, 50) - d50
            rows[name, stack, what] = added
            print(
                f"{name:<16} {stack:<17} {what:<20} {d50:>10.3f} {pct(samples, 50):>11.3f} {added:>9.3f} "
                f"{pct(samples, 90) - pct(direct, 90):>9.3f} {added - floor.get(stack, added):>10.3f} {used:>8.3f}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument("--stacks", default="h11/asyncio,httptools/uvloop", help="uvicorn http/loop per run")
    parser.add_argument("--floors", default="httpx,httpcore", help="the bare forwarders' clients")
    parser.add_argument("--reference-floor", default="httpcore", help="the floor 'over floor' is measured from")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-src", default=None, help="also serve costguard proxy from this src directory")
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
    print(f"{args.calls} sequential calls per row, direct and every forwarder in turn, one keep-alive client; ms")
    head = f"{'forwarder':<16} {'stack':<17} {'what':<20} {'direct p50':>10} {'proxied p50':>11}"
    head += f" {'added p50':>9} {'added p90':>9} {'over floor':>10} {'cpu/call':>8}"
    added: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    running: list[Running] = []
    try:
        for name, stack in forwarders(args, stores):
            running.append((name, stack, *start(ctx, name, stack, up_url, stores, args.baseline_src)))
        with httpx.Client(timeout=30) as client:
            for round_ in range(args.rounds):
                print(f"\nround {round_ + 1}\n{head}", flush=True)
                for row, value in one_round(args, client, up_url, running).items():
                    added[row].append(value)
    finally:
        for process in [up, *(r[2] for r in running)]:
            process.terminate()
            process.join(10)
    if args.rounds > 1:
        print(f"\nadded p50 over {args.rounds} rounds: median (min..max), ms")
        for (name, stack, what), values in added.items():
            spread = f"({min(values):.3f}..{max(values):.3f})"
            print(f"{name:<16} {stack:<17} {what:<20} {statistics.median(values):>6.3f} {spread}")


if __name__ == "__main__":
    main()
