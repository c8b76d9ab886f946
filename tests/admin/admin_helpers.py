"""Admin API test helpers: tokens of every role, a guard with spend on a few ceilings, and fixtures.

The fixtures live here, not in a conftest.py: another conftest.py would be imported under the module
name `conftest` too, and shadow the one tests import helpers from. Test modules import them by their
function names (`guard_fixture`, `client_fixture`); pytest knows them as `guard` and `client`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from costguard import Guard
from costguard.admin import app
from costguard.testing import FakeClock
from helpers import START, make_guard, usd_ceiling

TOKENS = {
    "admin": "adm-0123456789abcdef0123456789abcdef",
    "operator": "opr-0123456789abcdef0123456789abcdef",
    "read": "rdo-0123456789abcdef0123456789abcdef",
    "acme": "acm-0123456789abcdef0123456789abcdef",
    "acme-op": "aco-0123456789abcdef0123456789abcdef",
}
ADMIN_CONFIG: dict[str, Any] = {
    "tokens": [
        {"name": "ops-admin", "token": TOKENS["admin"], "role": "admin"},
        {"name": "ops-operator", "token": TOKENS["operator"], "role": "operator"},
        {"name": "finance", "token": TOKENS["read"], "role": "read"},
        {"name": "acme-admin", "token": TOKENS["acme"], "role": "admin", "tenant": "acme"},
        {"name": "acme-operator", "token": TOKENS["acme-op"], "role": "operator", "tenant": "acme"},
    ],
    "max_limit_usd": 1000,
}


def bearer(who: str) -> dict[str, str]:
    """The Authorization header of one of the configured tokens."""
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def spend(guard: Guard, feature: str, usd: float, **labels: str) -> None:
    """Record one call of `usd` against `feature` with `labels`."""
    with guard.reserve(feature, estimate_usd=usd, **labels) as reservation:
        reservation.commit(usd)


def build_guard(clock: FakeClock | None = None, store: Any = "memory://") -> Guard:
    """support_agent $100/month and $10/day, $50/month per customer, acme at $45 of that; others too."""
    guard = make_guard(
        usd_ceiling({"feature": "support_agent"}, month=100.0, day=10.0),
        usd_ceiling({"customer": "*"}, month=50.0),
        usd_ceiling({"tenant": "*"}, month=500.0),
        store=store,
        clock=clock or FakeClock(START),
    )
    return spend_the_usual(guard)


def spend_the_usual(guard: Guard) -> Guard:
    """$8.50 for acme and $1 for globex on support_agent, $2 on doc_search for tenant acme; flushed."""
    spend(guard, "support_agent", 4.5, customer="acme")
    spend(guard, "support_agent", 4.0, customer="acme")
    spend(guard, "support_agent", 1.0, customer="globex")
    spend(guard, "doc_search", 2.0, tenant="acme")
    guard.flush()
    return guard


@pytest.fixture(name="guard")
def guard_fixture() -> Iterator[Guard]:
    """A fresh `build_guard()`, closed afterwards."""
    built = build_guard()
    yield built
    built.close()


@pytest.fixture(name="client")
def client_fixture(guard: Guard) -> TestClient:
    """A test client of the admin app for `guard`, with every token of `ADMIN_CONFIG`."""
    return TestClient(app(guard, admin=ADMIN_CONFIG))
