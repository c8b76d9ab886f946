"""The app `costguard proxy` serves: built in each worker process from the config file it names."""

from __future__ import annotations

import os

from costguard.config import load_config
from costguard.proxy.app import ProxyApp

__all__ = ["app_from_env"]


def app_from_env() -> ProxyApp:
    """A `ProxyApp` for the config at `$COSTGUARD_PROXY_CONFIG` (uvicorn's factory in each worker)."""
    loaded = load_config(os.environ["COSTGUARD_PROXY_CONFIG"])
    return ProxyApp(loaded.build(), loaded.config.proxy)
