"""`costguard serve` as a real process: uvicorn on 127.0.0.1 answering /health, the API and the dashboard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from admin_helpers import TOKENS
from click.testing import CliRunner

from costguard import Guard
from costguard.cli import main

CONFIG = """\
store: sqlite:///{db}
features:
  support_agent:
    monthly_usd: 100
admin:
  max_limit_usd: 500
  tokens:
    - {{name: ops, token: "{admin}", role: admin}}
    - {{name: oncall, token: "${{ONCALL_TOKEN}}", role: operator}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "costguard.yaml"
    path.write_text(CONFIG.format(db=(tmp_path / "spend.db").as_posix(), admin=TOKENS["admin"]), encoding="utf-8")
    return path


def start_serve(config: Path, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`costguard serve` in a child process, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "costguard.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
    )


def stop_serve(process: subprocess.Popen[bytes]) -> bytes:
    """Stop it as Ctrl-C does (killed if it won't) and return what it printed."""
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def wait_for_health(base: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"costguard serve exited with {process.returncode}")
        try:
            return httpx.get(f"{base}/health", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"costguard serve did not answer on {base} within {timeout_s} s")


def test_serve_answers_health_the_api_and_the_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    port = free_port()
    monkeypatch.setenv("ONCALL_TOKEN", TOKENS["operator"])
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    env = dict(os.environ)
    process = start_serve(config, port, env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(base, process)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "store": "ok"}
        assert httpx.get(f"{base}/v1/budget/status").status_code == 401
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        status = httpx.get(f"{base}/v1/budget/status", headers=admin)
        assert status.status_code == 200
        assert status.json()["ceilings"][0]["limit_usd"] == 100.0
        oncall = {"Authorization": f"Bearer {TOKENS['operator']}"}  # token read from ${ONCALL_TOKEN}
        response = httpx.post(f"{base}/v1/killswitch/activate", json={"reason": "drill"}, headers=oncall)
        assert response.status_code == 200, response.text
        page = httpx.get(f"{base}/")
        assert page.status_code == 200
        assert "costguard" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "server" not in page.headers
    finally:
        output = stop_serve(process)
    assert process.returncode == 0, output.decode(errors="replace")
    assert f"http://127.0.0.1:{port}/" in output.decode()
    # The switch is in the store the config names: another process sees it.
    with Guard.from_yaml(config) as guard:
        active = guard.killswitch.status().active
        assert [(dict(s.scope), s.reason, s.actor) for s in active] == [({}, "drill", "api:oncall")]


def test_serve_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("store: memory://\nadmin:\n  tokens: [{name: x, token: short, role: admin}]\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "admin.tokens[0].token" in result.output


@pytest.mark.parametrize("command", ["serve", "mcp"])
def test_help_documents_the_options(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output
    if command == "serve":
        assert "--host" in result.output
        assert "127.0.0.1" in result.output
        assert "8787" in result.output


def test_serve_without_tokens_warns_once_and_serves_a_favicon(tmp_path: Path) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(f"store: sqlite:///{(tmp_path / 'spend.db').as_posix()}\n", encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "COSTGUARD_CONFIG"}
    process = start_serve(config, port, env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, process)
        for _ in range(3):
            assert httpx.get(f"{base}/v1/budget/status").status_code == 401
        icon = httpx.get(f"{base}/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert icon.content.startswith(b"<svg")
        assert 'rel="icon"' in httpx.get(f"{base}/").text
    finally:
        output = stop_serve(process)
    assert output.decode(errors="replace").count("no admin.tokens") == 1, output.decode(errors="replace")
