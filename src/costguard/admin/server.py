"""`costguard.admin.app()`: the admin API, the dashboard at `/` and `/metrics`, as one FastAPI app."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import costguard
from costguard.admin.api import build_router
from costguard.admin.http import error_response, http_error_code, validation_message
from costguard.admin.schemas import tighten_openapi
from costguard.admin.scrape import build_metrics_router
from costguard.config import AdminConfig
from costguard.guard import Guard

__all__ = ["build_app"]

_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page loads nothing from anywhere else and can't be framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return (resources.files("costguard.admin") / "static" / name).read_bytes()


def build_app(guard: Guard, admin: AdminConfig | Mapping[str, Any] | None = None) -> FastAPI:
    """The admin API, `/openapi.json` and the dashboard for `guard` (see `costguard.admin.app`)."""
    app = FastAPI(
        title="costguard admin API",
        version=costguard.__version__,
        description="Spend, forecasts, limits, the kill switch and the audit log of a costguard store.",
        docs_url=None,  # the interactive docs page loads its code from a CDN; /openapi.json is enough
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.include_router(build_router(guard, admin))
    app.include_router(build_metrics_router(guard, admin))  # GET /metrics (Prometheus)

    def openapi() -> dict[str, Any]:
        # FastAPI's schema, with the rules only this guard knows (its labels, its label length) stated.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = tighten_openapi(schema, guard.known_labels(), guard.max_label_length)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    page = _asset("index.html")
    assets = {name: _asset(name) for name in _STATIC}

    @app.get("/", include_in_schema=False)
    def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:  # browsers ask for it whatever the page says: an icon, not a 404 in the log
        return Response(assets["favicon.svg"], media_type=_STATIC["favicon.svg"], headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            return error_response(404, "not_found", f"no such file: {name}")
        return Response(assets[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, http_error_code(exc.status_code), str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", validation_message(exc.errors()))

    return app
