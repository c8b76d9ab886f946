"""A guarded invocation, written once for sync and async: reserve, run, settle — or serve the fallback.

`invoke` is the whole life of one guarded call as steps; `decorate` turns a function into a guarded
one (what `with_kill_switch` and `Guard.with_kill_switch` return). The OpenAI and Anthropic client
wrappers use `invoke` with their own way of estimating a request and pricing a response.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar, cast

from typing_extensions import Unpack

from costguard import current as _ctx
from costguard.callpath import CallPath
from costguard.errors import Blocked
from costguard.fallback import Cached, Fallback, as_fallback
from costguard.model import Money
from costguard.pricing import CostSpec, resolve_cost
from costguard.reservation import Reservation
from costguard.steps import Io, Steps, arun, run

__all__ = ["Decorated", "GuardOptions", "decorate", "invoke"]

F = TypeVar("F", bound=Callable[..., Any])
Decorated = Callable[..., Any]
LabelsSpec = Mapping[str, object] | Callable[..., Mapping[str, object]] | None
EstimateSpec = Money | Callable[..., Money] | None
# What a successful call settles: (value returned to the caller, (USD micro-dollars, tokens) to commit,
# or None when something else settles later — a stream, when it ends).


class GuardOptions(TypedDict, total=False):
    """How `with_kill_switch` guards a function (see its docstring for each option)."""

    fallback: Any
    estimate: EstimateSpec
    estimate_tokens: int | Callable[..., int] | None
    cost: CostSpec
    labels: LabelsSpec
    degrade: Callable[..., Any] | None


# What to run once admitted: the reservation, the call's args and kwargs → its Io (the function, or a degraded one).
Target = Callable[[Reservation, tuple[Any, ...], dict[str, Any]], Io[Any]]
# What a successful call settles: (call path, reservation, result, fallback, args, kwargs) → (value returned to
# the caller, (USD micro-dollars, tokens) to commit — or None when something else settles later: a stream).
Finish = Callable[
    [CallPath, Reservation, Any, Fallback | None, tuple[Any, ...], dict[str, Any]],
    tuple[Any, tuple[int | None, int | None] | None],
]


def invoke(
    calls: CallPath,
    feature: str,
    labels: Mapping[str, object],
    estimate: tuple[Money | None, int | None],
    fallback: Fallback | None,
    target: Target,
    finish: Finish,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Steps[Any]:
    """Steps of one guarded call: reserve `estimate` (USD, tokens), run `target`, settle what `finish`
    says; refused, serve `fallback` (or raise `Blocked`); raised, release (or keep, by `on_call_error`)."""
    try:
        reservation = yield from calls.reserve(
            feature, labels, estimate[0], estimate[1], fallback.kind if fallback is not None else None
        )
    except Blocked as blocked:
        if fallback is None:
            raise
        refused = blocked
        with _ctx._scoped(refused.decision, None):
            return (yield Io(fallback.serve, fallback.aserve, (calls.cache, feature, refused, args, kwargs)))
    with _ctx._scoped(reservation.decision, reservation.cost):
        try:
            result = yield target(reservation, args, kwargs)
        except BaseException:
            yield from reservation.failed_steps()
            raise
    try:
        value, settle = finish(calls, reservation, result, fallback, args, kwargs)
    except BaseException:
        yield from reservation.commit_steps()  # a bad `cost=`: the call ran, its estimate stands (never $0)
        raise
    if settle is not None:
        yield from reservation.commit_steps(*settle)
    return value


def decorate(feature: str, resolve: Callable[[], CallPath], **options: Unpack[GuardOptions]) -> Callable[[F], F]:
    """Guard functions as `feature` on the call path `resolve()` gives at call time; see `with_kill_switch`."""
    if not isinstance(feature, str) or not feature:
        raise ValueError("with_kill_switch needs a feature name, e.g. @with_kill_switch('support_agent')")
    unknown = sorted(set(options) - set(GuardOptions.__annotations__))
    if unknown:
        raise TypeError(f"with_kill_switch got unexpected option(s) {', '.join(unknown)}")
    explicit = as_fallback(options.get("fallback"))
    estimate, estimate_tokens = options.get("estimate"), options.get("estimate_tokens")
    cost, labels, degrade = options.get("cost"), options.get("labels"), options.get("degrade")

    def finish(
        calls: CallPath,
        reservation: Reservation,
        result: Any,
        chosen: Fallback | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Any, tuple[int | None, int | None]]:
        priced = resolve_cost(result, cost, calls.pricing)
        if isinstance(chosen, Cached):
            chosen.remember(calls.cache, feature, reservation.decision.labels, args, kwargs, priced.value)
        return priced.value, (priced.usd_micros, priced.tokens)

    def wrap(fn: F) -> F:
        def target(reservation: Reservation, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Io[Any]:
            chosen_fn = degrade if degrade is not None and reservation.decision.degraded else fn
            return Io(chosen_fn, chosen_fn, args, kwargs)

        def steps(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Steps[Any]:
            calls = resolve()
            extra = labels(*args, **kwargs) if callable(labels) else (labels or {})
            est = estimate(*args, **kwargs) if callable(estimate) else estimate
            est_tokens = estimate_tokens(*args, **kwargs) if callable(estimate_tokens) else estimate_tokens
            chosen = explicit if explicit is not None else calls.feature(feature).fallback
            return invoke(calls, feature, dict(extra), (est, est_tokens), chosen, target, finish, args, kwargs)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await arun(steps(args, kwargs))

            return cast("F", async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(steps(args, kwargs))

        return cast("F", wrapper)

    return wrap
