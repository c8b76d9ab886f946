"""A broken costguard.yaml stops the app from starting, with the key and line — not a 500 on every request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django_site  # noqa: F401 - configures Django settings for the middleware
import pytest
from django.test import override_settings

import costguard
from costguard import ConfigError
from costguard.asgi import CostGuardMiddleware as AsgiMiddleware
from costguard.django import CostGuardMiddleware as DjangoMiddleware
from costguard.flask import CostGuard
from costguard.wsgi import CostGuardMiddleware as WsgiMiddleware

BROKEN = "store: memory://\nfeatures:\n  chat:\n    daily_usd: lots\n"


@pytest.fixture
def broken_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "costguard.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    costguard.configure(None)
    yield path
    costguard.configure(None)


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never reached
    raise AssertionError


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover - never reached
    raise AssertionError


@pytest.mark.parametrize(
    "build",
    [
        lambda: AsgiMiddleware(_asgi_app),
        lambda: WsgiMiddleware(_wsgi_app),
        lambda: CostGuard(__import__("flask").Flask("boot")),
    ],
    ids=["asgi", "wsgi", "flask"],
)
def test_the_app_does_not_start_with_a_broken_config(broken_config: Path, build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.path == "features.chat.daily_usd"
    assert "(line 4)" in str(caught.value) and str(caught.value).startswith(broken_config.name)


def test_django_does_not_start_with_a_broken_config(broken_config: Path) -> None:
    with pytest.raises(ConfigError, match="daily_usd"):
        DjangoMiddleware(lambda request: None)  # the default config file
    with override_settings(COSTGUARD={"config": broken_config}), pytest.raises(ConfigError, match=r"\(line 4\)"):
        DjangoMiddleware(lambda request: None)  # COSTGUARD["config"]


def test_no_file_yet_still_starts_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # costguard.configure() may come after the middleware is added: without a file, nothing is checked yet.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COSTGUARD_CONFIG", raising=False)
    costguard.configure(None)
    AsgiMiddleware(_asgi_app)
    WsgiMiddleware(_wsgi_app)
