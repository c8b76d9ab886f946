"""Every count right: what a call records when it charges, and when it reports a cost that can't be used."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

import costguard
from costguard import Pricing
from helpers import make_guard, usd_ceiling


def _guard() -> costguard.Guard:
    return make_guard(
        usd_ceiling({"feature": "f"}, month=10.0), pricing=Pricing(units={"twilio_sms": Decimal("0.0079")})
    )


def _spent_and_reserved(guard: costguard.Guard) -> tuple[float, float]:
    (row,) = guard.status().ceilings
    return row.spent, row.reserved


def test_a_call_that_charges_records_its_charges_not_its_estimate_on_top() -> None:
    # docs/costs.md: estimate=0.05 and one SMS. The SMS is what the call cost: $0.0079, not $0.0579.
    guard = _guard()
    with guard.reserve("f", estimate_usd=0.05):
        costguard.charge_unit("twilio_sms", 1)
    assert _spent_and_reserved(guard) == (pytest.approx(0.0079), 0.0)

    @guard.with_kill_switch("f", estimate=0.05)
    def send() -> str:
        costguard.charge_unit("twilio_sms", 2)
        return "sent"

    assert send() == "sent"
    assert _spent_and_reserved(guard) == (pytest.approx(0.0079 * 3), 0.0)


def test_a_call_that_reports_nothing_keeps_its_estimate_and_a_priced_one_adds_its_charges() -> None:
    guard = _guard()
    with guard.reserve("f", estimate_usd=0.05):
        pass
    assert _spent_and_reserved(guard)[0] == pytest.approx(0.05)

    @guard.with_kill_switch("f", estimate=0.05, cost=0.01)
    def priced() -> None:
        costguard.charge(0.002, "search API")  # the model's price and the tool's: both known, both count

    priced()
    assert _spent_and_reserved(guard)[0] == pytest.approx(0.05 + 0.012)


def test_a_charge_of_zero_still_means_the_cost_is_known() -> None:
    guard = _guard()
    with guard.reserve("f", estimate_usd=0.05):
        costguard.charge(0, "free tier")
    assert _spent_and_reserved(guard) == (0.0, 0.0)


@pytest.mark.parametrize("bad", [-1, float("nan"), "abc"])
def test_an_invalid_commit_records_the_estimate_then_raises(bad: object) -> None:
    guard = _guard()
    with pytest.raises(ValueError), guard.reserve("f", estimate_usd=0.05) as r:
        r.commit(bad)  # type: ignore[arg-type]
    assert _spent_and_reserved(guard) == (pytest.approx(0.05), 0.0)  # never $0, nothing left reserved


def test_invalid_tokens_record_the_estimate_and_leave_nothing_reserved() -> None:
    guard = _guard()
    r = guard.reserve("f", estimate_usd=0.05)
    with pytest.raises(ValueError):
        r.commit(0.01, tokens=-3)
    assert r.settled
    assert _spent_and_reserved(guard) == (pytest.approx(0.05), 0.0)


def test_an_invalid_async_commit_records_the_estimate_then_raises() -> None:
    guard = _guard()

    async def main() -> None:
        async with guard.areserve("f", estimate_usd=0.05) as r:
            await r.acommit(-0.5)

    with pytest.raises(ValueError):
        asyncio.run(main())
    assert _spent_and_reserved(guard) == (pytest.approx(0.05), 0.0)


def test_a_decorator_with_a_bad_cost_records_the_estimate_then_raises() -> None:
    guard = _guard()

    @guard.with_kill_switch("f", estimate=0.05, cost=-0.5)
    def answer() -> str:
        return "hi"

    @guard.with_kill_switch("f", estimate=0.05, cost=lambda result: float("nan"))
    async def aanswer() -> str:
        return "hi"

    with pytest.raises(ValueError):
        answer()
    with pytest.raises(ValueError):
        asyncio.run(aanswer())
    assert _spent_and_reserved(guard) == (pytest.approx(0.10), 0.0)  # before: $0.10 left reserved forever
