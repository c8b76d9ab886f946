"""Overload is not an outage: a reserve that runs out of its deadline while the store answers this
process's other calls is refused (`store_busy`), never admitted on the outage allowance — that is how a
slow reply would let a cap overshoot while every other process fills it exactly. A store that answers
nobody (down, frozen) still follows `on_store_error`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import drop_tables, store_url_for
from costguard import Blocked, Guard
from costguard.engine import ReserveOutcome, ReservePlan
from costguard.errors import StoreBusy, StoreError, StoreTimeout, StoreUnavailable
from costguard.events import AuditRecord
from costguard.stores.memory import MemoryStore
from helpers import make_guard, usd_ceiling

DEADLINE_MS = 150


class Slow(MemoryStore):
    """Reserves of feature `slow` get `error` (after applying them, for a timeout: the reply was lost);
    while `others` is set, a background caller keeps getting answers, as the rest of a busy process would."""

    remote = True

    def __init__(self, error: StoreError) -> None:
        super().__init__()
        self.error = error
        self.others = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._other_calls, daemon=True)
        self._thread.start()

    def _other_calls(self) -> None:
        while not self._stop.wait(0.005):
            if self.others.is_set():
                self.answered_at = time.monotonic()

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        if ("feature", "slow") in plan.labels:
            if isinstance(self.error, StoreTimeout):
                super().reserve(plan, record)  # applied; its reply never comes
            time.sleep(0.02)
            if self.others.is_set():  # another call of the process got its answer meanwhile (past the
                self.answered_at = time.monotonic()  # wait's first tenth, whatever the scheduler did)
            raise self.error
        outcome = super().reserve(plan, record)
        self.answered_at = time.monotonic()
        return outcome

    def close(self) -> None:
        self._stop.set()
        super().close()


@contextmanager
def slow_guard(error: StoreError, **options: object) -> Iterator[tuple[Guard, Slow]]:
    store = Slow(error)
    options.setdefault("store_deadline_ms", DEADLINE_MS)
    guard = make_guard(
        usd_ceiling({"feature": "slow"}, month=100.0),
        usd_ceiling({"feature": "fine"}, month=100.0),
        store=store,
        **options,
    )
    try:
        yield guard, store
    finally:
        guard.close()


@pytest.mark.parametrize(
    "error",
    [StoreTimeout("no reply (test)"), StoreBusy("lock wait (test)"), StoreUnavailable("connection timed out (test)")],
    ids=repr,
)
@pytest.mark.parametrize("policy", ["open", "closed"])
def test_a_store_that_answers_others_is_overloaded_and_the_call_is_refused(error: StoreError, policy: str) -> None:
    with slow_guard(error, on_store_error=policy) as (guard, store):
        store.others.set()
        with pytest.raises(Blocked) as refused:
            guard.reserve("slow", estimate_usd=0.3)
        decision = refused.value.decision
        assert decision.reason == "store_busy"
        assert "overloaded, not down" in decision.message and "store_deadline_ms" in decision.message
        assert guard.unrecorded_usd == 0.0  # nothing admitted without a reservation
        with guard.reserve("fine", estimate_usd=0.1) as ok:  # the rest of the store works
            ok.commit(0.1)
        store.error = StoreUnavailable("gone (test)")  # let the release of a lost reserve through
        assert guard.flush()
        rows = {row.labels["feature"]: row for row in guard.status().ceilings}
        assert (rows["slow"].spent, rows["slow"].reserved) == (0.0, 0.0)  # a timed-out reserve was released
        (blocked,) = guard.audit(decision="blocked")
        assert blocked.data["reason"] == "store_busy"


@pytest.mark.parametrize("error", [StoreTimeout("no reply (test)"), StoreUnavailable("refused (test)")], ids=repr)
def test_a_store_that_answers_nobody_is_an_outage_and_open_admits(error: StoreError) -> None:
    with slow_guard(error) as (guard, _store):
        with guard.reserve("slow", estimate_usd=0.3) as admitted:
            assert admitted.decision.reason == "store_error"  # open: admitted on the outage allowance
            admitted.commit(0.3)
        assert guard.unrecorded_usd == 0.3


def test_an_answer_from_the_start_of_the_wait_is_no_evidence_of_overload() -> None:
    """A reply already on its way when the server froze is read just after: no evidence it still answers."""
    with slow_guard(StoreTimeout("no reply (test)"), store_deadline_ms=400) as (guard, store):
        store.answered_at = time.monotonic() + 0.02  # read 20 ms into the wait
        with guard.reserve("slow", estimate_usd=0.3) as admitted:
            assert admitted.decision.reason == "store_error"
            admitted.release()


def test_a_store_that_answered_none_of_the_calls_is_asked_on_a_connection_of_its_own() -> None:
    """Every call of the process queued on one hot row, so none got an answer during the wait: a trivial
    request on the probe's own connection tells overload (it answers) from an outage (it doesn't)."""
    asked: list[float] = []
    with slow_guard(StoreTimeout("no reply (test)")) as (guard, store):

        def ping(timeout_s: float) -> bool:
            asked.append(timeout_s)
            store.answered_at = time.monotonic()
            return True

        store.ping = ping  # type: ignore[method-assign]
        with pytest.raises(Blocked) as refused:
            guard.reserve("slow", estimate_usd=0.3)
        assert refused.value.decision.reason == "store_busy"
        assert asked == [min(1.0, DEADLINE_MS / 1000)]  # as long as the deadline, at most 1 s
        assert guard.unrecorded_usd == 0.0


def test_an_error_the_store_answered_with_follows_the_policy_even_while_other_calls_answer() -> None:
    with slow_guard(StoreError("relation does not exist (test)")) as (guard, store):
        store.others.set()
        with guard.reserve("slow", estimate_usd=0.3) as admitted:
            assert admitted.decision.reason == "store_error"
            admitted.release()


def test_the_async_path_refuses_an_overloaded_reserve_too() -> None:
    with slow_guard(StoreTimeout("no reply (test)")) as (guard, store):
        store.others.set()

        async def main() -> str:
            try:
                async with guard.areserve("slow", estimate_usd=0.3):
                    return "admitted"
            except Blocked as blocked:
                return blocked.decision.reason

        assert asyncio.run(main()) == "store_busy"


def test_the_decorator_serves_the_fallback_and_the_web_reply_is_503_store_busy() -> None:
    from costguard._web import blocked_reply

    with slow_guard(StoreBusy("lock wait (test)")) as (guard, store):
        store.others.set()

        @guard.with_kill_switch("slow", estimate=0.3, fallback="later")
        def call() -> str:
            return "answer"

        assert call() == "later"
        try:
            guard.reserve("slow", estimate_usd=0.3)
        except Blocked as blocked:
            reply = blocked_reply(blocked)
        assert reply.status == 503 and reply.body["code"] == "store_busy"
        assert ("Retry-After", "1") in reply.headers


@pytest.mark.postgres
@pytest.mark.parametrize("others", [True, False], ids=["others-answered", "nothing-else-answered"])
def test_a_postgres_counter_row_locked_past_the_deadline_is_refused_never_admitted(
    tmp_path: Path, others: bool
) -> None:
    """A real overload: another session holds the feature's counter row (a long transaction, a slow
    backend) while this process's calls on another feature keep getting answers. The call on the locked
    row is refused `store_busy` after the deadline — before, it was admitted on the outage allowance,
    past any cap the rest of the fleet was filling. The server itself ends the lock wait within the
    deadline ("lock timeout": nothing applied, the connection kept), so the watchdog cuts no connection
    and no liveness check is needed: the server's answer says it is alive."""
    import psycopg

    from costguard.stores import _watchdog

    url = store_url_for("postgres", tmp_path)
    guard = Guard(
        url,
        ceilings=[usd_ceiling({"feature": "locked"}, month=100.0), usd_ceiling({"feature": "fine"}, month=100.0)],
        store_deadline_ms=600,
        notifiers=[],
    )
    try:
        with guard.reserve("locked", estimate_usd=0.1) as first:  # its counter row exists from here on
            first.commit(0.1)
        stop = threading.Event()

        def other_calls() -> None:
            while not stop.is_set():
                with guard.reserve("fine", estimate_usd=0.01) as r:
                    r.commit(0.01)

        prefix = url.rsplit("prefix=", 1)[1]
        pings: list[float] = []
        guard.store.ping = pings.append  # type: ignore[assignment,method-assign]  # None: not alive
        cuts = _watchdog.fired()
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]) as holder:
            holder.execute(f"SELECT 1 FROM {prefix}counters WHERE scope LIKE %s FOR UPDATE", ("%locked%",))
            thread = threading.Thread(target=other_calls, daemon=True)
            if others:  # else the probe's own connection is the only evidence the server is alive
                thread.start()
            try:
                started = time.monotonic()
                with pytest.raises(Blocked) as refused:
                    guard.reserve("locked", estimate_usd=0.1)
                took = time.monotonic() - started
            finally:
                stop.set()
                if others:
                    thread.join()
            holder.rollback()
        assert refused.value.decision.reason == "store_busy"
        assert took < 1.5, took  # the deadline, and scheduling on a loaded machine
        assert (pings, _watchdog.fired() - cuts) == ([], 0)
        assert guard.unrecorded_usd == 0.0
        assert guard.flush()
        rows = {row.labels["feature"]: row for row in guard.status().ceilings}
        assert (rows["locked"].spent, rows["locked"].reserved) == (0.1, 0.0)
    finally:
        guard.close()
        drop_tables(url)
