"""Pricing what the fake API reported, independently of costguard, and reading a guard's counters."""

from __future__ import annotations

import math
from typing import Any

import genai_prices

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match

GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-20241022"
FLAVOR = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "chat"),  # the same usage shape as chat completions
    "/v1/responses": ("openai", "responses"),
}


def price_micros(reported: dict[str, Any], **override: int) -> int:
    """What genai-prices says one reported usage costs, in micro-dollars rounded up (as costguard records).

    `override` replaces usage fields before pricing (e.g. the output cap of a cut stream)."""
    provider, flavor = FLAVOR.get(reported["path"], ("anthropic", "default"))
    data = {"model": reported["model"], "usage": {**reported["usage"], **override}}
    price = genai_prices.extract_usage(data, provider_id=provider, api_flavor=flavor).calc_price().total_price
    return math.ceil(price * 1_000_000)


def spent_micros(guard: Guard, unit: str = "usd", **labels: str) -> int:
    """The one matching counter's spend (USD in micro-dollars)."""
    rows = [r for r in guard.status(**labels).ceilings if r.unit == unit]
    assert len(rows) == 1, rows
    value = rows[0].spent
    return round(value * 1_000_000) if unit == "usd" else int(value)


def reserved_micros(guard: Guard) -> int:
    (row,) = [r for r in guard.status().ceilings if r.unit == "usd"]
    return round(row.reserved * 1_000_000)


def usd_cap(match: dict[str, str], micros: int, period: str = "month") -> Ceiling:
    return Ceiling(make_match(match), (Limit(Period(period), Unit.USD, micros),))


def estimate_of(guard: Guard) -> int:
    """The estimate of the newest reservation, from the audit log (micro-dollars)."""
    guard.flush()
    record = guard.audit(decision="reserve", limit=1)[0]
    return round(record.data["estimate_usd"] * 1_000_000)
