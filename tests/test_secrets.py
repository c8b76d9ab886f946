"""Secrets never show: not in a repr, an error, a log line or the CLI's output."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from costguard import ConfigError, Guard
from costguard.cli import main
from costguard.config import load_config
from costguard.stores import check_store_url, open_store, redacted

PASSWORD = "hunter2-s3cret"
TOKEN = "adm-" + "9" * 32


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/db?prefix=x_&connect_timeout=1",
        f"postgresql://app:{PASSWORD}@127.0.0.1:1/db",
        f"postgresql+psycopg://app@127.0.0.1:1/db?password={PASSWORD}",
        f"redis://:{PASSWORD}@127.0.0.1:1/0",
        f"rediss://user:{PASSWORD}@cache.internal:6380/2?namespace=n",
    ],
)
def test_a_store_url_shows_without_its_password(url: str, caplog: pytest.LogCaptureFixture) -> None:
    assert PASSWORD not in redacted(url)
    assert "***" in redacted(url)
    with caplog.at_level(logging.DEBUG, logger="costguard"):
        guard = Guard(url, spool_dir=False)
        assert PASSWORD not in repr(guard)
        assert PASSWORD not in repr(guard.store) + guard.store.url + guard.store.identity
        guard.close(timeout=0.1)
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:notaport/db",
        f"nosuchscheme://app:{PASSWORD}@host/db",
        f"redis://:{PASSWORD}@127.0.0.1:1/0?timeout_ms=-5",
        f"redis://:{PASSWORD}@127.0.0.1:1/0?namespace=bad%20name",
    ],
)
def test_a_bad_store_url_is_an_error_that_hides_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_store_url(url)
        open_store(url)
    assert PASSWORD not in str(caught.value)


def test_the_config_repr_hides_tokens_and_notifier_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-" + PASSWORD)
    monkeypatch.setenv("HOOK_SECRET", "whsec-" + PASSWORD)
    monkeypatch.setenv("PD_KEY", "pd-" + PASSWORD)
    path = tmp_path / "costguard.yaml"
    path.write_text(
        "store: memory://\n"
        "notifiers:\n"
        "  - slack: {token: '${SLACK_TOKEN}', channel: '#ops'}\n"
        f"  - slack: {{webhook_url: 'https://hooks.slack.com/services/T0/B0/{PASSWORD}'}}\n"
        "  - webhook: {url: 'https://ops.example.com/hook', secret: '${HOOK_SECRET}',\n"
        f"              headers: {{Authorization: 'Bearer {PASSWORD}'}}}}\n"
        "  - pagerduty: {routing_key: '${PD_KEY}'}\n"
        "admin:\n"
        f"  tokens: [{{name: ops, token: '{TOKEN}', role: admin}}]\n"
    )
    loaded = load_config(path)
    shown = repr(loaded.config) + str(loaded.config)
    assert PASSWORD not in shown
    assert TOKEN not in shown
    guard = loaded.build()
    shown = repr(guard) + repr(guard.notifiers) + repr(guard.admin)
    assert PASSWORD not in shown
    assert TOKEN not in shown
    guard.close(timeout=0.1)


def test_the_cli_never_prints_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    for url in (
        f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/db?connect_timeout=1",
        f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:notaport/db",
    ):
        path = tmp_path / "costguard.yaml"
        path.write_text(
            f"store: {url!r}\nstore_deadline_ms: 300\nspool_dir: false\nfeatures: {{f: {{daily_usd: 1}}}}\n"
        )
        for command in (["status"], ["check-config"], ["killswitch", "status"]):
            result = CliRunner().invoke(main, [*command, "--config", str(path)])
            assert PASSWORD not in result.output, (command, result.output)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.slack.example/services/T000/B000/XXXXSECRETXXXX",
        "hooks.slack.example/services/T000/B000/XXXXSECRETXXXX",
        "https:///services/T000/B000/XXXXSECRETXXXX",
    ],
)
def test_a_malformed_webhook_url_is_refused_without_showing_its_secret(url: str) -> None:
    from costguard.notify.slack import SlackNotifier
    from costguard.notify.webhook import WebhookNotifier

    for build in (lambda: SlackNotifier(webhook_url=url), lambda: WebhookNotifier(url=url)):
        with pytest.raises(ValueError, match="must be an http:// or https:// URL") as caught:
            build()
        assert "XXXXSECRETXXXX" not in str(caught.value)
