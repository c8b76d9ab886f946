"""Admin API fixtures: a guard with spend on a few ceilings and a test client with tokens of every role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from admin_helpers import ADMIN_CONFIG, build_guard
from fastapi.testclient import TestClient

from costguard import Guard
from costguard.admin import app


@pytest.fixture
def guard() -> Iterator[Guard]:
    built = build_guard()
    yield built
    built.close()


@pytest.fixture
def client(guard: Guard) -> TestClient:
    return TestClient(app(guard, admin=ADMIN_CONFIG))
