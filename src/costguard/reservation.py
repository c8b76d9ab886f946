"""A reservation held while the guarded call runs; settles once by commit or release."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from costguard import current as _ctx
from costguard.decision import Decision
from costguard.engine import ReservePlan
from costguard.model import Money, Unit, to_micros

if TYPE_CHECKING:
    from costguard.guard import FeatureSettings, Guard

__all__ = ["AsyncReserveContext", "Reservation"]


class Reservation:
    """Returned by `guard.reserve(...)`: commit the actual cost, or release; settling twice is a no-op."""

    def __init__(
        self, guard: Guard, plan: ReservePlan, decision: Decision, settings: FeatureSettings, *, stored: bool = True
    ) -> None:
        self.guard = guard
        self.plan = plan
        self.decision = decision
        self.settings = settings
        self.stored = stored
        self.cost = _ctx.CallCost(pricing=guard.pricing)
        self.settled = False
        self._tokens: list[tuple[Token[Decision | None], Token[_ctx.CallCost | None]]] = []

    @property
    def id(self) -> str:
        """The reservation id (commits and releases by id are idempotent)."""
        return self.plan.reservation_id

    def amount(self, unit: Unit) -> int:
        """What was reserved in `unit` (the largest across counters; all counters of a unit hold the same)."""
        return max((op.amount for op in self.plan.counters if op.unit is unit), default=0)

    def commit(self, usd: Money | None = None, *, tokens: int | None = None) -> None:
        """Record the actual cost (default: the estimate) plus anything `charge()`d; once only."""
        if self.settled:
            return
        self._commit_micros(None if usd is None else to_micros(usd, round_up=False, what="actual cost"), tokens)

    def _commit_micros(self, usd_micros: int | None, tokens: int | None) -> None:
        if self.settled:
            return
        self.settled = True
        actual, record = self.guard._settle_args(self, usd_micros, tokens, self.cost.charged_micros)
        self.guard._settle(self, actual, record)

    def release(self, why: str = "released") -> None:
        """Give the reservation back without charging; once only."""
        if self.settled:
            return
        self.settled = True
        if self.cost.charged_micros:
            # Money already spent through charge() is never given back.
            actual, record = self.guard._settle_args(self, 0, 0, self.cost.charged_micros)
            self.guard._settle(self, actual, record)
            return
        self.guard._settle(self, None, self.guard._release_record(self, why))

    async def acommit(self, usd: Money | None = None, *, tokens: int | None = None) -> None:
        """Async `commit`."""
        if self.settled:
            return
        await self._acommit_micros(None if usd is None else to_micros(usd, round_up=False, what="actual cost"), tokens)

    async def _acommit_micros(self, usd_micros: int | None, tokens: int | None) -> None:
        if self.settled:
            return
        self.settled = True
        actual, record = self.guard._settle_args(self, usd_micros, tokens, self.cost.charged_micros)
        await self.guard._asettle(self, actual, record)

    async def arelease(self, why: str = "released") -> None:
        """Async `release`."""
        if self.settled:
            return
        self.settled = True
        if self.cost.charged_micros:
            actual, record = self.guard._settle_args(self, 0, 0, self.cost.charged_micros)
            await self.guard._asettle(self, actual, record)
            return
        await self.guard._asettle(self, None, self.guard._release_record(self, why))

    def _failed_policy(self) -> str:
        return self.settings.on_call_error or self.guard.on_call_error

    # A `with` block makes the reservation current, so charge() and current_decision() see it.
    def _push(self) -> None:
        self._tokens.append((_ctx._decision.set(self.decision), _ctx._call.set(self.cost)))

    def _pop(self) -> None:
        decision_token, call_token = self._tokens.pop()
        _ctx._call.reset(call_token)
        _ctx._decision.reset(decision_token)

    def __enter__(self) -> Reservation:
        self._push()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pop()
        if exc_type is None or self._failed_policy() == "keep":
            self.commit()
        else:
            self.release("call raised")

    async def __aenter__(self) -> Reservation:
        self._push()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pop()
        if exc_type is None or self._failed_policy() == "keep":
            await self.acommit()
        else:
            await self.arelease("call raised")


class AsyncReserveContext:
    """`async with guard.areserve(...) as r:` — reserves on entry without blocking the event loop."""

    def __init__(
        self,
        guard: Guard,
        feature: str,
        labels: Mapping[str, object],
        estimate_usd: Money | None,
        estimate_tokens: int | None,
    ) -> None:
        self._args = (guard, feature, labels, estimate_usd, estimate_tokens)
        self.reservation: Reservation | None = None

    def __await__(self) -> Generator[Any, None, Reservation]:
        guard, feature, labels, estimate_usd, estimate_tokens = self._args
        return guard._areserve(feature, labels, estimate_usd, estimate_tokens).__await__()

    async def __aenter__(self) -> Reservation:
        guard, feature, labels, estimate_usd, estimate_tokens = self._args
        self.reservation = await guard._areserve(feature, labels, estimate_usd, estimate_tokens)
        return await self.reservation.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.reservation is not None
        await self.reservation.__aexit__(exc_type, exc, tb)
