"""`WebOptions`: what every web integration is told about its requests — the customer, extra labels, the guard."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from costguard import _web
from costguard.defaults import check_default_config

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["HeaderFn", "WebOptions"]

# Reads the customer header's raw value from the request, only when there is no `customer_from`.
HeaderFn = Callable[[], "bytes | str | None"]


class WebOptions:
    """The options the ASGI and WSGI middleware, the Flask extension, the Django middleware and the FastAPI
    dependency share, checked once (`ValueError` for an unknown `missing_customer`).

    The customer is `customer_from(request)` when given, else the `customer_header` value; `labels(request)`
    adds extra labels; `missing_customer` says what a request without a customer gets. They stay plain
    attributes, read at each request. `guard` is the one given, else `load()`, else the configured default,
    resolved at first use.
    """

    def __init__(
        self,
        guard: Guard | None,
        customer_header: str,
        labels: _web.LabelsFn | None,
        customer_from: _web.CustomerFn | None,
        missing_customer: _web.MissingCustomer,
        load: Callable[[], Guard] | None = None,
    ) -> None:
        self.customer_header = customer_header
        self.labels = labels
        self.customer_from = customer_from
        self.missing_customer = _web.check_missing_customer(missing_customer)
        self._guard = _web.GuardRef(guard, load)
        if guard is None and load is None:
            check_default_config()  # a broken costguard.yaml fails the app's start, not each request

    @property
    def guard(self) -> Guard:
        """The guard this integration enforces (the default is loaded on first access)."""
        return self._guard.get()

    def _customer_of(self, request: Any, header: HeaderFn) -> str | None:
        """`customer_from(request)` when given, else the header value `header()` reads, as text."""
        if self.customer_from is not None:
            return self.customer_from(request)
        return _web.header_text(header())

    def _labels_of(self, request: Any) -> Mapping[str, object] | None:
        """The extra labels `labels(request)` gives, if there is a `labels`."""
        return None if self.labels is None else self.labels(request)

    def _read(self, path: str, request: Any, header: HeaderFn) -> _web.Request:
        """What the request at `path` asks for: its customer, extra labels and the missing-customer policy."""
        customer = self._customer_of(request, header)
        return _web.Request(path, customer, self._labels_of(request), self.missing_customer, self.customer_header)
