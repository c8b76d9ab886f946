"""`CostGuardMiddleware` for any ASGI app (Starlette, FastAPI, Quart, Django's ASGI handler, bare ASGI)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from costguard import _web
from costguard._web_options import WebOptions
from costguard.current import context

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["ASGIApp", "CostGuardMiddleware", "Message", "Receive", "Scope", "Send"]

# The same shapes as starlette.types, so `app.add_middleware(CostGuardMiddleware, ...)` type-checks.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CostGuardMiddleware(WebOptions):
    """Per HTTP request: labels in the context, the kill switch before the app, `Blocked` → 429/503 JSON.

    The customer is `customer_from(scope)` when given — the documented way: who is signed in, not what
    the client claims — else the `customer_header` value (UTF-8). A request without one is the shared
    `anonymous` customer (`missing_customer="anonymous"`), refused with a 400 (`"reject"`) or left
    without a customer label (`"skip"`). `labels` is called with the ASGI scope and returns extra
    labels (tenant, user, plan…). `guard=None` uses the configured default, loaded at the first
    request. Lifespan and websocket scopes pass through. In FastAPI/Starlette add it with
    `app.add_middleware(CostGuardMiddleware, ...)`.
    """

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard | None = None,
        customer_header: str = _web.CUSTOMER_HEADER,
        labels: _web.LabelsFn | None = None,
        *,
        customer_from: _web.CustomerFn | None = None,
        missing_customer: _web.MissingCustomer = "anonymous",
    ) -> None:
        self.app = app
        super().__init__(guard, customer_header, labels, customer_from, missing_customer)
        self._header = customer_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self._guard.get()
        request = self._read(scope.get("path", ""), scope, lambda: self._header_value(scope))
        labels, reply = await request.agate(guard)
        if reply is not None:
            await _send_reply(send, reply)
            return
        scope[_web.SCOPE_KEY] = guard
        state = {"started": False, "ended": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        try:
            with context(**labels):
                await self.app(scope, receive, tracking_send)
        except Exception as exc:
            blocked = _web.find_blocked(exc)
            if blocked is None:
                raise
            if not state["started"]:
                await _send_reply(send, _web.blocked_reply(blocked))
                return
            # Too late for a 429: end the stream so the client isn't left waiting for more.
            _web.stream_cut(blocked)
            if not state["ended"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _header_value(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name.lower() == self._header:
                return bytes(value)
        return None


async def _send_reply(send: Send, reply: _web.Reply) -> None:
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in reply.all_headers()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.content, "more_body": False})
