"""`CostGuardMiddleware` for Django (sync and async): request labels, the kill switch, `Blocked` → 429/503 JSON.

Settings (all optional)::

    COSTGUARD = {
        "config": BASE_DIR / "costguard.yaml",       # else the default guard (COSTGUARD_CONFIG, ./costguard.yaml)
        "customer_header": "X-Customer-Id",
        "labels": "myapp.costs.request_labels",     # dotted path to a callable(request) -> extra labels
    }
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.http import FileResponse, HttpResponse  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]
except ImportError as exc:
    raise ImportError(f'costguard.django needs Django: pip install "costguard-ai[django]" ({exc})') from exc

from costguard import _web
from costguard._config import load_settings
from costguard._web_options import WebOptions

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["CostGuardMiddleware"]

_KEYS = ("config", "customer_header", "customer_from", "missing_customer", "labels")
_guards: dict[Path, Guard] = {}
_guards_lock = threading.Lock()


class CostGuardMiddleware(WebOptions):
    """Add `"costguard.django.CostGuardMiddleware"` to `MIDDLEWARE` (after security/session middleware)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        options = _options()
        config = options.get("config")
        super().__init__(
            None,
            options.get("customer_header", _web.CUSTOMER_HEADER),
            _labels_fn(options.get("labels"), "labels"),
            _labels_fn(options.get("customer_from"), "customer_from"),
            options.get("missing_customer", "anonymous"),
            load=None if config is None else lambda: _guard_for(config),
        )
        if config is not None and Path(config).resolve() not in _guards:
            load_settings(config)  # COSTGUARD["config"] broken: the server's start fails with the key and line

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        guard = self._guard.get()
        labels, reply = self._request(request).gate(guard)
        if reply is not None:
            return _response(reply)
        leave = _web.labels_scope(labels)
        try:
            response = self.get_response(request)
        finally:
            leave()
        return _streamed(response, labels)

    async def __acall__(self, request: Any) -> Any:
        """The async path, used when Django serves the request through its ASGI handler."""
        guard = self._guard.get()
        labels, reply = await self._request(request).agate(guard)
        if reply is not None:
            return _response(reply)
        leave = _web.labels_scope(labels)
        try:
            response = await self.get_response(request)
        finally:
            leave()
        return _streamed(response, labels)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A `Blocked` raised by a view becomes the 429 (full ceiling) or 503 (kill switch) JSON response."""
        blocked = _web.find_blocked(exception)
        if blocked is None:
            return None
        return _response(_web.blocked_reply(blocked))

    def _request(self, request: Any) -> _web.Request:
        return self._read(request.path, request, lambda: request.headers.get(self.customer_header))


def _options() -> Mapping[str, Any]:
    options = getattr(settings, "COSTGUARD", None) or {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"settings.COSTGUARD must be a dict with keys {', '.join(_KEYS)}; got {options!r}")
    unknown = sorted(set(options) - set(_KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.COSTGUARD has unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(_KEYS)}"
        )
    header = options.get("customer_header", _web.CUSTOMER_HEADER)
    if not isinstance(header, str) or not header:
        raise ImproperlyConfigured(f"settings.COSTGUARD['customer_header'] must be a header name; got {header!r}")
    try:
        _web.check_missing_customer(options.get("missing_customer", "anonymous"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"settings.COSTGUARD['missing_customer']: {exc}") from None
    config = options.get("config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise ImproperlyConfigured(f"settings.COSTGUARD['config'] must be a path to costguard.yaml; got {config!r}")
    return options


def _labels_fn(value: object, key: str) -> Any:
    """A callable(request) from settings: the callable itself or a dotted path to it."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise ImproperlyConfigured(
            f"settings.COSTGUARD[{key!r}] must be a dotted path to a callable(request); got {value!r}"
        )
    try:
        found = import_string(value)
    except ImportError as exc:
        raise ImproperlyConfigured(f"settings.COSTGUARD[{key!r}] = {value!r} can't be imported: {exc}") from exc
    if not callable(found):
        raise ImproperlyConfigured(f"settings.COSTGUARD[{key!r}] = {value!r} is not callable")
    return found


def _guard_for(config: str | os.PathLike[str]) -> Guard:
    """One guard per config file per process; the first also becomes the default for `@with_kill_switch`."""
    from costguard import defaults
    from costguard.guard import Guard

    path = Path(config).resolve()
    with _guards_lock:
        guard = _guards.get(path)
        if guard is None:
            guard = _guards[path] = Guard.from_yaml(path)
            if defaults._default is None:
                defaults.configure(guard)
        return guard


def _response(reply: _web.Reply) -> Any:
    response = HttpResponse(reply.content, status=reply.status, content_type="application/json")
    for name, value in reply.headers:
        response[name] = value
    return response


def _streamed(response: Any, labels: Mapping[str, str]) -> Any:
    # A streamed body is produced after this middleware returns: give each chunk the request's labels back.
    # Files are left alone (no guarded calls there, and wrapping would lose the server's sendfile).
    if getattr(response, "streaming", False) and not isinstance(response, FileResponse):
        content = response.streaming_content
        if response.is_async:
            response.streaming_content = _web.aguarded_chunks(content, labels)
        else:
            response.streaming_content = _web.GuardedBody(content, labels)
    return response
