"""`GET /metrics` on `costguard serve`: the guard's Prometheus metrics, behind an admin token by default.

`admin.metrics.auth: token` (the default) takes any configured admin token without a tenant (the
`read` role is enough: Prometheus sends it with `authorization: {credentials: ...}`); a tenant's
token is refused, the series cover every customer. `auth: none` serves anyone who can reach the port.
Without the `prometheus` extra the route answers 501 with the command that installs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from costguard.admin.http import PUBLIC_ROUTES, current_principal, error_response, route_class
from costguard.admin.policy import AccessDenied, Principal, TokenBook, admin_settings
from costguard.config import AdminConfig
from costguard.guard import Guard

__all__ = ["build_metrics_router"]

_NAME = "costguard_metrics"


def _scraper(guard: Guard, top_n: int, cache_s: float) -> Callable[[], Response]:
    try:
        from costguard.metrics import exposition, registry_for
    except ImportError:

        def missing() -> Response:
            return error_response(
                501, "not_implemented", '/metrics needs prometheus-client: pip install "costguard-ai[prometheus]"'
            )

        return missing
    registry = registry_for(guard, top_n=top_n, cache_s=cache_s)

    def scrape() -> Response:
        body, content_type = exposition(registry)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return scrape


def build_metrics_router(guard: Guard, admin: AdminConfig | Mapping[str, Any] | None = None) -> APIRouter:
    """An APIRouter serving `GET /metrics` for `guard`, authenticated as `admin.metrics.auth` says."""
    settings = admin_settings(guard, admin)
    options = settings.metrics
    public = options.auth == "none"
    router = APIRouter(
        route_class=route_class(TokenBook(settings.tokens), PUBLIC_ROUTES | ({_NAME} if public else set()))
    )
    scrape = _scraper(guard, options.top_n, options.cache_s)

    if public:

        @router.get("/metrics", name=_NAME, include_in_schema=False)
        def open_metrics() -> Response:
            return scrape()

    else:

        @router.get("/metrics", name=_NAME, include_in_schema=False)
        def metrics(caller: Annotated[Principal, Depends(current_principal)]) -> Response:
            if caller.tenant is not None:
                raise AccessDenied(
                    f"the token {caller.name!r} is limited to tenant {caller.tenant!r}; /metrics shows every "
                    "customer's spend and needs a token without a tenant"
                )
            return scrape()

    return router
