"""`guarded("feature")`: a FastAPI dependency that reserves before the route and settles after the response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

try:
    from fastapi import HTTPException, Request
except ImportError as exc:
    raise ImportError(f'costguard.fastapi needs FastAPI: pip install "costguard-ai[fastapi]" ({exc})') from exc

from costguard import _web
from costguard._web_options import WebOptions
from costguard.errors import Blocked, LabelError
from costguard.model import Money

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["guarded"]


def guarded(
    feature: str,
    *,
    estimate_usd: Money | Callable[[Request], Money] | None = None,
    estimate_tokens: int | Callable[[Request], int] | None = None,
    labels: _web.LabelsFn | None = None,
    guard: Guard | None = None,
    customer_header: str = _web.CUSTOMER_HEADER,
    customer_from: _web.CustomerFn | None = None,
    missing_customer: _web.MissingCustomer = "anonymous",
) -> Callable[[Request], AsyncIterator[Reservation]]:
    """Route-level enforcement: `Depends(guarded("chat"))` reserves the feature's estimate before the route runs.

    A route that doesn't fit raises: behind `CostGuardMiddleware` the middleware answers 429/503 with its JSON;
    alone, an `HTTPException` carries the same JSON as `detail` and the same headers (`Retry-After`,
    `X-CostGuard-Kill-Switch`). The route gets the `Reservation` (`await r.acommit(actual_usd)`,
    `costguard.charge()` inside it works); after the response is sent the estimate is committed if the route
    didn't commit, and released if the route raised. `estimate_usd`/`estimate_tokens`: numbers or callables
    over the request (default: the feature's `estimate_usd`); `labels`: a callable over the request. The
    guard is the one given, else the middleware's, else the configured default. Without the middleware the
    customer comes from `customer_from(request)`, else `customer_header`, and `missing_customer` applies
    (behind it, the middleware has decided both).
    """
    if not isinstance(feature, str) or not feature:
        raise ValueError("guarded needs a feature name, e.g. Depends(guarded('chat'))")
    options = WebOptions(guard, customer_header, labels, customer_from, missing_customer)

    async def reserve_for_route(request: Request) -> AsyncIterator[Reservation]:
        behind_middleware: Guard | None = request.scope.get(_web.SCOPE_KEY)
        chosen = guard or behind_middleware or options.guard
        if behind_middleware is not None:  # the middleware put the customer in the context already
            customer, missing = None, "skip"
        else:
            customer = options._customer_of(request, lambda: request.headers.get(customer_header))
            missing = missing_customer
        wanted = _web.Request(request.url.path, customer, options._labels_of(request), missing, customer_header)  # type: ignore[arg-type]
        try:
            extra = wanted.labels(chosen)
        except LabelError as exc:
            raise _http_exception(_web.label_error_reply(exc)) from exc
        if missing == "reject" and "customer" not in extra:
            raise _http_exception(_web.missing_customer_reply(customer_header))
        usd = estimate_usd(request) if callable(estimate_usd) else estimate_usd
        tokens = estimate_tokens(request) if callable(estimate_tokens) else estimate_tokens
        try:
            reservation = await chosen.areserve(feature, estimate_usd=usd, estimate_tokens=tokens, **extra)
        except Blocked as exc:
            if behind_middleware is not None:
                raise
            raise _http_exception(_web.blocked_reply(exc)) from exc
        async with reservation:
            yield reservation

    return reserve_for_route


def _http_exception(reply: _web.Reply) -> HTTPException:
    return HTTPException(reply.status, detail=dict(reply.body), headers=dict(reply.headers) or None)
