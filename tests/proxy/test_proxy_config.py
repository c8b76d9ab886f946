"""The `proxy:` section of costguard.yaml: errors name the key path; vendor keys never show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from costguard.config import parse_config
from costguard.errors import ConfigError
from costguard.proxy import ProxyApp
from costguard.runkeys import RunKeys

SECRET = "sk-live-very-secret-key-000"


def upstreams(**entries: object) -> dict[str, object]:
    return {"store": "memory://", "spool_dir": False, "proxy": {"upstreams": entries}}


def test_a_generic_upstream_needs_one_price() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(upstreams(stripe={"kind": "generic", "url": "https://api.stripe.com", "api_key": SECRET}))
    assert "proxy.upstreams.stripe" in str(caught.value) and "price_usd" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_unknown_keys_and_bad_urls_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.upstreams\.openai\.colour"):
        parse_config(upstreams(openai={"kind": "openai", "url": "https://api.openai.com", "colour": "red"}))
    with pytest.raises(ConfigError, match=r"proxy\.upstreams\.openai\.url"):
        parse_config(upstreams(openai={"kind": "openai", "url": "api.openai.com"}))


def test_vendor_keys_and_run_keys_never_show_in_a_repr() -> None:
    config = parse_config(upstreams(openai={"kind": "openai", "url": "https://api.openai.com", "api_key": SECRET}))
    guard = config.build()
    try:
        app = ProxyApp(guard, config.proxy)
        assert SECRET not in repr(config) and SECRET not in repr(app) and SECRET not in repr(config.proxy)
        issued = RunKeys(guard).issue({"run": "r-1"}, {"total_usd": 1})
        assert issued.key not in repr(issued) and issued.key not in repr(issued.state)
        assert issued.key not in repr(guard.store.control())
    finally:
        guard.close()


def test_a_run_key_needs_labels_and_valid_caps() -> None:
    guard = parse_config(upstreams()).build()
    try:
        keys = RunKeys(guard)
        with pytest.raises(ValueError, match="at least one label"):
            keys.issue({}, {"total_usd": 1})
        with pytest.raises(ValueError, match="caps"):
            keys.issue({"run": "r-1"}, {"total_usd": -1})
        with pytest.raises(ValueError, match="caps"):
            keys.issue({"run": "r-1"}, {"yearly_usd": 1})
        with pytest.raises(ValueError, match="not '\\*'"):
            keys.issue({"run": "*"}, {"total_usd": 1})
        with pytest.raises(ValueError, match="ttl_s"):
            keys.issue({"run": "r-1"}, {"total_usd": 1}, ttl_s=0)
        assert guard.store.control().keys == ()
    finally:
        guard.close()


def test_the_cli_serves_on_the_fastest_stack_installed_and_can_drop_the_access_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httptools and uvloop come with the `[proxy]` extra; `--no-access-log` saves uvicorn's line per call."""
    import uvicorn
    from click.testing import CliRunner

    from costguard.cli import main

    pytest.importorskip("httptools")
    pytest.importorskip("uvloop")
    path = tmp_path / "costguard.yaml"
    path.write_text(yaml.safe_dump(upstreams(openai={"kind": "openai", "url": "http://127.0.0.1:9", "api_key": "k"})))
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append(options))
    result = CliRunner().invoke(main, ["proxy", "--config", str(path), "--no-access-log"])
    assert result.exit_code == 0, result.output
    assert (runs[0]["http"], runs[0]["loop"]) == ("httptools", "uvloop")
    assert runs[0]["access_log"] is False
    assert "(httptools, uvloop)" in result.output


def test_without_the_c_stack_the_proxy_runs_on_uvicorn_s_pure_python_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import costguard.proxy.serve as serve

    monkeypatch.setattr(serve, "find_spec", lambda name: None)
    assert serve.server_stack() == ("h11", "asyncio")
