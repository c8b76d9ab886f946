"""Scalar values of `costguard.yaml`: numbers, USD amounts, counts, ratios, durations, prices and URLs.

Each validator takes what YAML gave and returns the checked value (USD as integer micros) or raises
`ValueError` with what was expected; the `Annotated` types below put them on pydantic fields.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, PlainValidator

from costguard.model import check_count, to_micros

__all__ = [
    "Count",
    "DeadlineMillis",
    "Duration",
    "HttpUrl",
    "Millis",
    "Price",
    "Ratio",
    "Thresholds",
    "Usd",
    "UsdEstimate",
    "check_threshold",
    "duration_seconds",
    "shown",
]


def shown(value: object) -> str:
    """`repr` for an error message, safe for ints too long for Python to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else _shown_container(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _shown_container(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> str:
    try:
        return repr(value)
    except ValueError:  # an int inside is beyond Python's int-to-text limit
        return f"a {type(value).__name__} holding a huge integer"


def _number(value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__} {shown(value)}")
    if isinstance(value, int) and value.bit_length() > 1000:
        raise ValueError(f"expected a number, got {shown(value)}: far beyond any budget, ratio or duration")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {shown(value)}")
    return value


def _usd(value: object) -> int:
    return to_micros(_number(value), round_up=False, what="USD amount")


def _usd_up(value: object) -> int:
    return to_micros(_number(value), round_up=True, what="USD estimate")


def _count(value: object) -> int:
    return check_count(_number(value), what="count")


def _as_float(value: object) -> float:
    number = _number(value)
    try:
        return float(number)
    except OverflowError:
        raise ValueError(f"expected a number, got {shown(number)}: too large") from None


def _ratio(value: object) -> float:
    number = _as_float(value)
    if number <= 0:
        raise ValueError(f"expected a ratio > 0 such as 0.8, got {value!r}")
    return number


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_SECONDS = 100 * 365 * 86400.0


def _millis(value: object) -> float:
    number = _as_float(value)
    if number > _MAX_SECONDS * 1000:
        raise ValueError(f"expected milliseconds, at most 100 years' worth, got {shown(value)}")
    return number


def _deadline_millis(value: object) -> float:
    number = _millis(value)
    if number <= 0:
        raise ValueError(f"expected milliseconds > 0, got {shown(value)}")
    return number


def _duration(value: object) -> float:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration such as 30m, 12h, 7d or a number of seconds, got {value!r}")
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        seconds = _as_float(value)
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ValueError(f"expected a duration of at most 100 years, got {shown(value)}")
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


def duration_seconds(text: str) -> float:
    """A duration as a command line gives it (`30m`, `12h`, `7d`, or seconds) in seconds; ValueError if not."""
    try:
        return _duration(float(text))
    except ValueError:
        return _duration(text)


def _price(value: object) -> Decimal:
    number = _number(value)
    return Decimal(str(number))


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


Usd = Annotated[int, PlainValidator(_usd)]
UsdEstimate = Annotated[int, PlainValidator(_usd_up)]
Count = Annotated[int, PlainValidator(_count)]


def _increasing(value: list[float]) -> list[float]:
    return sorted(set(value))  # the order they fire in; a repeat is one threshold


def _threshold(value: object) -> float:
    return check_threshold(_as_float(value))


def check_threshold(value: float) -> float:
    """A threshold as a fraction of the limit in (0, 1]; `ValueError` naming the likely mistake otherwise."""
    if not 0 < value <= 1:
        hint = f" (for {value:g} % write {value / 100:g})" if 1 < value <= 100 else ""
        raise ValueError(
            f"a threshold is a fraction of the limit in (0, 1], such as 0.8 for 80 %, got {value:g}{hint}; "
            "`kill` fires when a hard ceiling first blocks, listed or not"
        )
    return value


Ratio = Annotated[float, PlainValidator(_ratio)]
Thresholds = Annotated[list[Annotated[float, PlainValidator(_threshold)]], AfterValidator(_increasing)]
Duration = Annotated[float, PlainValidator(_duration)]
Millis = Annotated[float, PlainValidator(_millis)]
DeadlineMillis = Annotated[float, PlainValidator(_deadline_millis)]
Price = Annotated[Decimal, PlainValidator(_price)]
HttpUrl = Annotated[str, PlainValidator(_http_url)]
