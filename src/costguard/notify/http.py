"""What the HTTP notifiers (Slack, webhook, PagerDuty) share: their delivery options, the URL check, and a
small JSON-over-HTTP POST for the webhook and PagerDuty notifiers (stdlib only, core stays light)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypedDict
from urllib.parse import urlsplit

from costguard._version import __version__
from costguard.notify.dispatcher import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_DELAY_S,
    DEFAULT_MAX_PER_MINUTE,
    DeliveryError,
    rate_per_minute,
    retry_after_seconds,
)

__all__ = ["DEFAULT_TIMEOUT_S", "DeliveryOptions", "HttpNotifier", "Response", "check_url", "post"]

USER_AGENT = f"costguard/{__version__}"
DEFAULT_TIMEOUT_S = 5.0


class DeliveryOptions(TypedDict, total=False):
    """The keyword options every HTTP notifier takes besides its own (see `HttpNotifier`)."""

    on: Iterable[str] | None
    timeout_s: float
    attempts: int
    max_delay_s: float
    backoff_s: float
    max_per_minute: float | None


class HttpNotifier:
    """The base of the Slack, webhook and PagerDuty notifiers: the delivery options the dispatcher reads.

    `on`: the event kinds to send (unset or empty: the class's `default_on`, None meaning every kind).
    `timeout_s`: per request. `attempts`, `max_delay_s` and `backoff_s` bound the dispatcher's retries
    (exponential backoff with jitter); `max_per_minute` is its rate limit (None: no limit).
    """

    default_on: frozenset[str] | None = None

    def __init__(
        self,
        *,
        on: Iterable[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_per_minute: float | None = DEFAULT_MAX_PER_MINUTE,
    ) -> None:
        self.on = frozenset(on) if on else self.default_on
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_delay_s = max_delay_s
        self.backoff_s = backoff_s
        self.max_per_minute = rate_per_minute(max_per_minute)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def check_url(url: str, what: str) -> str:
    """`url` when it is an absolute http(s) URL; ValueError naming `what` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # A webhook URL carries its secret in the path or query (Slack's does): never echo it whole.
        shown = f"{parts.scheme}://{parts.hostname or ''}/…" if parts.scheme else "a value that is not a URL"
        raise ValueError(
            f"{what} must be an http:// or https:// URL, got {shown} (the rest is not shown: it may hold a secret)"
        )
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are never followed: the request would carry the receiver's headers (its bearer token,
    the signature) to another host, and a 302's GET has no body — so it is a failed delivery."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
    """POST `body`; a 2xx returns, anything else raises `DeliveryError` (retryable unless a plain 4xx or a
    redirect, which is never followed)."""
    request = urllib.request.Request(  # noqa: S310 - check_url admitted only http(s) at construction
        url, data=body, method="POST", headers={"User-Agent": USER_AGENT, **headers}
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as answer:
            return Response(answer.status, answer.read())
    except urllib.error.HTTPError as exc:
        status = exc.code
        if 300 <= status < 400:
            where = exc.headers.get("Location", "?")
            exc.close()
            raise DeliveryError(
                f"{urlsplit(url).netloc} answered {status}, a redirect to {where!r}: redirects are never followed "
                "(point the notifier at the final URL)",
                retryable=False,
            ) from None
        detail = exc.read()[:200].decode("utf-8", "replace")
        retryable = status >= 500 or status in (408, 425, 429)
        raise DeliveryError(
            f"{urlsplit(url).netloc} answered {status}: {detail}",
            retryable=retryable,
            retry_after=retry_after_seconds(exc.headers.get("Retry-After")),
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{urlsplit(url).netloc} unreachable: {reason}") from None
