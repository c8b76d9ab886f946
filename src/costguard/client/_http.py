"""The client's requests: one httpx connection pool, the calls by area, and error answers as `ApiError`."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import EllipsisType, TracebackType
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by tests/admin/test_admin_client.py
    raise ImportError('costguard.client needs httpx: pip install "costguard-ai[client]"') from exc

from costguard._version import __version__
from costguard.client._results import BudgetStatus, Forecast, KillSwitchChange, KillSwitchStatus, LimitsUpdated
from costguard.errors import CostGuardError

__all__ = ["ApiError", "BudgetApi", "Client", "KillSwitchApi"]

Usd = float | int | Decimal


class ApiError(CostGuardError):
    """The admin API answered with an error (`status_code`, its `code` and `message`), or did not answer
    (`status_code` None, `code` `unreachable` or `timeout`). It never holds the token."""

    def __init__(self, status_code: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status_code or 'no answer'} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ApiError(status_code={self.status_code!r}, code={self.code!r}, message={self.message!r})"


class _Transport:
    """The one place requests are sent and error answers become `ApiError`."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, path, params=query, json=body)
        except httpx.TimeoutException as exc:
            raise ApiError(None, "timeout", f"{method} {path}: no answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ApiError(None, "unreachable", f"{method} {path}: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and data is not None:
            return data
        if isinstance(data, dict) and "error" in data:
            raise ApiError(response.status_code, str(data["error"]), str(data.get("message", "")))
        code = "invalid_response" if response.is_success else f"http_{response.status_code}"
        raise ApiError(response.status_code, code, f"{method} {path}: {response.text[:200] or 'no JSON body'}")


class BudgetApi:
    """`client.budget`: status, day and month limits, forecast."""

    def __init__(self, transport: _Transport) -> None:
        self._transport = transport

    def status(self, feature: str | None = None, customer: str | None = None) -> BudgetStatus:
        """Spend now: `daily`/`monthly` for the scope (the filters; else everything, or the token's tenant)."""
        data = self._transport.call("GET", "v1/budget/status", params={"feature": feature, "customer": customer})
        return BudgetStatus.from_json(data)

    def update_limits(
        self,
        *,
        daily_limit_usd: Usd | EllipsisType | None = ...,
        monthly_limit_usd: Usd | EllipsisType | None = ...,
        reason: str,
    ) -> LimitsUpdated:
        """Set (a number) or clear (None) the scope's day and/or month USD limit; a reason is required.

        Left out: unchanged. Operators may lower; raising needs an admin. The scope is the token's:
        everything, or its tenant's customer. If any change is refused, none is made (`ApiError` 403).
        """
        body: dict[str, Any] = {"reason": reason}
        for name, value in (("daily_limit_usd", daily_limit_usd), ("monthly_limit_usd", monthly_limit_usd)):
            if value is not ...:
                body[name] = str(value) if isinstance(value, Decimal) else value
        if len(body) == 1:
            raise ValueError("give daily_limit_usd, monthly_limit_usd or both (a number sets it, None clears it)")
        return LimitsUpdated.from_json(self._transport.call("PUT", "v1/budget/limits", body=body))

    def forecast(self, feature: str | None = None, customer: str | None = None) -> Forecast:
        """Each USD ceiling's projected spend at its period's end, and when it runs out."""
        data = self._transport.call("GET", "v1/budget/forecast", params={"feature": feature, "customer": customer})
        return Forecast.from_json(data)


class KillSwitchApi:
    """`client.killswitch`: activate, deactivate, status."""

    def __init__(self, transport: _Transport) -> None:
        self._transport = transport

    def activate(self, reason: str, scope: Mapping[str, str] | None = None) -> KillSwitchChange:
        """Stop every guarded call in `scope` (None: everything); operators and admins."""
        body = {"reason": reason, "scope": None if scope is None else dict(scope)}
        return KillSwitchChange.from_json(self._transport.call("POST", "v1/killswitch/activate", body=body))

    def deactivate(self, reason: str, scope: Mapping[str, str] | None = None) -> KillSwitchChange:
        """Let calls in `scope` (None: the global switch) run again; admins only."""
        body = {"reason": reason, "scope": None if scope is None else dict(scope)}
        return KillSwitchChange.from_json(self._transport.call("POST", "v1/killswitch/deactivate", body=body))

    def status(self, history: int = 20) -> KillSwitchStatus:
        """Whether the caller's scope is stopped, the active switches it may see and the latest changes."""
        data = self._transport.call("GET", "v1/killswitch/status", params={"history": history})
        return KillSwitchStatus.from_json(data)


class Client:
    """A client of a costguard admin API at `url` with a bearer `token`; `close()` it, or use `with`."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("a token is required: one of the server's admin.tokens")
        if not token.isascii() or not token.isprintable():
            raise ValueError("the token must be printable ASCII text, as admin.tokens are")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + "/",
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"costguard-client/{__version__}"},
            timeout=timeout,
            follow_redirects=False,  # a redirect would carry the token somewhere else
        )
        transport = _Transport(self._http)
        self.budget = BudgetApi(transport)
        self.killswitch = KillSwitchApi(transport)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._http.is_closed

    def close(self) -> None:
        """Release the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"
