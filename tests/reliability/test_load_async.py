"""The async path under a burst: an ASGI app on 2 uvicorn workers, 64 concurrent requests for one
customer whose daily cap admits exactly 100 calls — exactly 100 answers, the rest 429, and $1.00
recorded, on every shared store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from test_load import cpu_hog

from costguard import Guard
from stores.redis_server import free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
REQUESTS = 300
CONCURRENCY = 64


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "costguard.yaml"
    path.write_text(f"store: {url!r}\nfeatures:\n  chat:\n    per_customer: {{daily_usd: 1.00}}\n")
    return path


async def burst(base: str) -> Counter[tuple[int, str]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base, timeout=30.0, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as client:

        async def one() -> tuple[int, str]:
            async with limit:
                reply = await client.post("/chat", headers={"X-Customer-Id": "acme"})
            body = reply.json()
            return reply.status_code, body.get("code", "") if reply.status_code != 200 else "answer"

        return Counter(await asyncio.gather(*(one() for _ in range(REQUESTS))))


@pytest.mark.parametrize("hog", [False, True], ids=["quiet", "cpu-hog"])
def test_two_uvicorn_workers_and_64_concurrent_requests_admit_exactly_the_cap(
    shared_store_url: str, tmp_path: Path, hog: bool
) -> None:
    path = config(tmp_path, shared_store_url)
    port = free_port()
    env = {**os.environ, "COSTGUARD_CONFIG": str(path)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_app:app",
            "--app-dir",
            str(HERE),
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        pids: set[str] = set()
        while len(pids) < 2:  # both workers up and serving
            assert server.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start two workers"
            try:
                pids.add(httpx.get(f"{base}/health", timeout=1.0).text)
            except httpx.HTTPError:
                time.sleep(0.1)
        with cpu_hog(hog):
            counts = asyncio.run(burst(base))
    finally:
        server.terminate()
        server.wait(60)
    assert counts == Counter({(200, "answer"): 100, (429, "cap_exhausted"): REQUESTS - 100})
    guard = Guard.from_yaml(path)
    (row,) = guard.status(feature="chat", customer="acme").ceilings
    assert (row.spent, row.reserved) == (1.0, 0.0)
    guard.close()
