"""Two `costguard proxy` processes x 64 concurrent clients on one run key share a $1.00 cap exactly, and so
do the two workers of one `costguard proxy --workers 2`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from proxy_helpers import PRICING, VENDOR_KEY, FakeLLM, free_port

from costguard.config import load_config
from costguard.runkeys import RunKeys

pytestmark = pytest.mark.slow

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}  # $0.01


@contextmanager
def proxies(config: Path, count: int, logs: Path, workers: int = 1) -> Iterator[list[str]]:
    """`costguard proxy` processes on 127.0.0.1 (each with `workers` uvicorn workers); yields their base URLs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    ports = [free_port() for _ in range(count)]
    log = logs.open("wb")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "costguard.cli", "proxy", "--config", str(config), "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, logs.read_text()
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "a proxy did not start"
                time.sleep(0.05)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


async def hammer(urls: list[str], key: str, clients: int) -> Counter[int]:
    """`clients` concurrent agents call until the cap has refused them for a while (a neighbour's idle
    leased slice goes back within two lease periods: calls keep coming until it has)."""
    statuses: Counter[int] = Counter()
    last_ok = [time.monotonic()]
    headers = {"authorization": f"Bearer {key}"}

    async def agent(index: int, http: httpx.AsyncClient) -> None:
        url = f"{urls[index % len(urls)]}/openai/v1/chat/completions"
        while time.monotonic() - last_ok[0] < 3.0:
            response = await http.post(url, json=BODY, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                last_ok[0] = time.monotonic()
            else:
                await asyncio.sleep(0.05)

    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(agent(i, http) for i in range(clients)))
    return statuses


def forward_at_a_1_dollar_cap(store_url: str, tmp_path: Path, count: int, workers: int) -> None:
    """64 clients on one run key through `count` proxies of `workers` workers: exactly 100 forwarded."""
    fake = FakeLLM().start()
    try:
        config = tmp_path / "costguard.yaml"
        data = {
            "store": store_url,
            "spool_dir": False,
            "pricing": PRICING,
            "proxy": {"upstreams": {"openai": {"kind": "openai", "url": fake.anthropic_url, "api_key": VENDOR_KEY}}},
        }
        config.write_text(yaml.safe_dump(data))
        guard = load_config(config).build()
        try:
            issued = RunKeys(guard).issue({"run": "fleet"}, {"total_usd": 1.00})
            with proxies(config, count, tmp_path / "proxies.log", workers) as urls:
                statuses = asyncio.run(hammer(urls, issued.key, 64))
            assert set(statuses) <= {200, 429}, statuses
            assert statuses[200] == 100
            assert len(fake.requests) == 100
            rows = [c for c in guard.status(run="fleet").to_dict()["ceilings"] if c["labels"] == {"run": "fleet"}]
            assert rows[0]["spent_usd"] == 1.00
            assert rows[0]["reserved_usd"] == 0
        finally:
            guard.close()
    finally:
        fake.stop()


def test_2_proxies_x_64_clients_forward_exactly_100_calls_at_a_1_dollar_cap(
    fleet_store_url: str, tmp_path: Path
) -> None:
    forward_at_a_1_dollar_cap(fleet_store_url, tmp_path, 2, 1)


def test_one_proxy_with_2_workers_forwards_exactly_100_calls_at_a_1_dollar_cap(
    fleet_store_url: str, tmp_path: Path
) -> None:
    """`--workers 2`: uvicorn's workers each build their own guard from the file (the config's path
    reaches them through the environment) and share the cap through the store."""
    forward_at_a_1_dollar_cap(fleet_store_url, tmp_path, 1, 2)
    started = re.findall(r"Started server process \[(\d+)\]", (tmp_path / "proxies.log").read_text())
    assert len(set(started)) == 2, started  # two worker processes served, not one
