"""A reservation held while the guarded call runs; settles once, by commit or release, through its settler."""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextvars import Token
from types import TracebackType
from typing import Any, Protocol

from costguard import current as _ctx
from costguard.decision import Decision
from costguard.engine import ReservePlan, Take
from costguard.model import Money, Unit, check_count, to_micros
from costguard.pricing import Pricing
from costguard.settings import CallErrorPolicy, FeatureSettings
from costguard.steps import Steps, arun, nothing, run

__all__ = ["AsyncReserveContext", "Reservation", "Settles"]


class Settles(Protocol):
    """What a reservation settles through (`costguard.settler.Settler`)."""

    pricing: Pricing
    on_call_error: CallErrorPolicy

    def commit(self, reservation: Reservation, usd_micros: int | None, tokens: int | None) -> Steps[None]:
        """Steps: record the actual cost (None: the estimate) plus what the call `charge()`d."""
        ...

    def release(self, reservation: Reservation, why: str) -> Steps[None]:
        """Steps: give the reservation back (what was `charge()`d is kept)."""
        ...


class Reservation:
    """Returned by `guard.reserve(...)`: commit the actual cost, or release; settling twice is a no-op."""

    def __init__(
        self,
        plan: ReservePlan,
        decision: Decision,
        settings: FeatureSettings,
        settler: Settles,
        *,
        stored: bool = True,
        local: Take | None = None,
    ) -> None:
        self.plan = plan
        self.decision = decision
        self.settings = settings
        self.settler = settler
        self.stored = stored
        self.local = local  # what slices of leased counters covered (`costguard.leasing`)
        self.cost = _ctx.CallCost(pricing=settler.pricing)
        self.settled = False
        self._tokens: list[tuple[Token[Decision | None], Token[_ctx.CallCost | None]]] = []

    @property
    def id(self) -> str:
        """The reservation id (commits and releases by id are idempotent)."""
        return self.plan.reservation_id

    def amount(self, unit: Unit) -> int:
        """What was reserved in `unit` (the largest across counters; all counters of a unit hold the same)."""
        most = 0
        for op in self.plan.counters:  # a loop, not max(genexpr): this runs on every commit
            if op.unit is unit and op.amount > most:
                most = op.amount
        return most

    # ----------------------------------------------------------------- settling, written once as steps
    def commit_steps(self, usd_micros: int | None = None, tokens: int | None = None) -> Steps[None]:
        """Steps of `commit` with the cost in micro-dollars (None: the estimate); settled from this call on."""
        if self.settled:
            return nothing()
        self.settled = True
        return self.settler.commit(self, usd_micros, tokens)

    def release_steps(self, why: str = "released") -> Steps[None]:
        """Steps of `release`; settled from this call on."""
        if self.settled:
            return nothing()
        self.settled = True
        return self.settler.release(self, why)

    def failed_steps(self) -> Steps[None]:
        """Steps for a call that raised: released, or committed when the feature's `on_call_error` is `keep`."""
        if (self.settings.on_call_error or self.settler.on_call_error) == "keep":
            return self.commit_steps()
        return self.release_steps("call raised")

    # ----------------------------------------------------------------- the public faces
    def commit(self, usd: Money | None = None, *, tokens: int | None = None) -> None:
        """Record the actual cost (default: the estimate) plus anything `charge()`d; once only.

        A cost that is not a valid amount (negative, NaN, not a number) records the estimate — the call
        ran, it never costs $0 — and then raises `ValueError`.
        """
        if not self.settled:
            run(self._checked_commit(usd, tokens))

    async def acommit(self, usd: Money | None = None, *, tokens: int | None = None) -> None:
        """Async `commit`."""
        if not self.settled:
            await arun(self._checked_commit(usd, tokens))

    def _checked_commit(self, usd: Money | None, tokens: int | None) -> Steps[None]:
        try:
            micros = _micros(usd)
            counted = None if tokens is None else check_count(tokens, what="tokens")
        except (TypeError, ValueError):
            yield from self.commit_steps()  # the estimate stands, then the caller hears of the bad value
            raise
        yield from self.commit_steps(micros, counted)

    def release(self, why: str = "released") -> None:
        """Give the reservation back without charging; once only."""
        run(self.release_steps(why))

    async def arelease(self, why: str = "released") -> None:
        """Async `release`."""
        await arun(self.release_steps(why))

    # A `with` block makes the reservation current, so charge() and current_decision() see it.
    def _push(self) -> None:
        self._tokens.append((_ctx._decision.set(self.decision), _ctx._call.set(self.cost)))

    def _pop(self) -> None:
        decision_token, call_token = self._tokens.pop()
        _ctx._call.reset(call_token)
        _ctx._decision.reset(decision_token)

    def _exit_steps(self, failed: bool) -> Steps[None]:
        self._pop()
        return self.failed_steps() if failed else self.commit_steps()

    def __enter__(self) -> Reservation:
        self._push()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        run(self._exit_steps(exc_type is not None))

    async def __aenter__(self) -> Reservation:
        self._push()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await arun(self._exit_steps(exc_type is not None))


def _micros(usd: Money | None) -> int | None:
    return None if usd is None else to_micros(usd, round_up=False, what="actual cost")


class AsyncReserveContext:
    """`async with guard.areserve(...) as r:` — reserves on entry without blocking the event loop."""

    def __init__(self, reserve: Callable[[], Steps[Reservation]]) -> None:
        self._reserve = reserve
        self.reservation: Reservation | None = None

    def __await__(self) -> Generator[Any, None, Reservation]:
        return arun(self._reserve()).__await__()

    async def __aenter__(self) -> Reservation:
        self.reservation = await arun(self._reserve())
        return await self.reservation.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.reservation is not None
        await self.reservation.__aexit__(exc_type, exc, tb)
