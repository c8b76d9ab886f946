"""The process-wide default guard used by the module-level `with_kill_switch`."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from costguard.errors import ConfigError

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["check_default_config", "config_path", "configure", "default_guard"]

_lock = threading.Lock()
_default: Guard | None = None


def configure(guard: Guard | None) -> None:
    """Make `guard` the default for `costguard.with_kill_switch` (None forgets it)."""
    global _default
    with _lock:
        _default = guard


def config_path() -> Path | None:
    """`$COSTGUARD_CONFIG`, else `./costguard.yaml` when it exists."""
    env = os.environ.get("COSTGUARD_CONFIG")
    if env:
        return Path(env)
    local = Path("costguard.yaml")
    return local if local.exists() else None


def check_default_config() -> None:
    """Validate, now, the file the default guard would be loaded from (`ConfigError` naming the key and
    line), without opening its store; nothing to check when a guard is configured or there is no file yet
    (`costguard.configure()` may still come). Web integrations call it when the app is built, so a broken
    costguard.yaml stops the app from booting instead of failing every request."""
    if _default is not None:
        return
    path = config_path()
    if path is not None:
        from costguard._config import load_settings

        load_settings(path)


def default_guard() -> Guard:
    """The configured guard, loaded on first use from `COSTGUARD_CONFIG` or `./costguard.yaml`."""
    global _default
    guard = _default
    if guard is not None:
        return guard
    with _lock:
        if _default is None:
            path = config_path()
            if path is None:
                raise ConfigError(
                    "no costguard guard is configured: call costguard.configure(Guard(...)), "
                    "put a costguard.yaml in the working directory, or set COSTGUARD_CONFIG=path"
                )
            from costguard.guard import Guard

            _default = Guard.from_yaml(path)
        return _default
