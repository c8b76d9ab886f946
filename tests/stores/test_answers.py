"""An error the server itself sent is an answer: the store is alive and taking requests, so a deadline
that passes meanwhile is overload (`store_busy`), not an outage. A lost connection, a server out of
resources or going down is no answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import exceptions as rx
from sqlalchemy import exc as sa_exc

from costguard.errors import StoreBusy, StoreTimeout
from costguard.stores._redis_clients import amapped as redis_amapped
from costguard.stores._redis_clients import mapped as redis_mapped
from costguard.stores._redis_conn import busy_answer
from costguard.stores._sql_conn import mapped, server_answered


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def dbapi_error(message: str, sqlstate: str | None) -> sa_exc.DBAPIError:
    return sa_exc.OperationalError("SELECT 1", None, DriverError(message, sqlstate))


@pytest.mark.parametrize(
    ("sqlstate", "answered"),
    [
        ("55P03", True),  # lock timeout
        ("57014", True),  # statement timeout
        ("40P01", True),  # deadlock victim
        ("23505", True),  # a constraint: the server ran the statement
        (None, False),  # the connection failed: no SQLSTATE
        ("08006", False),  # connection failure
        ("53300", False),  # its connection limit: DESIGN says on_store_error decides
        ("57P01", False),  # shutting down
        ("57P03", False),  # not yet accepting connections
    ],
)
def test_which_sql_errors_are_the_servers_answers(sqlstate: str | None, answered: bool) -> None:
    assert server_answered(dbapi_error("x", sqlstate)) is answered


class FakeSQLStore:
    answered_at = float("-inf")

    def __init__(self, error: BaseException) -> None:
        self.error = error

    @mapped
    def reserve(self) -> Any:
        raise self.error


def test_a_lock_timeout_is_noted_as_an_answer_and_a_lost_connection_is_not() -> None:
    before = time.monotonic()
    answered = FakeSQLStore(dbapi_error("canceling statement due to lock timeout", "55P03"))
    with pytest.raises(StoreBusy):
        answered.reserve()
    assert answered.answered_at >= before
    lost = FakeSQLStore(dbapi_error("server closed the connection unexpectedly", None))
    with pytest.raises(StoreTimeout):
        lost.reserve()
    assert lost.answered_at == float("-inf")


@pytest.mark.parametrize(
    ("error", "answered"),
    [
        (rx.ResponseError("BUSY Redis is busy running a script."), True),
        (rx.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), True),
        (rx.ResponseError("READONLY You can't write against a read only replica."), False),
        (rx.ResponseError("CLUSTERDOWN The cluster is down"), False),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), False),
        (rx.ConnectionError("Connection refused"), False),
        (rx.TimeoutError("Timeout reading from socket"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_which_redis_errors_are_the_servers_answers(error: Exception, answered: bool) -> None:
    assert busy_answer(error) is answered


class FakeRedisClients:
    answered_at = float("-inf")
    where = "127.0.0.1:6379"

    def __init__(self, error: BaseException) -> None:
        from costguard.stores._redis_conn import Breaker

        self._breaker = Breaker(1.0, self.where)
        self.error = error

    @redis_mapped
    def evalsha(self) -> Any:
        raise self.error

    @redis_amapped
    async def aevalsha(self) -> Any:
        raise self.error


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_busy_redis_reply_is_noted_as_an_answer_and_a_timeout_is_not(sync: bool) -> None:
    import asyncio

    def call(clients: FakeRedisClients) -> None:
        if sync:
            clients.evalsha()
        else:
            asyncio.run(clients.aevalsha())

    before = time.monotonic()
    busy = FakeRedisClients(rx.ResponseError("BUSY Redis is busy running a script."))
    with pytest.raises(StoreBusy):
        call(busy)
    assert busy.answered_at >= before
    silent = FakeRedisClients(rx.TimeoutError("Timeout reading from socket"))
    with pytest.raises(StoreTimeout):
        call(silent)
    assert silent.answered_at == float("-inf")
