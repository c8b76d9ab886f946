"""The `proxy:` section of `costguard.yaml`: the upstreams `costguard proxy` forwards to."""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from costguard._config.schema import StrictModel
from costguard._config.values import Count, Duration, HttpUrl, Price, UsdEstimate

__all__ = ["AmountFrom", "ProxyConfig", "UpstreamConfig"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP field name (RFC 9110 token)
# Headers an upstream's `headers:` may not set: the proxy sets or drops them itself.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade", "accept-encoding"}
)


class AmountFrom(StrictModel):
    """A generic upstream's price read from the request body: `json` (a dotted path) times `scale`."""

    json_path: str = Field(alias="json", min_length=1)
    scale: Price = Decimal(1)


class UpstreamConfig(StrictModel):
    """One API the proxy forwards to at `/<name>/<path>`, with the vendor key only the proxy holds."""

    kind: Literal["openai", "anthropic", "generic"]
    url: HttpUrl
    api_key: SecretStr | None = None
    feature: str | None = None  # the `feature` label of its calls (default: the upstream's name)
    estimate_usd: UsdEstimate | None = None  # a flat price for requests costguard can't price (unknown model)
    # The output cap added to an LLM request that names none, so what is reserved bounds what it can cost.
    max_output_tokens: Count | None = 4096
    # How the vendor key is sent: `bearer` (Authorization: Bearer), `basic` (api_key is "user:password"),
    # or `header:<Name>` (the key as it is, in that header). Default: anthropic `header:x-api-key`, else bearer.
    auth: str | None = None
    # Sent with every request, replacing the agent's; kept as secrets (never in a repr, log or error).
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    price_usd: Price | None = None  # generic: a fixed price per call
    amount: AmountFrom | None = None  # generic: the price from a request field
    actual: AmountFrom | None = None  # generic: what the call cost, from a field of the JSON answer
    timeout_s: Duration = 600.0

    @model_validator(mode="after")
    def _generic_price(self) -> UpstreamConfig:
        if self.kind == "generic" and (self.price_usd is None) == (self.amount is None):
            raise ValueError("a generic upstream needs exactly one of price_usd (per call) or amount (from the body)")
        if self.kind != "generic" and (self.price_usd is not None or self.amount is not None or self.actual):
            raise ValueError(
                f"price_usd, amount and actual are for generic upstreams; a {self.kind} one is priced by usage"
            )
        if self.max_output_tokens == 0:
            raise ValueError("max_output_tokens must be at least 1 (or null: add no output cap)")
        if self.auth is not None and self.auth not in ("bearer", "basic"):
            kind, _, header = self.auth.partition(":")
            if kind != "header" or not _HEADER.fullmatch(header):
                raise ValueError(
                    f"auth must be bearer, basic or header:<Name> (e.g. header:x-api-key), got {self.auth!r}"
                )
        if self.auth == "basic" and self.api_key is not None and ":" not in self.api_key.get_secret_value():
            raise ValueError("auth: basic needs api_key as 'user:password' (e.g. a Twilio account SID and token)")
        for name, value in self.headers.items():
            if not _HEADER.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
                raise ValueError(
                    f"headers: {name!r} can't be set here (an HTTP field name the proxy doesn't set itself)"
                )
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value.get_secret_value()):
                raise ValueError(f"headers: the value of {name!r} holds a control character")
        return self

    def auth_header(self) -> tuple[bytes, bytes] | None:
        """The header that carries the vendor key (None: no key configured)."""
        if self.api_key is None:
            return None
        secret = self.api_key.get_secret_value()
        auth = self.auth or ("header:x-api-key" if self.kind == "anthropic" else "bearer")
        if auth == "bearer":
            return b"authorization", b"Bearer " + secret.encode()
        if auth == "basic":
            return b"authorization", b"Basic " + base64.b64encode(secret.encode())
        return auth.partition(":")[2].lower().encode("latin-1"), secret.encode()


class ProxyConfig(StrictModel):
    """`costguard proxy`: its upstreams by name."""

    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in value:
            if not _NAME.fullmatch(name) or name == "v1":
                raise ValueError(f"{name!r} can't name an upstream: letters, digits, '_', '.', '-' (and not 'v1')")
        return value
