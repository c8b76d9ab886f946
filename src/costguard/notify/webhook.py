"""`webhook`: the event as JSON, POSTed to a URL, signed with HMAC-SHA256 when a secret is set."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from costguard.events import Event
from costguard.notify.http import DeliveryOptions, HttpNotifier, check_url, post

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_TOLERANCE_S", "WebhookNotifier", "sign", "verify"]

DEFAULT_TOLERANCE_S = 300.0


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-CostGuard-Signature` value for `body` sent at `timestamp` (default: now, in unix seconds):
    `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`. Signing the time with the body lets
    a receiver refuse an old request replayed to it."""
    at = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={at},v1={_mac(secret, at, body)}"


def verify(
    secret: str,
    body: bytes,
    signature: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """For receivers: whether `signature` (the header's value) signs `body` with `secret`, within
    `tolerance_s` of now (a replayed old request fails). Constant-time; any malformed or missing
    header is False, never an exception. Also drop duplicates by `X-CostGuard-Delivery`, the event id,
    which is the same on every retry."""
    if not isinstance(signature, str) or not isinstance(body, bytes):
        return False
    fields: dict[str, list[str]] = {}
    for part in signature.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isascii() or not stamps[0].isdigit() or len(stamps[0]) > 12:
        return False
    at = int(stamps[0])
    if abs((time.time() if now is None else now) - at) > tolerance_s:
        return False
    expected = _mac(secret, at, body).encode("ascii")
    return any(
        hmac.compare_digest(expected, given.encode("utf-8", "surrogateescape")) for given in fields.get("v1", [])
    )


class WebhookNotifier(HttpNotifier):
    """POST each event to `url`.

    Headers: `Content-Type: application/json`, `X-CostGuard-Event: <kind>`, `X-CostGuard-Delivery:
    <event id>` (the same on every retry, so a receiver can drop duplicates) and, with `secret`,
    `X-CostGuard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (see `verify`).
    Redirects are never followed. The delivery options (`on`, `timeout_s`, `attempts`, ...) are
    `HttpNotifier`'s.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        **delivery: Unpack[DeliveryOptions],
    ) -> None:
        self.url = check_url(url, "webhook url")
        self.secret = secret or None
        self.headers = dict(headers or {})
        super().__init__(**delivery)

    def body(self, event: Event) -> bytes:
        """The exact bytes sent (and signed)."""
        return json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def __call__(self, event: Event) -> None:
        body = self.body(event)
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "X-CostGuard-Event": event.kind,
            "X-CostGuard-Delivery": event.id,
        }
        if self.secret:
            headers["X-CostGuard-Signature"] = sign(self.secret, body)
        post(self.url, body, headers, self.timeout_s)

    def __repr__(self) -> str:
        return f"WebhookNotifier(url={_redacted(self.url)!r}, signed={self.secret is not None})"


def _redacted(url: str) -> str:
    """The URL without credentials or query (where receivers put tokens)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=host, query="***" if parts.query else ""))
