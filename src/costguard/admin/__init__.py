"""The admin HTTP API and dashboard: `router(guard)` to mount in FastAPI, `app(guard)` to serve on its own.

Needs the `admin` extra: `pip install "costguard-ai[admin]"`. Tokens and `max_limit_usd` come from
the config's `admin:` block, passed as `admin=` (`load_config(path).config.admin`, a mapping of the
same shape, or an `AdminConfig`); without one every `/v1` endpoint answers 401.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from costguard.admin.policy import ROLES, AccessDenied, Principal, Role, TokenBook

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from costguard.config import AdminConfig
    from costguard.guard import Guard

__all__ = ["ROLES", "AccessDenied", "Principal", "Role", "TokenBook", "app", "router"]

_MISSING = 'the admin API needs FastAPI: pip install "costguard-ai[admin]"'


def router(guard: Guard, *, admin: AdminConfig | Mapping[str, Any] | None = None) -> APIRouter:
    """An APIRouter with the admin API (`/v1/...`, `/health`) for `guard`: `app.include_router(router(guard, ...))`."""
    try:
        from costguard.admin.api import build_router
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(_MISSING) from exc
    return build_router(guard, admin)


def app(guard: Guard, *, admin: AdminConfig | Mapping[str, Any] | None = None) -> FastAPI:
    """A FastAPI app: the admin API, `/openapi.json`, and the dashboard at `/`."""
    try:
        from costguard.admin.server import build_app
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(_MISSING) from exc
    return build_app(guard, admin)
