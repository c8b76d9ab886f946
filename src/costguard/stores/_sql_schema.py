"""The SQL store's schema: its five tables under one table prefix, the PostgreSQL server functions
(`pg/functions.sql`), and installing them on first use or dropping them.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import SchemaItem

__all__ = ["FUNCTIONS", "PREFIX", "Schema", "functions_sql", "schema_fingerprint", "tables"]

PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,40}")

# The server functions' signatures, for dropping them.
FUNCTIONS = (
    "reserve_many(jsonb)",
    "settle_many(jsonb)",
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
            # The part of `reserved` live slices hold, and how many (null: none, in a database of an
            # earlier version).
            sa.Column("leased", sa.BigInteger, nullable=True),
            sa.Column("holders", sa.BigInteger, nullable=True),
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


@functools.lru_cache(maxsize=16)
def schema_fingerprint(prefix: str) -> str:
    """What this version installs under a prefix, in one string: its tables' columns and its server
    functions. Kept as the comment of `<prefix>reserve`, so a database that has it needs nothing."""
    meta, _ = tables(prefix)
    shape = [(t.name, [(c.name, repr(c.type), c.nullable) for c in t.columns]) for t in meta.sorted_tables]
    digest = hashlib.sha256(repr(shape).encode() + functions_sql(prefix).encode()).hexdigest()[:32]
    return f"costguard schema {digest}"


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
            # A database this version already set up answers with its fingerprint: one read, no lock,
            # no DDL. Replacing the functions anyway would make every server process running them
            # compile them again, and a fleet starting at once queue on the lock below mid-burst.
            if self._installed(conn):
                return
            # Several processes may start at once; one creates, the others wait here.
            lock_id = zlib.crc32(self.prefix.encode()) & 0x7FFFFFFF
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
            if self._installed(conn):
                return
        self.meta.create_all(conn, checkfirst=True)
        self._add_columns(conn)
        if self.postgres:
            conn.exec_driver_sql(functions_sql(self.prefix))
            # Written last, in the same transaction: seen only once everything above is in place.
            conn.exec_driver_sql(
                f"COMMENT ON FUNCTION {self.prefix}reserve(jsonb) IS '{schema_fingerprint(self.prefix)}'"
            )

    def _installed(self, conn: Connection) -> bool:
        """Whether the database holds exactly this version's tables and functions (PostgreSQL)."""
        found = conn.execute(
            sa.text("SELECT obj_description(to_regprocedure(:function), 'pg_proc')"),
            {"function": f"{self.prefix}reserve(jsonb)"},
        ).scalar()
        return bool(found == schema_fingerprint(self.prefix))

    def _add_columns(self, conn: Connection) -> None:
        """Columns added since a database's tables were created (nullable: existing rows read null), so
        a database of an earlier version is brought up to date when a new one first uses it."""
        names = [table.name for table in self.meta.sorted_tables]
        columns: dict[str, set[str]] = {name: set() for name in names}
        rows: Iterable[Sequence[Any]]
        if self.postgres:  # one catalog query (the inspector makes several per table)
            rows = conn.execute(
                sa.text(
                    "SELECT c.relname, a.attname FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid"
                    " WHERE c.relname = ANY(:names) AND pg_table_is_visible(c.oid) AND a.attnum > 0"
                    " AND NOT a.attisdropped"
                ),
                {"names": names},
            )
        else:
            inspector = sa.inspect(conn)
            rows = ((name, column["name"]) for name in names for column in inspector.get_columns(name))
        for table_name, column_name in rows:
            columns[table_name].add(column_name)
        for table in self.meta.sorted_tables:
            present = columns[table.name]
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
