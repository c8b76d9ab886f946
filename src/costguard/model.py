"""Value types: money in integer micro-dollars, units, periods, labels, limits and ceilings."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from enum import Enum
from typing import Literal
from urllib.parse import quote

from costguard.errors import LabelError

__all__ = [
    "OVERFLOW",
    "STANDARD_LABELS",
    "Ceiling",
    "Enforcement",
    "Limit",
    "Money",
    "Period",
    "Unit",
    "encode_scope",
    "micros_to_usd",
    "normalize_labels",
    "to_micros",
]

Money = float | int | Decimal | str
Enforcement = Literal["hard", "soft"]

MICROS_PER_USD = 1_000_000
WILDCARD = "*"
DEFAULT_MAX_LABEL_LENGTH = 256
# Values longer than this are stored as a digest so keys stay short enough for any index.
_HASH_OVER = 64
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

# The value a wildcard label takes in the shared instance of a ceiling past its `max_instances`.
OVERFLOW = "(overflow)"

# Labels every deployment may use in a kill switch or limit scope without declaring them.
STANDARD_LABELS = ("feature", "customer", "tenant", "org", "team", "user", "agent", "run", "vendor", "model")


class Unit(str, Enum):
    """What a limit counts."""

    USD = "usd"
    CALLS = "calls"
    TOKENS = "tokens"


class Period(str, Enum):
    """Calendar periods in the configured timezone; `total` never resets."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


def to_micros(amount: Money, *, round_up: bool = True, what: str = "amount") -> int:
    """USD as `float | int | Decimal | str` → integer micro-dollars; rejects negative, NaN and infinity."""
    kind = type(amount)
    if kind is float or kind is int:
        # Estimates and costs repeat call after call: convert each distinct number once.
        cached = _number_micros(amount, round_up)
        if cached is not None:
            return cached
    return _to_micros(amount, round_up=round_up, what=what)


@functools.lru_cache(maxsize=4096)
def _number_micros(amount: float, round_up: bool) -> int | None:
    try:
        return _to_micros(amount, round_up=round_up, what="amount")
    except ValueError:
        return None  # not cached: the caller converts again and raises with its own wording


def _to_micros(amount: Money, *, round_up: bool, what: str) -> int:
    if isinstance(amount, bool) or not isinstance(amount, (float, int, Decimal, str)):
        raise ValueError(f"{what} must be a number of USD, got {type(amount).__name__} {amount!r}")
    try:
        # repr() of a float is its shortest round-tripping decimal: 0.004 stays 0.004, not 0.00400…08.
        value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(str(amount).strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a number of USD, got {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"{what} must be a finite number of USD, got {amount!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {amount!r}")
    rounding = ROUND_CEILING if round_up else ROUND_HALF_UP
    return int((value * MICROS_PER_USD).to_integral_value(rounding=rounding))


def micros_to_usd(micros: int) -> float:
    """Integer micro-dollars → USD float rounded to 6 places."""
    return round(micros / MICROS_PER_USD, 6)


def check_count(value: object, *, what: str) -> int:
    """A non-negative whole number of calls or tokens."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        value = int(value)
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return value


# NUL (PostgreSQL text can't hold it) and UTF-16 surrogates (not encodable as UTF-8; JSON round trips
# would turn a pair into a different character, i.e. another customer).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _describe(char: str) -> str:
    return "a NUL character" if char == "\x00" else f"the surrogate code point U+{ord(char):04X}"


@functools.lru_cache(maxsize=1024)
def _valid_label_name(name: str) -> bool:
    return _LABEL_NAME.fullmatch(name) is not None


def normalize_labels(labels: Mapping[str, object], *, max_length: int = DEFAULT_MAX_LABEL_LENGTH) -> dict[str, str]:
    """Validate label names and values; `None` values are dropped, ints become strings."""
    out: dict[str, str] = {}
    for name, value in labels.items():
        if value is None:
            continue
        if not isinstance(name, str) or not _valid_label_name(name):
            raise LabelError(
                f"label name {name!r} is not valid: use letters, digits, '_', '.' or '-', "
                "starting with a letter or '_', at most 64 characters"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LabelError(f"label {name!r} must be a string, got {type(value).__name__} {value!r}")
        text = str(value)
        if not text:
            raise LabelError(f"label {name!r} is empty; leave it out instead")
        bad = _UNSTORABLE.search(text)
        if bad is not None:
            raise LabelError(
                f"label {name!r} contains {_describe(bad.group())} at position {bad.start()}: NUL and surrogate "
                "code points can't be stored by every backend (decode bytes with errors='replace', or drop them)"
            )
        if len(text) > max_length:
            raise LabelError(
                f"label {name!r} is {len(text)} characters long; the limit is {max_length} "
                "(raise max_label_length in the config if this is intended)"
            )
        out[name] = text
    return out


@functools.lru_cache(maxsize=65_536)  # label values repeat (features, customers): encode each once
def _encode_value(value: str) -> str:
    raw = value.encode("utf-8", "surrogatepass")
    encoded = quote(raw, safe="")
    if len(encoded) > _HASH_OVER:
        # '#' never appears in quote()'s output, so a digest can't equal any quoted value.
        return "#" + hashlib.sha256(raw).hexdigest()
    return encoded


def encode_scope(scope: Mapping[str, str]) -> str:
    """An injective text form of a ceiling match, safe inside any key (`customer=*,feature=f`)."""
    return ",".join(
        f"{name}={WILDCARD if scope[name] == WILDCARD else _encode_value(scope[name])}" for name in sorted(scope)
    )


def literal_scope(labels: Mapping[str, str]) -> str:
    """An injective text form of bound label values; a value that is literally '*' is data here."""
    return ",".join(f"{name}={_encode_value(labels[name])}" for name in sorted(labels))


@dataclass(frozen=True)
class Limit:
    """One limit of a ceiling: `amount` of `unit` per `period` (USD amounts in micro-dollars)."""

    period: Period
    unit: Unit
    amount: int

    @property
    def display(self) -> float:
        """The amount in the unit's user-facing form (USD as a float)."""
        return micros_to_usd(self.amount) if self.unit is Unit.USD else float(self.amount)


@dataclass(frozen=True)
class Ceiling:
    """Limits on every call whose labels match `match` (`"*"`: each value gets its own counter)."""

    match: tuple[tuple[str, str], ...]
    limits: tuple[Limit, ...]
    enforcement: Enforcement = "hard"
    expire_after_s: float | None = None
    thresholds: tuple[float, ...] | None = None
    # Values of a wildcard label that a more specific ceiling of the same shape covers instead.
    exclude: tuple[tuple[str, frozenset[str]], ...] = ()
    name: str = field(default="")
    # A wildcard ceiling's cap on distinct instances per period (random ids can't mint counters without
    # end): past it, new instances share one `OVERFLOW` instance ("share") or are refused ("refuse").
    max_instances: int | None = None
    overflow: Literal["share", "refuse"] = "share"
    # How long a `total` counter admits calls, from its first admitted one (a run's lifetime): past it
    # every call is refused (reason `expired`) until `expire_after` drops the counter.
    ttl_s: float | None = None

    def __post_init__(self) -> None:
        if self.overflow not in ("share", "refuse"):
            raise ValueError(f"overflow must be 'share' or 'refuse', got {self.overflow!r}")
        problem = ttl_problem(self.limits, self.enforcement, self.expire_after_s, self.ttl_s)
        if problem is not None:
            raise ValueError(problem[1])
        if self.max_instances is None:
            return
        if isinstance(self.max_instances, bool) or not isinstance(self.max_instances, int) or self.max_instances < 1:
            raise ValueError(f"max_instances must be a whole number of at least 1, got {self.max_instances!r}")
        if WILDCARD not in dict(self.match).values():
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.match))
            raise ValueError(
                f"max_instances caps the distinct values of a wildcard ('*') label; this ceiling has none "
                f"({shown}): put it on per_customer, customers: '*' or a ceiling matching '*'"
            )

    @functools.cached_property
    def id(self) -> str:
        """A stable identity derived from the match (`customer=*,feature=support_agent`)."""
        return encode_scope(dict(self.match))

    @property
    def match_dict(self) -> dict[str, str]:
        return dict(self.match)

    def bind(self, labels: Mapping[str, str]) -> dict[str, str] | None:
        """The concrete label values this call binds, or None when the ceiling doesn't apply."""
        bound: dict[str, str] = {}
        for name, wanted in self.match:
            value = labels.get(name)
            if value is None or (wanted not in (WILDCARD, value)):
                return None
            bound[name] = value
        for name, values in self.exclude:
            if labels.get(name) in values:
                return None
        return bound


def duration_text(seconds: float) -> str:
    """`90` → `90s`, `3600` → `1h`, `604800` → `7d`: a duration as the config writes it."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def ttl_problem(
    limits: tuple[Limit, ...], enforcement: str, expire_after_s: float | None, ttl_s: float | None
) -> tuple[str, str] | None:
    """What is wrong with a ceiling's `ttl`, as (the key to blame, why), or None."""
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s < math.inf:
        return "ttl", f"ttl must be a positive number of seconds, got {ttl_s!r}"
    if all(limit.period is not Period.TOTAL for limit in limits):
        return "ttl", (
            "ttl only applies to `total` limits (total_usd, calls_total, tokens_total): it runs from a counter's "
            "first call, and a daily, weekly or monthly counter starts over each period; add a total limit or "
            "remove ttl"
        )
    if enforcement != "hard":
        return (
            "ttl",
            "ttl refuses calls once it has run out, and a soft ceiling never refuses: make it hard or drop ttl",
        )
    if expire_after_s is not None and expire_after_s <= ttl_s:
        return "expire_after", (
            f"expire_after ({duration_text(expire_after_s)}) must be longer than ttl ({duration_text(ttl_s)}): "
            "dropping the counter ends the refusal, so a run quiet that long would start over with a fresh ttl "
            "and budget; keep it well past the ttl (e.g. ttl: 1h, expire_after: 7d), or leave it out to refuse for good"
        )
    return None


def pattern_message(name: str, value: str) -> str:
    """Why `value` (a match value with `*` inside, like `billing-*`) is refused."""
    return (
        f"{name}: {value!r} looks like a pattern, but a ceiling matches a value exactly, or every value with '*' "
        f"alone (each value its own counter); list the values, or give those calls a label of their own "
        f"(e.g. {name}_kind: billing) and match that"
    )


def make_match(match: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A ceiling match in canonical (sorted) order."""
    return tuple(sorted(match.items()))
