"""The `proxy:` section of `costguard.yaml`: the upstreams `costguard proxy` forwards to."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from costguard._config.schema import StrictModel
from costguard._config.values import Duration, HttpUrl, Price, UsdEstimate

__all__ = ["AmountFrom", "ProxyConfig", "UpstreamConfig"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


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
    estimate_usd: UsdEstimate | None = None  # reserved when the request doesn't say (no max_tokens)
    price_usd: Price | None = None  # generic: a fixed price per call
    amount: AmountFrom | None = None  # generic: the price from a request field
    timeout_s: Duration = 600.0

    @model_validator(mode="after")
    def _generic_price(self) -> UpstreamConfig:
        if self.kind == "generic" and (self.price_usd is None) == (self.amount is None):
            raise ValueError("a generic upstream needs exactly one of price_usd (per call) or amount (from the body)")
        if self.kind != "generic" and (self.price_usd is not None or self.amount is not None):
            raise ValueError(f"price_usd and amount are for generic upstreams; a {self.kind} one is priced by usage")
        return self


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
