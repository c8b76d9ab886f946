"""A small JSON-over-HTTP POST for the webhook and PagerDuty notifiers (stdlib only, core stays light)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from costguard._version import __version__
from costguard.notify.dispatcher import DeliveryError, retry_after_seconds

__all__ = ["Response", "check_url", "post"]

USER_AGENT = f"costguard/{__version__}"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def check_url(url: str, what: str) -> str:
    """`url` when it is an absolute http(s) URL; ValueError naming `what` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL, got {url!r}")
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
