"""`with_kill_switch`: one decorator for sync and async functions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from costguard import current as _ctx
from costguard.errors import Blocked
from costguard.fallback import Cached, Fallback, as_fallback
from costguard.model import Money
from costguard.pricing import CostSpec, resolve_cost

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["Decorated", "with_kill_switch"]

F = TypeVar("F", bound=Callable[..., Any])
Decorated = Callable[..., Any]
LabelsSpec = Mapping[str, object] | Callable[..., Mapping[str, object]] | None
EstimateSpec = Money | Callable[..., Money] | None


def with_kill_switch(
    feature: str,
    *,
    fallback: Any = None,
    estimate: EstimateSpec = None,
    estimate_tokens: int | Callable[..., int] | None = None,
    cost: CostSpec = None,
    labels: LabelsSpec = None,
    degrade: Callable[..., Any] | None = None,
    guard: Guard | None = None,
) -> Callable[[F], F]:
    """Guard `fn` as `feature`: kill switch, atomic reservation, fallback when denied, cost recorded after.

    `fallback`: a value (static), a callable (called with the same arguments), or a
    `costguard.fallback` object; unset, the feature's configured fallback, else `Blocked` is raised.
    `estimate` / `estimate_tokens`: a number or a callable over the arguments. `cost`: a number or a
    callable over the result. `labels`: a mapping or a callable over the arguments. `degrade`: called
    instead of `fn` once spend passes the feature's `degrade_at` (still guarded). `guard`: default is
    the one set with `costguard.configure()` (or loaded from `COSTGUARD_CONFIG` / `./costguard.yaml`).
    """
    if not isinstance(feature, str) or not feature:
        raise ValueError("with_kill_switch needs a feature name, e.g. @with_kill_switch('support_agent')")
    explicit_fallback = as_fallback(fallback)

    def decorate(fn: F) -> F:
        def resolve() -> Guard:
            if guard is not None:
                return guard
            from costguard.defaults import default_guard

            return default_guard()

        def prepare(
            g: Guard, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[dict[str, object], Money | None, int | None, Fallback | None]:
            extra = labels(*args, **kwargs) if callable(labels) else (labels or {})
            est = estimate(*args, **kwargs) if callable(estimate) else estimate
            est_tokens = estimate_tokens(*args, **kwargs) if callable(estimate_tokens) else estimate_tokens
            chosen = explicit_fallback if explicit_fallback is not None else g.feature(feature).fallback
            return dict(extra), est, est_tokens, chosen

        def target(reservation: Reservation) -> Callable[..., Any]:
            return degrade if degrade is not None and reservation.decision.degraded else fn

        def finish(
            g: Guard,
            reservation: Reservation,
            result: Any,
            chosen: Fallback | None,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> tuple[Any, Any, Any]:
            priced = resolve_cost(result, cost, g.pricing)
            if isinstance(chosen, Cached):
                chosen.remember(g, feature, reservation.decision.labels, args, kwargs, priced.value)
            return priced.value, priced.usd_micros, priced.tokens

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                g = resolve()
                extra, est, est_tokens, chosen = prepare(g, args, kwargs)
                try:
                    reservation = await g._areserve(feature, extra, est, est_tokens, chosen.kind if chosen else None)
                except Blocked as blocked:
                    if chosen is None:
                        raise
                    with _ctx._scoped(blocked.decision, None):
                        return await chosen.aserve(g, feature, blocked, args, kwargs)
                with _ctx._scoped(reservation.decision, reservation.cost):
                    try:
                        result = await cast("Callable[..., Awaitable[Any]]", target(reservation))(*args, **kwargs)
                    except BaseException:
                        if reservation._failed_policy() == "keep":
                            await reservation.acommit()
                        else:
                            await reservation.arelease("call raised")
                        raise
                value, usd, tokens = finish(g, reservation, result, chosen, args, kwargs)
                await reservation._acommit_micros(usd, tokens)
                return value

            return cast("F", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g = resolve()
            extra, est, est_tokens, chosen = prepare(g, args, kwargs)
            try:
                reservation = g._reserve(feature, extra, est, est_tokens, chosen.kind if chosen else None)
            except Blocked as blocked:
                if chosen is None:
                    raise
                with _ctx._scoped(blocked.decision, None):
                    return chosen.serve(g, feature, blocked, args, kwargs)
            with _ctx._scoped(reservation.decision, reservation.cost):
                try:
                    result = target(reservation)(*args, **kwargs)
                except BaseException:
                    if reservation._failed_policy() == "keep":
                        reservation.commit()
                    else:
                        reservation.release("call raised")
                    raise
            value, usd, tokens = finish(g, reservation, result, chosen, args, kwargs)
            reservation._commit_micros(usd, tokens)
            return value

        return cast("F", wrapper)

    return decorate
