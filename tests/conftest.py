"""Shared fixtures: one table of stores drives every contract test (real services by marker)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from costguard.stores import Store, open_store

IN_CI = os.environ.get("CI", "").lower() == "true"


def service_url(env: str, what: str) -> str:
    """A real service's URL from the environment; skipped locally when unset, a failure in CI."""
    url = os.environ.get(env)
    if not url:
        if IN_CI:
            pytest.fail(f"{env} must be set when CI=true: {what} tests may not skip in CI")
        pytest.skip(f"set {env} to run the {what} tests")
    return url


def store_url_for(kind: str, tmp_path: Path) -> str:
    """A fresh, isolated store URL of the given kind."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'costguard.db'}"
    if kind == "postgres":
        base = service_url("COSTGUARD_TEST_POSTGRES_URL", "PostgreSQL")
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}prefix=t{uuid.uuid4().hex[:10]}_"
    raise AssertionError(kind)


def drop_tables(url: str) -> None:
    """Remove a test's PostgreSQL tables (each test has its own prefix)."""
    from costguard.stores.sql import SQLStore

    store = open_store(url)
    assert isinstance(store, SQLStore)
    store.meta.drop_all(store.engine)
    store.close()


STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
SHARED_STORE_KINDS = STORE_KINDS[1:]  # stores several processes can share


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store kind in turn, isolated per test."""
    url = store_url_for(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_tables(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store of each kind."""
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture(params=SHARED_STORE_KINDS)
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Stores that several processes share (SQLite file, PostgreSQL)."""
    url = store_url_for(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_tables(url)
