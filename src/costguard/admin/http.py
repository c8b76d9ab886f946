"""The HTTP boundary of the admin API: bearer authentication, the body size cap, and JSON errors.

A custom route class does this per route, so the router behaves the same mounted in someone
else's FastAPI app as in `costguard.admin.app()` (an APIRouter can't install exception handlers).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from costguard.admin.policy import AccessDenied, Principal, TokenBook
from costguard.admin.schemas import BODY_SHAPES, MAX_BODY_BYTES, ErrorBody
from costguard.errors import LimitNotFound, StoreError

__all__ = [
    "ERROR_RESPONSES",
    "PUBLIC_ROUTES",
    "ApiError",
    "bearer_scheme",
    "error_response",
    "http_error_code",
    "route_class",
    "validation_message",
]

log = logging.getLogger("costguard.admin")

PUBLIC_ROUTES = frozenset({"costguard_health"})
_SCOPE_KEY = "costguard.principal"  # per request: the ASGI scope is never shared
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from the config's admin.tokens; its role decides what it may do.",
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The request can't be carried out as given."},
    401: {"model": ErrorBody, "description": "No token, or not a configured one."},
    403: {"model": ErrorBody, "description": "The token's role or tenant may not do this."},
    413: {"model": ErrorBody, "description": "The body is over 64 KB."},
    422: {"model": ErrorBody, "description": "The body or a parameter is not valid; the message names it."},
    503: {"model": ErrorBody, "description": "The store did not answer."},
}

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "store_unavailable",
}


def http_error_code(status: int) -> str:
    """A short machine-readable code for an HTTP status."""
    return _CODES.get(status, f"http_{status}")


class ApiError(Exception):
    """An error answered as `{"error": code, "message": message}` with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        super().__init__(message)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON body every error has."""
    merged = {"Cache-Control": "no-store", **(headers or {})}
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=merged)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, tokens: TokenBook) -> Principal:
    """The caller of a request, from `Authorization: Bearer <token>`; raise a 401 `ApiError` if none."""
    header = request.headers.get("authorization")
    if header is None:
        raise _unauthorized("a bearer token is required: send the header 'Authorization: Bearer <token>'")
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    # Header values arrive decoded as latin-1: encoding back gives the exact bytes sent, so any
    # byte sequence (non-ASCII, any length) is just a token that doesn't match.
    principal = tokens.lookup(credentials.strip().encode("latin-1"))
    if principal is None:
        if not len(tokens):
            raise _unauthorized("this server has no admin tokens configured (admin.tokens in costguard.yaml)")
        raise _unauthorized("the bearer token is not one of the configured admin tokens")
    request.scope[_SCOPE_KEY] = principal
    return principal


# Parts of an error's location that name no field: where it was, and which shape of a body it was read as.
_NOT_FIELDS = frozenset({"body", "query", "path", "header"}) | BODY_SHAPES
_NO_REASON = frozenset({"missing", "string_too_short", "string_pattern_mismatch"})


def validation_message(errors: Sequence[Any]) -> str:
    """`usd: Decimal input should have no more than 6 decimal places; …` from pydantic/FastAPI errors."""
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            parts.append(f"body: not valid JSON ({detail or 'decode error'})")
            continue
        loc = [str(p) for p in error.get("loc", ()) if p not in _NOT_FIELDS]
        where = ".".join(loc) or "body"
        message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
        if loc == ["reason"] and error.get("type") in _NO_REASON:
            message = "a reason is required (it goes in the audit log); it may not be blank"
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _read_capped(request: Request) -> bytes | None:
    """The request body, or None when it is over the cap (checked while reading, not only by Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, "bad_request", "the Content-Length header is not a number")
        if int(declared) > MAX_BODY_BYTES:
            return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def route_class(tokens: TokenBook, public_routes: frozenset[str] = PUBLIC_ROUTES) -> type[APIRoute]:
    """An APIRoute that authenticates first (except routes named in `public_routes`), caps the body at
    64 KB and answers every error as JSON."""

    class CostGuardRoute(APIRoute):
        """Authenticate, cap the body, refuse unknown query parameters, answer errors as JSON."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            public = self.name in public_routes
            known = _query_names(self.dependant)

            async def run(request: Request) -> Response:
                try:
                    if not public:
                        authenticate(request, tokens)  # before the body is parsed: no token, no 422 either
                    unknown = sorted(set(request.query_params) - known)
                    if unknown:
                        # A misspelt filter (custmer=acme) must not silently widen what a caller reads.
                        expected = ", ".join(sorted(known)) or "none"
                        raise ApiError(
                            422,
                            "validation_error",
                            f"unknown query parameter {unknown[0]!r}; this endpoint takes: {expected}",
                        )
                    if request.method in _WITH_BODY:
                        body = await _read_capped(request)
                        if body is None:
                            return error_response(
                                413, "body_too_large", f"the request body is over {MAX_BODY_BYTES // 1024} KB"
                            )
                        request = Request(request.scope, _replay(body))
                    response = await handler(request)
                except ApiError as exc:
                    return error_response(exc.status, exc.code, exc.message, exc.headers)
                except AccessDenied as exc:
                    return error_response(403, exc.code, str(exc))
                except RequestValidationError as exc:
                    return error_response(422, "validation_error", validation_message(exc.errors()))
                except StarletteHTTPException as exc:
                    return error_response(exc.status_code, http_error_code(exc.status_code), str(exc.detail))
                except LimitNotFound as exc:
                    return error_response(404, "limit_not_found", str(exc))
                except StoreError as exc:
                    log.warning("costguard admin: store error: %s", exc)
                    return error_response(503, "store_unavailable", "the costguard store did not answer; try again")
                except ValueError as exc:  # LabelError and the guard's own argument checks
                    return error_response(400, "bad_request", str(exc))
                except Exception:
                    log.exception("costguard admin: %s %s failed", request.method, request.url.path)
                    return error_response(500, "internal_error", "internal error; the server log has the details")
                response.headers.setdefault("Cache-Control", "no-store")
                return response

            return run

    return CostGuardRoute


def current_principal(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
) -> Principal:
    """A FastAPI dependency: the caller the route class authenticated (declares the bearer scheme in OpenAPI)."""
    principal = request.scope.get(_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise _unauthorized("a bearer token is required: send the header 'Authorization: Bearer <token>'")
    return principal
