"""What every web integration shares: labels from a request, the kill-switch gate, JSON replies, guarded streams."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from costguard import current as _ctx
from costguard.errors import Blocked, KillSwitchActive, LabelError
from costguard.model import normalize_labels

if TYPE_CHECKING:
    from costguard.guard import Guard
    from costguard.stores.base import KillSwitchState

__all__ = [
    "ANONYMOUS",
    "CUSTOMER_HEADER",
    "KILL_SWITCH_HEADER",
    "MISSING_CUSTOMER",
    "SCOPE_KEY",
    "CustomerFn",
    "GuardRef",
    "GuardedBody",
    "LabelsFn",
    "MissingCustomer",
    "Reply",
    "Request",
    "aguarded_chunks",
    "blocked_reply",
    "check_missing_customer",
    "find_blocked",
    "header_text",
    "is_exempt",
    "label_error_reply",
    "labels_scope",
    "retry_after",
    "stream_cut",
    "switch_reply",
]

log = logging.getLogger("costguard")

T = TypeVar("T")

CUSTOMER_HEADER = "X-Customer-Id"
KILL_SWITCH_HEADER = "X-CostGuard-Kill-Switch"
# The ASGI middleware leaves its guard in the scope under this key (the FastAPI dependency reads it).
SCOPE_KEY = "costguard.guard"

LabelsFn = Callable[[Any], Mapping[str, object] | None]
# Who the request is for, from the request itself (the authenticated user, a session, a verified token).
CustomerFn = Callable[[Any], "str | None"]
# A request with no customer: one shared `anonymous` customer (the default, so `customers: "*"` ceilings
# still apply), refused with a 400 before the handler, or let through with no customer label.
MissingCustomer = Literal["anonymous", "reject", "skip"]
MISSING_CUSTOMER: tuple[str, ...] = ("anonymous", "reject", "skip")
ANONYMOUS = "anonymous"


def check_missing_customer(value: object) -> MissingCustomer:
    """`value` if it is a `missing_customer` policy; `ValueError` naming the choices otherwise."""
    if value not in MISSING_CUSTOMER:
        raise ValueError(f"missing_customer must be one of {', '.join(MISSING_CUSTOMER)}, got {value!r}")
    return value  # type: ignore[return-value]


def header_text(value: bytes | str | None) -> str | None:
    """A header value as text. Clients send UTF-8 (`ümlaut-客户`): decoded as UTF-8, and as Latin-1 only
    when the bytes aren't valid UTF-8. WSGI servers (and Django, Flask) hand headers over as Latin-1
    text (PEP 3333); its bytes are recovered first, so every integration reads the same customer."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            return value  # already decoded properly (it holds characters Latin-1 can't)
    else:
        raw = value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True)
class Reply:
    """A response the integration sends instead of the app's: status, JSON body, extra headers."""

    status: int
    body: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def content(self) -> bytes:
        """The JSON body as bytes."""
        return json.dumps(self.body, separators=(",", ":")).encode()

    @property
    def status_line(self) -> str:
        """`429 Too Many Requests`, for WSGI's start_response."""
        return f"{self.status} {_PHRASES[self.status]}"

    def all_headers(self) -> list[tuple[str, str]]:
        """Content type and length first, then the reply's own headers."""
        return [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.content))),
            *self.headers,
        ]


_PHRASES = {400: "Bad Request", 429: "Too Many Requests", 503: "Service Unavailable"}


def missing_customer_reply(header: str) -> Reply:
    """400 for a request with no customer when `missing_customer="reject"`."""
    return Reply(
        400,
        {
            "code": "customer_required",
            "reason": f"this endpoint needs to know the customer (the {header} header, or who is signed in)",
        },
    )


def retry_after(seconds: float | None) -> str | None:
    """A `Retry-After` value: whole seconds to the period's reset, rounded up (None when it never resets)."""
    if seconds is None:
        return None
    return str(max(0, math.ceil(seconds)))


def _killswitch_reply(scope: Mapping[str, str], reason: str) -> Reply:
    return Reply(
        503,
        {"code": "kill_switch_active", "reason": reason, "scope": dict(scope)},
        ((KILL_SWITCH_HEADER, "active"),),
    )


def switch_reply(switch: KillSwitchState) -> Reply:
    """503 for a kill switch that covers the whole request."""
    return _killswitch_reply(dict(switch.scope), switch.reason)


def blocked_reply(exc: Blocked) -> Reply:
    """The response for a `Blocked` raised by guarded code: 429 for a full ceiling, 503 for a kill switch or store."""
    if isinstance(exc, KillSwitchActive):
        return _killswitch_reply(exc.scope, exc.reason or str(exc))
    decision = exc.decision
    if decision.reason == "store_error":
        return Reply(503, {"code": "store_unavailable", "reason": str(exc)})
    if decision.reason == "store_busy":
        return Reply(503, {"code": "store_busy", "reason": str(exc)}, (("Retry-After", "1"),))
    after = retry_after(exc.retry_after_s)
    body = {
        "code": "cap_exhausted",
        # Why: `budget_exceeded`, or `expired` (a run past its ttl: no Retry-After, it never comes back),
        # `max_call_usd`, `max_instances`.
        "reason": decision.reason,
        "cap_usd": exc.limit_usd,  # the shape Keybrake's clients read: code + cap_usd
        "scope": exc.scope,
        "period": exc.period,
        "spent_usd": exc.spent_usd,
        "limit_usd": exc.limit_usd,
        "unit": decision.unit,
        "spent": decision.spent,
        "limit": decision.limit,
        "retry_after_s": exc.retry_after_s,
        "message": str(exc),
    }
    return Reply(429, body, () if after is None else (("Retry-After", after),))


def label_error_reply(exc: LabelError) -> Reply:
    """400 when a request's labels can't be used (e.g. a customer id over `max_label_length`)."""
    return Reply(400, {"code": "bad_label", "reason": str(exc)})


def find_blocked(exc: BaseException) -> Blocked | None:
    """`exc` if it is a `Blocked`, or the only exception inside an exception group (task groups wrap them)."""
    while True:
        if isinstance(exc, Blocked):
            return exc
        inner = getattr(exc, "exceptions", None)
        if not isinstance(exc, Exception) or not isinstance(inner, tuple) or len(inner) != 1:
            return None
        exc = inner[0]


def is_exempt(path: str, prefixes: Iterable[str]) -> bool:
    """Whether `path` is under one of the exempt prefixes, by whole segments (`/health` covers `/health/db`)."""
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if path == base or path.startswith(base + "/"):
            return True
    return False


class GuardRef:
    """The integration's guard: the one given, else the configured default, resolved at the first request."""

    def __init__(self, guard: Guard | None, load: Callable[[], Guard] | None = None) -> None:
        self._guard = guard
        self._load = load
        self._lock = threading.Lock()

    def get(self) -> Guard:
        """The guard; the default (`configure()`, `COSTGUARD_CONFIG`, `./costguard.yaml`) is loaded on first use."""
        guard = self._guard
        if guard is None:
            with self._lock:
                if self._guard is None:
                    if self._load is None:
                        from costguard.defaults import default_guard

                        self._guard = default_guard()
                    else:
                        self._guard = self._load()
                guard = self._guard
        return guard


@dataclass(frozen=True)
class Request:
    """What an integration read from one request: its path, its customer (from `customer_from`, else the
    header, decoded by `header_text`), extra labels, and what to do when there is no customer."""

    path: str
    customer: str | None
    extra: Mapping[str, object] | None
    missing: MissingCustomer = "anonymous"
    header: str = CUSTOMER_HEADER

    def labels(self, guard: Guard) -> dict[str, str]:
        """Validated labels; raises `LabelError` for unusable values."""
        customer = self.customer.strip() if self.customer is not None else None
        if not customer and self.missing == "anonymous":
            customer = ANONYMOUS
        merged: dict[str, object] = {"customer": customer or None, **(self.extra or {})}
        return normalize_labels(merged, max_length=guard.max_label_length)

    def admit(self, guard: Guard) -> tuple[dict[str, str], Reply | None, bool]:
        """(labels, a reply that ends the request now, whether the kill switch must still be checked)."""
        exempt = is_exempt(self.path, guard.exempt_paths)
        try:
            labels = self.labels(guard)
        except LabelError as exc:
            # Exempt paths are never refused: they run without labels instead.
            return {}, None if exempt else label_error_reply(exc), False
        if "customer" not in labels and self.missing == "reject" and not exempt:
            return labels, missing_customer_reply(self.header), False
        return labels, None, not exempt

    def gate(self, guard: Guard) -> tuple[dict[str, str], Reply | None]:
        """Labels, and the reply that refuses the request (bad label, kill switch) if any; sync."""
        labels, reply, check = self.admit(guard)
        if check:
            reply = _switch_check(guard.killswitch.covering(labels))
        return labels, reply

    async def agate(self, guard: Guard) -> tuple[dict[str, str], Reply | None]:
        """Async `gate`: store I/O (only when the kill-switch cache is stale) never blocks the event loop."""
        labels, reply, check = self.admit(guard)
        if check:
            reply = _switch_check(await guard.killswitch.acovering(labels))
        return labels, reply


def _switch_check(switch: KillSwitchState | None) -> Reply | None:
    # The request has no feature yet: global switches and switches on its own labels (customer, tenant…) apply;
    # feature switches are enforced when the guarded call runs and come back as KillSwitchActive.
    return None if switch is None else switch_reply(switch)


def labels_scope(labels: Mapping[str, str]) -> Callable[[], None]:
    """Add `labels` to the context now (like `costguard.context`); returns the function that takes them out.

    Leaving twice is a no-op; leaving from another context (a server closing a body on another thread) does
    nothing there and can still be done properly later.
    """
    token = _ctx._labels.set({**_ctx.current_labels(), **labels})
    left = False

    def leave() -> None:
        nonlocal left
        if left:
            return
        try:
            _ctx._labels.reset(token)
        except ValueError:
            log.debug("costguard: request labels can't be left from another context")
            return
        left = True

    return leave


def stream_cut(exc: Blocked) -> None:
    """Log that a `Blocked` ended a response that had already started."""
    log.warning(
        "costguard: a guarded call was blocked after the response had started, so it can't become a 429/503; "
        "the response was ended early: %s",
        exc,
    )


class GuardedBody(Generic[T]):
    """A WSGI/streaming body: each chunk is produced inside the request's labels, and a `Blocked` ends it.

    A `Blocked` before the first chunk calls `on_blocked` (which may return a replacement body, e.g. the 429);
    after it, the stream is ended cleanly and a warning logged. `close()` always closes the wrapped iterable.
    """

    def __init__(
        self,
        body: Iterable[T],
        labels: Mapping[str, str],
        on_blocked: Callable[[Blocked], Iterable[T] | None] | None = None,
    ) -> None:
        self._body = body
        self._labels = dict(labels)
        self._on_blocked = on_blocked
        self._iter: Iterator[T] | None = None
        self._started = False
        self._done = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._iter is None:
            self._iter = iter(self._body)
        leave = labels_scope(self._labels)
        try:
            chunk = next(self._iter)
        except StopIteration:
            self._done = True
            raise
        except Exception as exc:
            blocked = find_blocked(exc)
            if blocked is None:
                raise
            return self._blocked(blocked)
        finally:
            leave()
        if chunk:
            self._started = True
        return chunk

    def _blocked(self, exc: Blocked) -> T:
        replacement = None if self._started or self._on_blocked is None else self._on_blocked(exc)
        if replacement is None:
            stream_cut(exc)
            self._done = True
            raise StopIteration from None
        self._iter = iter(replacement)
        self._started = True
        return next(self._iter)

    def close(self) -> None:
        """Close the wrapped iterable (PEP 3333)."""
        self._done = True
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


async def aguarded_chunks(body: AsyncIterable[Any], labels: Mapping[str, str]) -> AsyncIterator[Any]:
    """Async `GuardedBody` for streaming responses: chunks made inside the labels; a `Blocked` ends the stream."""
    iterator = aiter(body)
    try:
        while True:
            leave = labels_scope(labels)
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except Exception as exc:
                blocked = find_blocked(exc)
                if blocked is None:
                    raise
                stream_cut(blocked)
                return
            finally:
                leave()
            yield chunk
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
