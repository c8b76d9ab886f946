"""The fake vendor API on loopback, fresh for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_llm import FakeLLM


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    """A fresh fake vendor API per test (its `reported` usage is that test's alone)."""
    server = FakeLLM().start()
    yield server
    server.stop()
