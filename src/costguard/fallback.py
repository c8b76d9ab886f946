"""What a denied call returns instead: `static`, `call`, `cached`, `raise_`."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from costguard.errors import Blocked
from costguard.steps import Io, Steps, arun, run

__all__ = [
    "Cache",
    "Cached",
    "Call",
    "Codec",
    "Fallback",
    "JSONCodec",
    "Raise",
    "SignedPickleCodec",
    "Static",
    "as_fallback",
    "cached",
    "call",
    "raise_",
    "signed_pickle",
    "static",
]

log = logging.getLogger("costguard")


class Cache(Protocol):
    """What a fallback may use of its guard: the store's cache (`costguard.cache.StoreCache`)."""

    def read(self, key: str) -> Steps[bytes | None]:
        """Steps: the value under `key`, or None (nothing there, expired, or the store failed)."""
        ...

    def write_later(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep `value` under `key` for `ttl_s` seconds, written off the request path."""
        ...


class Fallback(ABC):
    """Serves a blocked call; `costguard.current_decision()` says why inside it."""

    kind: str = "fallback"

    @abstractmethod
    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The value the caller gets instead of the guarded function's."""

    async def aserve(
        self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Async `serve`; awaits the result when it is awaitable."""
        value = self.serve(cache, feature, blocked, args, kwargs)
        return await value if inspect.isawaitable(value) else value


class Static(Fallback):
    """Always the same value (a message, an empty result)."""

    kind = "static"

    def __init__(self, value: Any) -> None:
        self.value = value

    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.value


class Call(Fallback):
    """The non-AI alternative, called with the guarded function's arguments (sync or async)."""

    kind = "call"

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


class Raise(Fallback):
    """Raise the `Blocked` error (`BudgetExceeded` or `KillSwitchActive`)."""

    kind = "raise"

    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise blocked


def default_key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The cache key of a call: a digest of its arguments' reprs."""
    text = repr((args, sorted(kwargs.items())))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Codec(Protocol):
    """How cached results become bytes in the shared store and back. What comes back from the store is
    data: a codec must never run code it reads (no plain pickle)."""

    def dumps(self, value: Any) -> bytes:
        """Bytes for a value; raise `TypeError` or `ValueError` for one it can't hold (it isn't cached)."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value back; raise `ValueError` for bytes it doesn't accept (they are ignored)."""
        ...


class JSONCodec:
    """The default: values JSON holds as they are (str, numbers, bool, None, lists and dicts with string
    keys), and pydantic models of the classes in `models` (an SDK's response types: the client
    wrappers add theirs). The class is looked up in that list by name — never imported or built from
    what the store says. Anything else (tuples, other objects, NaN) is not cached rather than cached
    as something else."""

    def __init__(self, models: Iterable[type] = ()) -> None:
        self._models: dict[str, type] = {}
        self.allow(*models)

    def allow(self, *models: type) -> None:
        """Also cache instances of these pydantic model classes."""
        for model in models:
            self._models[f"{model.__module__}.{model.__qualname__}"] = model

    def dumps(self, value: Any) -> bytes:
        kind: type[Any] = type(value)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if self._models.get(name) is kind:
            envelope: dict[str, Any] = {"model": name, "value": value.model_dump(mode="json")}
        else:
            envelope = {"value": value}
        data = json.dumps(envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if "model" not in envelope and json.loads(data)["value"] != value:
            raise TypeError(f"{type(value).__name__} does not survive JSON unchanged")
        return data.encode("utf-8")

    def loads(self, data: bytes) -> Any:
        envelope = json.loads(data.decode("utf-8"))
        if not isinstance(envelope, dict) or "value" not in envelope:
            raise ValueError("not a cached value")
        if "model" not in envelope:
            return envelope["value"]
        model = self._models.get(str(envelope["model"]))
        if model is None:
            raise ValueError(f"{envelope['model']!r} is not a model this codec may build")
        return model.model_validate(envelope["value"])  # type: ignore[attr-defined]


class SignedPickleCodec:
    """Pickle for results JSON can't hold, opt in: every value carries an HMAC-SHA256 under `secret`,
    checked (in constant time) before `pickle.loads`, so only a holder of the secret can make this
    process unpickle anything. Keep the secret out of the store; all writers of the cache need it."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) < 16:
            raise ValueError("signed_pickle needs a secret of at least 16 bytes (e.g. secrets.token_hex(32))")
        self._key = key

    def __repr__(self) -> str:
        return "SignedPickleCodec(secret=***)"

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return self._sign(payload) + payload

    def loads(self, data: bytes) -> Any:
        signature, payload = data[:32], data[32:]
        if len(signature) != 32 or not hmac.compare_digest(signature, self._sign(payload)):
            raise ValueError("the cached value's signature does not match: not written with this secret")
        return pickle.loads(payload)  # noqa: S301 - signed with the app's own secret, checked above


class Cached(Fallback):
    """The last successful result for the same call (kept `ttl_s` in the guard's store), else `otherwise`.

    A result is kept per feature, per labels of the call except `feature` (customer, tenant, user, …)
    and per arguments (or `key(*args, **kwargs)`): one customer never gets another's answer unless
    `shared=True` says the answers hold nothing customer-specific. Values go to the store through
    `codec` (JSON by default; `signed_pickle(secret)` for other types): what is read back is data.
    """

    kind = "cached"

    def __init__(
        self,
        ttl_s: float = 3600.0,
        key: Callable[..., object] | None = None,
        otherwise: Fallback | None = None,
        *,
        codec: Codec | None = None,
        shared: bool = False,
    ) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ValueError(f"cached(ttl_s=...) must be a positive number of seconds, got {ttl_s!r}")
        self.ttl_s = float(ttl_s)
        self.key = key
        self.otherwise = otherwise
        self.codec: Codec = codec if codec is not None else JSONCodec()
        self.shared = shared

    def cache_key(self, feature: str, labels: Mapping[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The store key under which results for this call are kept."""
        raw = str(self.key(*args, **kwargs)) if self.key is not None else default_key(args, kwargs)
        scope = "" if self.shared else repr(sorted((k, v) for k, v in labels.items() if k != "feature"))
        digest = hashlib.sha256(f"{scope}\x00{raw}".encode("utf-8", "surrogatepass")).hexdigest()
        return f"fallback|{feature}|{digest}"

    def remember(
        self,
        cache: Cache,
        feature: str,
        labels: Mapping[str, str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        value: Any,
    ) -> None:
        """Keep a successful result, off the request path; a value the codec can't hold is skipped."""
        try:
            blob = self.codec.dumps(value)
        except Exception as exc:  # noqa: BLE001 - a value the codec can't hold is just not cached
            log.debug("costguard: result of %s not cached (%s): %s", feature, type(self.codec).__name__, exc)
            return
        cache.write_later(self.cache_key(feature, labels, args, kwargs), blob, self.ttl_s)

    def _lookup(self, blob: bytes | None) -> tuple[bool, Any]:
        if blob is None:
            return False, None
        try:
            return True, self.codec.loads(blob)
        except Exception:  # noqa: BLE001 - whatever is in the store, it never breaks the fallback
            log.warning(
                "costguard: a cached fallback value could not be read (%s); ignoring it", type(self.codec).__name__
            )
            return False, None

    def serve(self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return run(self._steps(cache, feature, blocked, args, kwargs))

    async def aserve(
        self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await arun(self._steps(cache, feature, blocked, args, kwargs))

    def _steps(
        self, cache: Cache, feature: str, blocked: Blocked, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Steps[Any]:
        found, value = self._lookup(
            (yield from cache.read(self.cache_key(feature, blocked.decision.labels, args, kwargs)))
        )
        if found:
            return value
        otherwise = self.otherwise
        if otherwise is None:
            raise blocked
        return (yield Io(otherwise.serve, otherwise.aserve, (cache, feature, blocked, args, kwargs)))


def static(value: Any) -> Static:
    """Serve `value` when the call is denied."""
    return Static(value)


def call(fn: Callable[..., Any]) -> Call:
    """Call `fn` with the same arguments when the call is denied."""
    return Call(fn)


def cached(
    ttl_s: float = 3600.0,
    key: Callable[..., object] | None = None,
    otherwise: Any = None,
    *,
    codec: Codec | None = None,
    shared: bool = False,
) -> Cached:
    """Serve the last successful result of the same call within `ttl_s`: the same labels (customer,
    tenant, …) and arguments, or `key(*args, **kwargs)` in place of the arguments. `shared=True`
    lets one customer's result serve another (only for answers that hold nothing of theirs);
    `codec` stores other than JSON values (`signed_pickle(secret)`)."""
    return Cached(ttl_s, key, as_fallback(otherwise), codec=codec, shared=shared)


def signed_pickle(secret: str | bytes) -> SignedPickleCodec:
    """A codec for `cached(codec=…)` that pickles, signed with `secret` and checked before unpickling."""
    return SignedPickleCodec(secret)


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
