"""The SQL store's schema: its five tables under one table prefix, the PostgreSQL server functions
(`pg/functions.sql`), and installing them on first use or dropping them.
"""

from __future__ import annotations

import functools
import re
import threading
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib import resources

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import SchemaItem

__all__ = ["FUNCTIONS", "PREFIX", "Schema", "functions_sql", "tables"]

PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,40}")

# The server functions' signatures, for dropping them.
FUNCTIONS = (
    "reserve(jsonb)",
    "settle(jsonb)",
    "claim(jsonb, bigint, bigint, text[], boolean, integer, jsonb)",
    "shown(bigint, text)",
    "ceilings(jsonb, bigint[])",
    "audit(jsonb, integer, jsonb, bigint)",
    "fired_text(text[])",
)


def _keyed(name: str, meta: sa.MetaData, *items: SchemaItem) -> sa.Table:
    """A table whose primary key is a text `key`."""
    return sa.Table(name, meta, sa.Column("key", sa.Text, primary_key=True), *items)


def tables(prefix: str) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    """The tables of one prefix: counters, reservations, events (the audit log), control and cache."""
    meta = sa.MetaData()
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
    t = {
        "counters": _keyed(
            f"{prefix}counters",
            meta,
            sa.Column("ceiling_id", sa.Text, nullable=False),
            sa.Column("scope", sa.Text, nullable=False),
            sa.Column("period", sa.String(8), nullable=False),
            sa.Column("unit", sa.String(8), nullable=False),
            sa.Column("bucket", sa.String(40), nullable=False),
            sa.Column("committed", sa.BigInteger, nullable=False),
            sa.Column("reserved", sa.BigInteger, nullable=False),
            sa.Column("fired", sa.Text, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=True),
            # The first call admitted under a `ttl` (null until then, and for counters without one).
            sa.Column("first_at", sa.Float, nullable=True),
            sa.Index(f"{prefix}counters_bucket", "period", "bucket"),
            sa.Index(f"{prefix}counters_expiry", "expires_at"),
        ),
        "reservations": sa.Table(
            f"{prefix}reservations",
            meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("settled", sa.Boolean, nullable=False),
            sa.Column("counters", sa.Text, nullable=False),
            sa.Index(f"{prefix}reservations_at", "settled", "at"),
        ),
        "events": sa.Table(
            f"{prefix}events",
            meta,
            sa.Column("id", big, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("decision", sa.String(32), nullable=False),
            sa.Column("feature", sa.Text, nullable=True),
            sa.Column("customer", sa.Text, nullable=True),
            sa.Column("reservation_id", sa.String(64), nullable=True),
            sa.Column("labels", sa.Text, nullable=False),
            sa.Column("data", sa.Text, nullable=False),
            sa.Index(f"{prefix}events_at", "at"),
            sa.Index(f"{prefix}events_feature", "feature", "id"),
        ),
        "control": _keyed(
            f"{prefix}control",
            meta,
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("value", sa.Text, nullable=False),
        ),
        "cache": _keyed(
            f"{prefix}cache",
            meta,
            sa.Column("value", sa.LargeBinary, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        ),
    }
    return meta, t


@functools.lru_cache(maxsize=16)
def functions_sql(prefix: str) -> str:
    """The server functions for a table prefix (validated: letters, digits and `_`)."""
    source = resources.files("costguard.stores").joinpath("pg/functions.sql").read_text("utf-8")
    return source.replace("{p}", prefix)


class Schema:
    """The tables of one prefix (and on PostgreSQL its server functions), installed once per process.

    They are created on first use, not when the store is opened, so a cold start with the database
    down follows `on_store_error` instead of raising.
    """

    def __init__(self, prefix: str, *, postgres: bool) -> None:
        self.prefix = prefix
        self.postgres = postgres
        self.meta, self.t = tables(prefix)
        self._lock = threading.Lock()
        self._ready = False

    def ensure(self, begin: Callable[[], AbstractContextManager[Connection]]) -> None:
        """Install the schema in a transaction `begin` opens, unless this process already has."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    with begin() as conn:
                        self._install(conn)
                    self._ready = True

    def _install(self, conn: Connection) -> None:
        if self.postgres:
            # Several processes may start at once; one creates, the others wait here.
            lock_id = zlib.crc32(self.prefix.encode()) & 0x7FFFFFFF
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
        self.meta.create_all(conn, checkfirst=True)
        self._add_columns(conn)
        if self.postgres:
            conn.exec_driver_sql(functions_sql(self.prefix))

    def _add_columns(self, conn: Connection) -> None:
        """Columns added since a database's tables were created (nullable: existing rows read null), so
        a database of an earlier version is brought up to date when a new one first uses it."""
        inspector = sa.inspect(conn)
        for table in self.meta.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")

    def drop(self, begin: Callable[[], AbstractContextManager[Connection]]) -> None:
        """Remove the tables (and functions) in a transaction `begin` opens: every counter, reservation,
        audit record and setting is gone; the next use installs them again."""
        with begin() as conn:
            self.meta.drop_all(conn, checkfirst=True)
            if self.postgres:
                for signature in FUNCTIONS:
                    conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {self.prefix}{signature}")
        self._ready = False
