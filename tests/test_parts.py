"""The Guard's parts on their own: the step drivers, the control view, the call path's I/O, the settler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from costguard import KillSwitchActive, StoreUnavailable
from costguard.callpath import CallPath
from costguard.control import ControlView
from costguard.reporting import Reporter
from costguard.steps import Io, Steps, arun, run
from costguard.stores import MemoryStore
from costguard.testing import FakeClock
from helpers import START, make_guard, usd_ceiling


# ----------------------------------------------------------------- steps: one source, two drivers
def _double_or_default(fail: bool) -> Steps[int]:
    async def aget() -> int:
        if fail:
            raise StoreUnavailable("down")
        return 21

    def get() -> int:
        if fail:
            raise StoreUnavailable("down")
        return 21

    try:
        value = yield Io(get, aget)
    except StoreUnavailable:
        return -1
    return value * 2


def test_the_same_steps_run_sync_and_async_with_results_and_errors_sent_back() -> None:
    assert run(_double_or_default(False)) == 42
    assert asyncio.run(arun(_double_or_default(False))) == 42
    assert run(_double_or_default(True)) == -1  # the exception was thrown into the step, which handled it
    assert asyncio.run(arun(_double_or_default(True))) == -1


def test_an_exception_the_step_does_not_handle_reaches_the_caller() -> None:
    def steps() -> Steps[None]:
        yield Io(lambda: 1 / 0, lambda: asyncio.sleep(0, result=1 / 0))

    with pytest.raises(ZeroDivisionError):
        run(steps())


def test_the_async_driver_awaits_and_the_sync_one_calls() -> None:
    seen: list[str] = []

    async def aread() -> str:
        seen.append("awaited")
        return "a"

    def read() -> str:
        seen.append("called")
        return "s"

    def steps() -> Steps[str]:
        first = yield Io(read, aread)
        second = yield Io(read, aread)
        return first + second

    assert run(steps()) == "ss"
    assert asyncio.run(arun(steps())) == "aa"
    assert seen == ["called", "called", "awaited", "awaited"]


# ----------------------------------------------------------------- the control view
class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.control_reads = 0
        self.down = False

    def control(self):  # type: ignore[no-untyped-def]
        self.control_reads += 1
        if self.down:
            raise StoreUnavailable("down (test)")
        return super().control()


def _view(store: CountingStore, clock: FakeClock) -> ControlView:
    reporter = Reporter(store, [], clock=clock, queue_size=10, group_s=None)
    return ControlView(store, [usd_ceiling({"feature": "f"}, day=1.0)], reporter, ttl_s=0.5, deadline_s=1.0)


def test_the_control_view_reads_the_store_once_per_ttl_and_again_when_invalidated() -> None:
    store, clock = CountingStore(), FakeClock(START)
    view = _view(store, clock)
    for _ in range(5):
        run(view.refresh(clock()))
    assert store.control_reads == 1
    clock.advance(0.5)
    run(view.refresh(clock()))
    assert store.control_reads == 2
    view.invalidate()
    run(view.refresh(clock()))
    assert store.control_reads == 3


def test_the_control_view_keeps_a_switch_it_saw_while_the_store_is_down() -> None:
    store, clock = CountingStore(), FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), store=store, clock=clock)
    guard.killswitch.activate("runaway loop", scope="feature:f")
    view = _view(store, clock)
    state = run(view.refresh(clock()))
    assert view.switch_for(state, {"feature": "f"}) is not None
    store.down = True
    clock.advance(10)
    state = run(view.refresh(clock()))
    assert not state.ok
    switch = view.switch_for(state, {"feature": "f"})
    assert switch is not None and switch.reason == "runaway loop"  # fail-closed from known-active


def test_before_the_first_read_calls_are_planned_with_the_configs_ceilings() -> None:
    store, clock = CountingStore(), FakeClock(START)
    store.down = True
    view = _view(store, clock)
    state = run(view.refresh(clock()))
    assert state.control is None and [c.id for c in state.ceilings] == [c.id for c in view.ceilings]


# ----------------------------------------------------------------- the call path's I/O, step by step
def _ios(calls: CallPath, steps: Steps[object]) -> Iterator[str]:
    """Drive `steps` by hand and name each store call it asks for."""
    result: object = None
    try:
        io = next(steps)
        while True:
            name = getattr(io.sync, "__qualname__", "")
            yield name
            result = io.call()
            io = steps.send(result)
    except StopIteration:
        return


def test_a_guarded_call_on_a_warm_view_asks_the_store_once() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    guard.check("f")  # warms the control view
    asked = list(_ios(guard.calls, guard.calls.reserve("f", {}, 0.01, None)))
    assert asked == ["MemoryStore.reserve"]


def test_the_call_path_refuses_a_kill_switched_call_with_the_operators_reason() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    guard.killswitch.activate("vendor incident #42", scope="feature:f")
    with pytest.raises(KillSwitchActive) as caught:
        run(guard.calls.reserve("f", {}, 0.01, None))
    assert caught.value.reason == "vendor incident #42"
    assert caught.value.scope == {"feature": "f"}


def test_killswitch_covering_is_the_public_check_the_web_integrations_use() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    assert guard.killswitch.covering({"customer": "acme"}) is None
    guard.killswitch.activate("abuse", scope="customer:acme")
    switch = guard.killswitch.covering({"customer": "acme"})
    assert switch is not None and switch.reason == "abuse"
    assert asyncio.run(guard.killswitch.acovering({"customer": "acme"})) == switch
    assert guard.killswitch.covering({"customer": "other"}) is None


# ----------------------------------------------------------------- the settler
def test_a_reservation_settles_through_its_settler_without_the_guard() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    reservation = guard.reserve("f", estimate_usd=0.05)
    assert reservation.settler is guard.settler
    assert not hasattr(reservation, "guard")
    reservation.cost.charged_micros = 7_900  # a charge() made during the call
    reservation.release("call raised")  # what was charged is kept: committed, not released
    assert guard.status("f").ceilings[0].spent == pytest.approx(0.0079)


def test_commit_and_acommit_are_one_path() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    guard.reserve("f", estimate_usd=0.05).commit(0.02)

    async def main() -> None:
        async with guard.areserve("f", estimate_usd=0.05) as r:
            await r.acommit(0.03)

    asyncio.run(main())
    assert guard.status("f").ceilings[0].spent == pytest.approx(0.05)
    committed = [r.data["actual_usd"] for r in guard.audit(decision="commit")]
    assert sorted(committed) == [0.02, 0.03]
