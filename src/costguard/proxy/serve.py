"""The app `costguard proxy` serves: built in each worker process from the config file it names, on the
fastest HTTP stack installed."""

from __future__ import annotations

import os
from importlib.util import find_spec

from costguard.config import load_config
from costguard.proxy.app import ProxyApp

__all__ = ["app_from_env", "server_stack"]


def app_from_env() -> ProxyApp:
    """A `ProxyApp` for the config at `$COSTGUARD_PROXY_CONFIG` (uvicorn's factory in each worker)."""
    loaded = load_config(os.environ["COSTGUARD_PROXY_CONFIG"])
    return ProxyApp(loaded.build(), loaded.config.proxy)


def server_stack() -> tuple[str, str]:
    """uvicorn's `http` and `loop` for the proxy: httptools and uvloop when installed (the `[proxy]` extra
    brings them), else uvicorn's pure-Python h11 and asyncio. The C parser and libuv loop take about a
    third off the proxy's hop (docs/performance.md)."""
    http = "httptools" if find_spec("httptools") is not None else "h11"
    loop = "uvloop" if find_spec("uvloop") is not None else "asyncio"
    return http, loop
