"""What a denied call returns instead: `static`, `call`, `cached`, `raise_`."""

from __future__ import annotations

import hashlib
import inspect
import logging
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from costguard.errors import Blocked

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["Cached", "Call", "Fallback", "Raise", "Static", "as_fallback", "cached", "call", "raise_", "static"]

log = logging.getLogger("costguard")


class Fallback(ABC):
    """Serves a blocked call; `costguard.current_decision()` says why inside it."""

    kind: str = "fallback"

    @abstractmethod
    def serve(self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The value the caller gets instead of the guarded function's."""

    async def aserve(
        self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Async `serve`; awaits the result when it is awaitable."""
        value = self.serve(guard, feature, blocked, args, kwargs)
        return await value if inspect.isawaitable(value) else value


class Static(Fallback):
    """Always the same value (a message, an empty result)."""

    kind = "static"

    def __init__(self, value: Any) -> None:
        self.value = value

    def serve(self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.value


class Call(Fallback):
    """The non-AI alternative, called with the guarded function's arguments (sync or async)."""

    kind = "call"

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def serve(self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


class Raise(Fallback):
    """Raise the `Blocked` error (`BudgetExceeded` or `KillSwitchActive`)."""

    kind = "raise"

    def serve(self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise blocked


def default_key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The cache key of a call: a digest of its arguments' reprs."""
    text = repr((args, sorted(kwargs.items())))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Cached(Fallback):
    """The last successful result for the same key (kept `ttl_s` in the guard's store), else `otherwise`.

    Results are pickled into the store, so only point several apps at one store if they trust each other.
    """

    kind = "cached"

    def __init__(
        self,
        ttl_s: float = 3600.0,
        key: Callable[..., object] | None = None,
        otherwise: Fallback | None = None,
    ) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ValueError(f"cached(ttl_s=...) must be a positive number of seconds, got {ttl_s!r}")
        self.ttl_s = float(ttl_s)
        self.key = key
        self.otherwise = otherwise

    def cache_key(self, feature: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The store key under which results for these arguments are kept."""
        raw = str(self.key(*args, **kwargs)) if self.key is not None else default_key(args, kwargs)
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
        return f"fallback|{feature}|{digest}"

    def remember(self, guard: Guard, feature: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any) -> None:
        """Keep a successful result, off the request path; values that can't be pickled are skipped."""
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - any pickling failure just means nothing is cached
            log.debug("costguard: result of %s not cached: %s", feature, exc)
            return
        key = self.cache_key(feature, args, kwargs)
        expires = guard.clock() + self.ttl_s
        guard._background.submit(lambda: guard.store.cache_set(key, blob, expires))

    def _lookup(self, guard: Guard, blob: bytes | None) -> tuple[bool, Any]:
        if blob is None:
            return False, None
        try:
            return True, pickle.loads(blob)  # noqa: S301 - written by this app's own guard
        except Exception:  # noqa: BLE001
            log.warning("costguard: a cached fallback value could not be read; ignoring it")
            return False, None

    def serve(self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        found, value = self._lookup(guard, guard._cache_get(self.cache_key(feature, args, kwargs)))
        if found:
            return value
        if self.otherwise is not None:
            return self.otherwise.serve(guard, feature, blocked, args, kwargs)
        raise blocked

    async def aserve(
        self, guard: Guard, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        found, value = self._lookup(guard, await guard._acache_get(self.cache_key(feature, args, kwargs)))
        if found:
            return value
        if self.otherwise is not None:
            return await self.otherwise.aserve(guard, feature, blocked, args, kwargs)
        raise blocked


def static(value: Any) -> Static:
    """Serve `value` when the call is denied."""
    return Static(value)


def call(fn: Callable[..., Any]) -> Call:
    """Call `fn` with the same arguments when the call is denied."""
    return Call(fn)


def cached(ttl_s: float = 3600.0, key: Callable[..., object] | None = None, otherwise: Any = None) -> Cached:
    """Serve the last successful result for the same key (default: the arguments) within `ttl_s`."""
    return Cached(ttl_s, key, as_fallback(otherwise))


def raise_() -> Raise:
    """Raise `BudgetExceeded` / `KillSwitchActive` when the call is denied."""
    return Raise()


def as_fallback(value: Any) -> Fallback | None:
    """`None` → none; a `Fallback` as is; a callable → `call`; anything else → `static`."""
    if value is None or isinstance(value, Fallback):
        return value
    if callable(value):
        return Call(value)
    return Static(value)
