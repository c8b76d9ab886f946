"""`with_kill_switch`: one decorator for sync and async functions, on the default guard or a given one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import Unpack

from costguard.defaults import default_guard
from costguard.guarded import Decorated, GuardOptions, decorate

if TYPE_CHECKING:
    from costguard.callpath import CallPath
    from costguard.guard import Guard

__all__ = ["Decorated", "with_kill_switch"]

F = TypeVar("F", bound=Callable[..., Any])


def with_kill_switch(feature: str, *, guard: Guard | None = None, **options: Unpack[GuardOptions]) -> Callable[[F], F]:
    """Guard `fn` as `feature`: kill switch, atomic reservation, fallback when denied, cost recorded after.

    `fallback`: a value (static), a callable (called with the same arguments), or a
    `costguard.fallback` object; unset, the feature's configured fallback, else `Blocked` is raised.
    `estimate` / `estimate_tokens`: a number or a callable over the arguments. `cost`: a number or a
    callable over the result. `labels`: a mapping or a callable over the arguments. `degrade`: called
    instead of `fn` once spend passes the feature's `degrade_at` (still guarded). `guard`: default is
    the one set with `costguard.configure()` (or loaded from `COSTGUARD_CONFIG` / `./costguard.yaml`),
    looked up at each call.
    """

    def resolve() -> CallPath:
        return (guard if guard is not None else default_guard()).calls

    return decorate(feature, resolve, **options)
