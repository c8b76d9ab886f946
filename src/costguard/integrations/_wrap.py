"""The shared machinery of the client wrappers: a proxy over a vendor client and the guarded call.

Duck-typed: no vendor SDK is imported. A proxy forwards every attribute to the client except the
routes it guards (`chat.completions.create`, `responses.create`, `messages.create`), whose calls go
through a reservation the way `with_kill_switch` runs a function.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from costguard.fallback import Cached, Fallback, JSONCodec, as_fallback
from costguard.guarded import invoke
from costguard.integrations._request import Endpoint, EstimateSpec, RequestEstimate, estimate_request, given
from costguard.integrations._streams import AsyncGuardedStream, GuardedStream, Meter
from costguard.pricing import resolve_cost
from costguard.steps import Io, Steps, arun, run

if TYPE_CHECKING:
    from costguard.callpath import CallPath
    from costguard.guard import Guard
    from costguard.reservation import Reservation

__all__ = ["ClientT", "GuardOptions", "LabelsSpec", "Routes", "Settings", "wrap"]

ClientT = TypeVar("ClientT")
LabelsSpec = Mapping[str, object] | Callable[..., Mapping[str, object]] | None
# An attribute name → a nested route, an endpoint to guard, or REWRAP (a method returning a new client).
Routes = Mapping[str, "Routes | Endpoint | str"]
REWRAP = "rewrap"


class GuardOptions(TypedDict, total=False):
    """The keyword options of every vendor's `guard(client, feature, ...)`: `guard`, `labels`, `fallback` and
    `estimate`, as `costguard.integrations.openai.guard` describes them."""

    guard: Guard | None
    labels: LabelsSpec
    fallback: Any
    estimate: EstimateSpec


@dataclass(frozen=True)
class Settings:
    """What `costguard.integrations.<vendor>.guard(...)` was given."""

    feature: str
    guard: Guard | None
    labels: LabelsSpec
    fallback: Fallback | None
    estimate: EstimateSpec
    routes: Routes

    def resolve(self) -> Guard:
        """The guard to use now (the default one is looked up at call time, like the decorator does)."""
        if self.guard is not None:
            return self.guard
        from costguard.defaults import default_guard

        return default_guard()


def wrap(
    client: ClientT,
    feature: str,
    routes: Routes,
    *,
    guard: Guard | None = None,
    labels: LabelsSpec = None,
    fallback: Any = None,
    estimate: EstimateSpec = None,
) -> ClientT:
    """A proxy over `client` guarding `routes` (typed as the client, so editors keep completing its methods);
    a vendor's `guard(client, feature, **GuardOptions)` is this with its routes."""
    if not isinstance(feature, str) or not feature:
        raise ValueError("guard(client, feature) needs a feature name, e.g. guard(client, 'support_agent')")
    if labels is not None and not callable(labels) and not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping or a callable over the request, got {type(labels).__name__}")
    settings = Settings(feature, guard, labels, as_fallback(fallback), estimate, routes)
    return cast("ClientT", _Proxy(client, routes, settings))


class _Proxy:
    """Behaves like the wrapped object; the routed attributes are guarded."""

    __slots__ = ("_cg_routes", "_cg_settings", "_cg_target")

    def __init__(self, target: Any, routes: Routes, settings: Settings) -> None:
        object.__setattr__(self, "_cg_target", target)
        object.__setattr__(self, "_cg_routes", routes)
        object.__setattr__(self, "_cg_settings", settings)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cg_target, name)
        route = self._cg_routes.get(name)
        if route is None:
            return value
        if isinstance(route, Endpoint):
            return _guarded(value, route, self._cg_settings)
        if route == REWRAP:
            return _rewrapping(value, self._cg_settings)
        assert isinstance(route, Mapping)
        return _Proxy(value, route, self._cg_settings)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cg_target, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._cg_target)))

    def __repr__(self) -> str:
        return f"<costguard guarded {self._cg_target!r} feature={self._cg_settings.feature!r}>"

    # Special methods are looked up on the type, not through __getattr__.
    def __enter__(self) -> _Proxy:
        self._cg_target.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cg_target.__exit__(*exc)

    async def __aenter__(self) -> _Proxy:
        await self._cg_target.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cg_target.__aexit__(*exc)


def _rewrapping(method: Callable[..., Any], settings: Settings) -> Callable[..., Any]:
    """`client.with_options(...)` / `client.copy(...)` return a client: guard it the same way."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return _Proxy(method(*args, **kwargs), settings.routes, settings)

    return call


def _is_async(method: Callable[..., Any]) -> bool:
    # The SDKs wrap `create` in a sync decorator; the function underneath says what it is.
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(inspect.unwrap(method))


@dataclass(frozen=True)
class _Call:
    """One request, prepared: labels, the estimate, the fallback, the keyword arguments to send."""

    guard: Guard
    labels: dict[str, object]
    estimate: RequestEstimate
    fallback: Fallback | None
    send: dict[str, Any]
    stream: bool
    # costguard asked for the usage-only last chunk of an OpenAI chat stream; the caller didn't.
    hide_usage_chunk: bool


def _prepare(settings: Settings, endpoint: Endpoint, kwargs: dict[str, Any]) -> _Call:
    g = settings.resolve()
    spec = settings.labels
    labels = dict(spec(**kwargs) if callable(spec) else (spec or {}))
    estimate = estimate_request(g.pricing, endpoint, kwargs, settings.estimate)
    chosen = settings.fallback if settings.fallback is not None else g.feature(settings.feature).fallback
    stream = given(kwargs.get("stream")) is True
    ask = stream and endpoint.asks_for_usage and given(kwargs.get("stream_options")) is None
    send = {**kwargs, "stream_options": {"include_usage": True}} if ask else kwargs
    _cacheable(chosen, endpoint)
    return _Call(g, labels, estimate, chosen, send, stream, ask)


def _cacheable(fallback: Fallback | None, endpoint: Endpoint) -> None:
    """Let a cached fallback's JSON codec rebuild this endpoint's response objects: the class comes
    from this module's constants (imported when the SDK is installed), never from the store."""
    if not isinstance(fallback, Cached) or not isinstance(fallback.codec, JSONCodec) or not endpoint.response_type[0]:
        return
    module, name = endpoint.response_type
    try:
        fallback.codec.allow(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        return  # not that SDK (a duck-typed client): plain JSON values only


def _meter(call: _Call, reservation: Reservation, endpoint: Endpoint) -> Meter:
    return Meter(
        reservation,
        call.guard.pricing,
        endpoint.provider,
        call.estimate.max_output_tokens,
        hide_usage_chunk=call.hide_usage_chunk,
    )


def _guarded(create: Callable[..., Any], endpoint: Endpoint, settings: Settings) -> Callable[..., Any]:
    """`create`, guarded: reserve, call, commit the usage's price (or settle the stream when it ends)."""
    feature = settings.feature

    def steps(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Steps[Any]:
        call = _prepare(settings, endpoint, kwargs)
        est, fallback = call.estimate, call.fallback

        def target(reservation: Reservation, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Io[Any]:
            return Io(create, create, args, call.send)

        def finish(
            calls: CallPath,
            reservation: Reservation,
            result: Any,
            fallback: Fallback | None,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> tuple[Any, tuple[int | None, int | None] | None]:
            if call.stream:
                meter = _meter(call, reservation, endpoint)
                return (AsyncGuardedStream(result, meter) if _is_async(create) else GuardedStream(result, meter)), None
            priced = resolve_cost(result, None, calls.pricing)
            if isinstance(fallback, Cached):
                fallback.remember(calls.cache, feature, reservation.decision.labels, args, kwargs, result)
            return result, (priced.usd_micros, priced.tokens)

        return invoke(
            call.guard.calls, feature, call.labels, (est.usd, est.tokens), fallback, target, finish, args, kwargs
        )

    if _is_async(create):

        @functools.wraps(create)
        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await arun(steps(args, kwargs))

        return acall

    @functools.wraps(create)
    def sync_call(*args: Any, **kwargs: Any) -> Any:
        return run(steps(args, kwargs))

    return sync_call
