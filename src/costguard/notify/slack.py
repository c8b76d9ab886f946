"""`slack`: a readable message per event through slack-sdk (Incoming Webhook, or a bot token + channel)."""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from costguard.events import Event
from costguard.notify.dispatcher import DeliveryError, retry_after_seconds
from costguard.notify.format import details, emoji, headline, next_step, plain_text
from costguard.notify.http import DEFAULT_TIMEOUT_S, DeliveryOptions, HttpNotifier, check_url

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SlackNotifier"]

# Slack accepts about one message per second per channel; every Slack notifier in this process
# shares these marks, so two guards posting to the same channel are paced together.
_last_post: dict[str, float] = {}
_pace_lock = threading.Lock()


def _pace(channel: str, interval_s: float) -> None:
    """Wait for this channel's next slot (and take it)."""
    with _pace_lock:
        now = time.monotonic()
        due = max(now, _last_post.get(channel, float("-inf")) + interval_s)
        _last_post[channel] = due
    if due > now:
        time.sleep(due - now)


def _posted(channel: str) -> None:
    """Mark the end of a post: the next one waits a full interval from here (retries included)."""
    with _pace_lock:
        _last_post[channel] = max(_last_post.get(channel, float("-inf")), time.monotonic())


class SlackNotifier(HttpNotifier):
    """Post events to Slack with `webhook_url` (Incoming Webhook) or `token` + `channel` (chat.postMessage).

    slack-sdk's retry handlers skip HTTP 429 by default; this client adds its rate-limit handler
    (one wait of `Retry-After`), and the dispatcher retries 5xx, timeouts and a second 429 with
    backoff. At most one message per `min_interval_s` (default 1 s) per channel from this process.
    `base_url` points the Web API client elsewhere (a proxy, Slack GovSlack, a test server). The other
    delivery options (`on`, `timeout_s`, `attempts`, ...) are `HttpNotifier`'s.
    """

    name = "slack"

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        token: str | None = None,
        channel: str | None = None,
        base_url: str | None = None,
        min_interval_s: float = 1.0,
        **delivery: Unpack[DeliveryOptions],
    ) -> None:
        try:
            from slack_sdk import WebClient
            from slack_sdk.http_retry import RetryHandler
            from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
            from slack_sdk.webhook import WebhookClient
        except ImportError as exc:
            raise ImportError('the slack notifier needs slack-sdk: pip install "costguard-ai[slack]"') from exc
        if bool(webhook_url) == bool(token):
            raise ValueError("give either webhook_url, or token and channel")
        if token and not channel:
            raise ValueError("channel is required with token (e.g. '#ops' or a channel id)")
        timeout = max(1, math.ceil(delivery.get("timeout_s", DEFAULT_TIMEOUT_S)))  # slack-sdk takes whole seconds
        handlers: list[RetryHandler] = [RateLimitErrorRetryHandler(max_retry_count=1)]
        self._webhook: Any = None
        self._web: Any = None
        if webhook_url:
            self._webhook = WebhookClient(
                check_url(webhook_url, "webhook_url"), timeout=timeout, retry_handlers=handlers
            )
            self.channel_key = webhook_url
        else:
            options: dict[str, Any] = {"token": token, "timeout": timeout, "retry_handlers": handlers}
            if base_url:
                options["base_url"] = check_url(base_url, "base_url").rstrip("/") + "/"
            self._web = WebClient(**options)
            self.channel_key = f"{base_url or 'slack'}#{channel}"
        self.channel = channel
        super().__init__(**delivery)
        self.min_interval_s = min_interval_s

    @staticmethod
    def blocks(event: Event) -> list[dict[str, Any]]:
        """The Block Kit layout: headline, the numbers (with a progress bar), what happens next."""
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji(event)} *{headline(event)}*"}}
        ]
        numbers = details(event)
        if numbers:
            text = "\n".join(f"`{line}`" if "█" in line or "░" in line else line for line in numbers)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": next_step(event)}]})
        return blocks

    def __call__(self, event: Event) -> None:
        from slack_sdk.errors import SlackApiError

        _pace(self.channel_key, self.min_interval_s)
        text = plain_text(event)
        try:
            if self._webhook is not None:
                response = self._webhook.send(text=text, blocks=self.blocks(event))
                status, headers, body = response.status_code, response.headers, response.body
            else:
                self._web.chat_postMessage(channel=self.channel, text=text, blocks=self.blocks(event))
                return
        except SlackApiError as exc:
            status = exc.response.status_code
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else exc.response.data
            raise DeliveryError(
                f"Slack answered {status}: {error}",
                retryable=status >= 500 or status in (408, 429),
                retry_after=retry_after_seconds(_header(exc.response.headers, "Retry-After")),
            ) from None
        except (OSError, TimeoutError) as exc:
            raise DeliveryError(f"Slack unreachable: {exc}") from None
        finally:
            _posted(self.channel_key)
        if 200 <= status < 300:
            return
        raise DeliveryError(
            f"Slack answered {status}: {str(body)[:200]}",
            retryable=status >= 500 or status in (408, 429),
            retry_after=retry_after_seconds(_header(headers, "Retry-After")),
        )

    def __repr__(self) -> str:
        how = "webhook" if self._webhook is not None else f"channel {self.channel}"
        return f"SlackNotifier({how})"


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return str(value[0] if isinstance(value, list) else value)
    return None
