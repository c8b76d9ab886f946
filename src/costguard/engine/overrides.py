"""Limits set at run time: `LimitOverride`, their index by scope, and how they combine with the
config's ceilings (overrides win; an override no ceiling covers makes a ceiling of its own)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from costguard.model import WILDCARD, Ceiling, Limit, Period, Unit, encode_scope, make_match

__all__ = ["LimitOverride", "apply_overrides", "effective_limits", "index_overrides"]


@dataclass(frozen=True)
class LimitOverride:
    """A limit set at run time; it wins over the config."""

    scope: tuple[tuple[str, str], ...]
    period: Period
    unit: Unit
    amount: int
    reason: str = ""
    actor: str | None = None
    at: float = 0.0

    @property
    def scope_key(self) -> str:
        return encode_scope(dict(self.scope))


def index_overrides(overrides: Iterable[LimitOverride]) -> dict[str, dict[tuple[Period, Unit], int]]:
    """Overrides grouped by scope key."""
    index: dict[str, dict[tuple[Period, Unit], int]] = {}
    for item in overrides:
        index.setdefault(item.scope_key, {})[(item.period, item.unit)] = item.amount
    return index


def _instance_of(ceiling: Ceiling, scope: Mapping[str, str]) -> bool:
    return set(scope) == {name for name, _ in ceiling.match} and ceiling.bind(scope) is not None


def apply_overrides(ceilings: Sequence[Ceiling], overrides: Iterable[LimitOverride]) -> tuple[Ceiling, ...]:
    """Config ceilings plus a new ceiling for every override whose scope no ceiling covers."""
    ids = {c.id for c in ceilings}
    extra: dict[tuple[tuple[str, str], ...], list[Limit]] = {}
    for item in overrides:
        scope = dict(item.scope)
        if item.scope_key in ids or any(WILDCARD not in scope.values() and _instance_of(c, scope) for c in ceilings):
            continue
        extra.setdefault(make_match(scope), []).append(Limit(item.period, item.unit, item.amount))
    return tuple(ceilings) + tuple(
        Ceiling(match=match, limits=tuple(limits), name="runtime") for match, limits in extra.items()
    )


def effective_limits(
    ceiling: Ceiling, bound: Mapping[str, str], overrides: Mapping[str, Mapping[tuple[Period, Unit], int]]
) -> list[Limit]:
    """The ceiling's limits for these bound labels: config, then ceiling-wide, then per-instance overrides."""
    amounts = {(limit.period, limit.unit): limit.amount for limit in ceiling.limits}
    amounts.update(overrides.get(ceiling.id, {}))
    instance = encode_scope(bound)
    if instance != ceiling.id:
        amounts.update(overrides.get(instance, {}))
    return [Limit(period, unit, amount) for (period, unit), amount in amounts.items()]
