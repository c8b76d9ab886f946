"""`CostGuard`, the Flask extension: request labels, the kill switch and `Blocked` → 429/503 JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    from flask import Flask, Response, g, request
except ImportError as exc:
    raise ImportError(f'costguard.flask needs Flask: pip install "costguard-ai[flask]" ({exc})') from exc

from costguard import _web
from costguard._web_options import WebOptions
from costguard.errors import Blocked

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["CostGuard"]

_LEAVE = "_costguard_leave"
_LABELS = "_costguard_labels"


class CostGuard(WebOptions):
    """`CostGuard(app)` or `CostGuard()` then `init_app(app)`.

    Before each request: labels (the customer from `customer_from(flask.request)` — e.g. the signed-in
    user — else `customer_header`, UTF-8; extras from `labels(flask.request)`) go in the context and the
    kill switch is checked (503 unless the path is exempt); `missing_customer` as for
    `costguard.asgi.CostGuardMiddleware`. After it (teardown) the labels are left. A `Blocked` raised
    by a view becomes a 429 (a full ceiling) or 503 (a kill switch) through an error handler. Streamed
    responses pass through; a `Blocked` mid-stream ends the stream.
    """

    def __init__(
        self,
        app: Flask | None = None,
        guard: Guard | None = None,
        customer_header: str = _web.CUSTOMER_HEADER,
        labels: _web.LabelsFn | None = None,
        *,
        customer_from: _web.CustomerFn | None = None,
        missing_customer: _web.MissingCustomer = "anonymous",
    ) -> None:
        super().__init__(guard, customer_header, labels, customer_from, missing_customer)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the request hooks and the `Blocked` error handler on `app`."""
        app.extensions["costguard"] = self
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.register_error_handler(Blocked, self._handle_blocked)

    def _before_request(self) -> Response | None:
        guard = self._guard.get()
        wanted = self._read(request.path, request, lambda: request.headers.get(self.customer_header))
        labels, reply = wanted.gate(guard)
        if reply is not None:
            return _response(reply)
        setattr(g, _LABELS, labels)
        setattr(g, _LEAVE, _web.labels_scope(labels))
        return None

    def _after_request(self, response: Response) -> Response:
        labels = g.get(_LABELS)
        if labels is not None and response.is_streamed and not response.direct_passthrough:
            # Without stream_with_context the body runs after teardown: give each chunk the labels back.
            # (direct_passthrough bodies, e.g. send_file's, go to the server's file wrapper untouched.)
            original = response.response
            response.response = _web.GuardedBody(response.iter_encoded(), labels)
            close = getattr(original, "close", None)
            if close is not None:
                response.call_on_close(close)
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        leave = g.pop(_LEAVE, None)
        if leave is not None:
            leave()

    def _handle_blocked(self, exc: Blocked) -> Response:
        return _response(_web.blocked_reply(exc))


def _response(reply: _web.Reply) -> Response:
    return Response(reply.content, status=reply.status, headers=reply.headers, mimetype="application/json")
