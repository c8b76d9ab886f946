"""`CostGuardMiddleware` for WSGI apps (for Flask prefer `costguard.flask.CostGuard`; Django has its own)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from costguard import _web
from costguard._web_options import WebOptions

if TYPE_CHECKING:
    from costguard.errors import Blocked
    from costguard.guard import Guard

__all__ = ["CostGuardMiddleware", "StartResponse", "WSGIApp", "WSGIEnvironment"]

WSGIEnvironment = dict[str, Any]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class StartResponse(Protocol):
    """PEP 3333's `start_response`."""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]


class CostGuardMiddleware(WebOptions):
    """Per request: labels in the context, the kill switch before the app, `Blocked` → 429/503 JSON.

    The customer is `customer_from(environ)` when given, else the `customer_header` value (UTF-8);
    `missing_customer` as for `costguard.asgi.CostGuardMiddleware`. `labels` is called with the WSGI
    environ. Streaming bodies pass through: each chunk is produced inside the request's labels, a
    `Blocked` before the first chunk still becomes the 429, a later one ends the body. The labels are
    left when the server closes the body.
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        guard: Guard | None = None,
        customer_header: str = _web.CUSTOMER_HEADER,
        labels: _web.LabelsFn | None = None,
        *,
        customer_from: _web.CustomerFn | None = None,
        missing_customer: _web.MissingCustomer = "anonymous",
    ) -> None:
        self.wsgi_app = wsgi_app
        super().__init__(guard, customer_header, labels, customer_from, missing_customer)
        self._environ_key = "HTTP_" + customer_header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        guard = self._guard.get()
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        request = self._read(path, environ, lambda: environ.get(self._environ_key))
        labels, reply = request.gate(guard)
        if reply is not None:
            return _respond(start_response, reply)

        started = False

        def tracking_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            nonlocal started
            started = True
            return start_response(status, headers, exc_info)

        def on_blocked(exc: Blocked) -> Iterable[bytes]:
            return _respond(start_response, _web.blocked_reply(exc), replacing=started)

        leave = _web.labels_scope(labels)
        try:
            body = self.wsgi_app(environ, tracking_start_response)
        except Exception as exc:
            blocked = _web.find_blocked(exc)
            if blocked is None:
                raise
            return on_blocked(blocked)
        finally:
            leave()
        return _web.GuardedBody(body, labels, on_blocked)


def _respond(start_response: StartResponse, reply: _web.Reply, *, replacing: bool = False) -> list[bytes]:
    # Replacing headers the app already set (not yet sent: no body chunk went out) takes exc_info (PEP 3333).
    start_response(reply.status_line, reply.all_headers(), sys.exc_info() if replacing else None)
    return [reply.content]
