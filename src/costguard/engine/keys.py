"""Counter keys: what a ceiling instance's counters, its spend history and its `max_instances` registry
are called (every part of a key is encoded)."""

from __future__ import annotations

from collections.abc import Mapping

from costguard.model import Ceiling, Limit, literal_scope

__all__ = ["HISTORY_PREFIX", "INSTANCES_PREFIX", "counter_key", "history_key"]

# Distinct instances of a wildcard ceiling with `max_instances`, one registry counter per period bucket.
INSTANCES_PREFIX = "instances|"

# Spend history for forecasts: per ceiling instance, one USD counter per UTC hour.
HISTORY_PREFIX = "history|"


def history_key(ceiling_id: str, bound: Mapping[str, str], hour_id: str) -> str:
    """The history counter of one ceiling instance in one UTC hour."""
    return f"{HISTORY_PREFIX}{ceiling_id}|{literal_scope(bound)}|usd|{hour_id}"


def counter_key(ceiling: Ceiling, bound: Mapping[str, str], limit: Limit, bucket: str) -> str:
    """One counter per (ceiling, bound label values, unit, period bucket); every part is encoded."""
    return f"{ceiling.id}|{literal_scope(bound)}|{limit.unit.value}|{limit.period.value}|{bucket}"
