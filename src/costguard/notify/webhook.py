"""`webhook`: the event as JSON, POSTed to a URL, signed with HMAC-SHA256 when a secret is set."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping

from costguard.events import Event
from costguard.notify.dispatcher import DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_S, DEFAULT_MAX_DELAY_S
from costguard.notify.http import check_url, post

__all__ = ["WebhookNotifier", "sign", "verify"]


def sign(secret: str, body: bytes) -> str:
    """The `X-CostGuard-Signature` value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """For receivers: whether `signature` (the header's value) signs `body`; constant-time."""
    return hmac.compare_digest(sign(secret, body), signature)


class WebhookNotifier:
    """POST each event to `url`.

    Headers: `Content-Type: application/json`, `X-CostGuard-Event: <kind>`, `X-CostGuard-Delivery:
    <event id>` (the same on every retry, so a receiver can drop duplicates) and, with `secret`,
    `X-CostGuard-Signature: sha256=<hex>` over the exact body bytes.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        on: Iterable[str] | None = None,
        timeout_s: float = 5.0,
        attempts: int = DEFAULT_ATTEMPTS,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> None:
        self.url = check_url(url, "webhook url")
        self.secret = secret or None
        self.headers = dict(headers or {})
        self.on = frozenset(on) if on else None
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_delay_s = max_delay_s
        self.backoff_s = backoff_s

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
        return f"WebhookNotifier(url={self.url!r}, signed={self.secret is not None})"
