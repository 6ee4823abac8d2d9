"""The history in PostgreSQL (psycopg 3, a small connection pool).

A batch is merged in one transaction: copied (``COPY``, times as epoch seconds) into a
temporary table, then moved with one ``INSERT ... SELECT ... ON CONFLICT (uuid) DO UPDATE``
whose update merges each row into the stored one in SQL (``sql.Dialect.merge``), in uuid order.
PostgreSQL locks a conflicting row and merges with its latest version, so two exporters writing
the same tasks at once leave one row each, nothing is read back and nothing is retried. The
schema is created under a transaction-scoped advisory lock, so exporters starting together
migrate once.

Credentials and TLS are libpq's: in the URL (``sslmode=verify-full&sslrootcert=...``), a
password file (``passfile=...`` or ``PGPASSFILE``) or the environment (``PGPASSWORD``,
``PGSSLMODE``...). The URL is logged without its password.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from celery_events_exporter.history.row import COLUMNS, TIME_COLUMNS, RowValues, TaskRow
from celery_events_exporter.history.sql import (
    FAILED_STATES,
    FREE_TEXT_INDEX,
    POSTGRESQL,
    SCHEMA_TABLE,
    SCHEMA_VERSION,
    TABLE,
    Erasure,
    HistoryQuery,
    encode_values,
    select_children,
    select_page,
)
from celery_events_exporter.history.store import (
    DELETE_BATCH,
    EXPIRE_BUDGET,
    ROUND,
    HistoryStore,
    HistoryUnavailable,
    Retention,
    delete_in_batches,
)
from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

MIGRATION_LOCK = 0x63656C657279  # "celery": the advisory lock key the migration holds
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 10.0
READ_WAIT = 3.0
"""Seconds an API read waits for a connection (the writer waits ``POOL_TIMEOUT``): past it the
database is taken for unavailable and the client gets a 503 at once, not after its own
timeout."""
_INCOMING = "celery_tasks_incoming"
"""The temporary table a batch is copied into: the table's columns, times in epoch seconds."""
_INCOMING_TYPES = [
    "DOUBLE PRECISION"
    if c in TIME_COLUMNS
    else "TEXT"
    if c == "events"
    else POSTGRESQL.column_type(c)
    for c in COLUMNS
]
_CREATE_INCOMING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_INCOMING} ("
    + ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _INCOMING_TYPES, strict=True))
    + ") ON COMMIT DELETE ROWS"
)
_COPY_INCOMING = f"COPY {_INCOMING} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
"""Binary: a float is sent as its 8 bytes, not formatted in Python and parsed again."""
_COPY_TYPES = [
    {"DOUBLE PRECISION": "float8", "INTEGER": "int4"}.get(t, "text") for t in _INCOMING_TYPES
]
"""What psycopg sends each incoming column as."""
_MERGE_INCOMING = (
    f"INSERT INTO {TABLE} AS t ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(
        f"to_timestamp({c})" if c in TIME_COLUMNS else "events::jsonb" if c == "events" else c
        for c in COLUMNS
    )
    + f" FROM {_INCOMING} ORDER BY uuid ON CONFLICT (uuid) DO UPDATE SET "
    + POSTGRESQL.merge("%s::timestamptz")
)
"""Each row of the batch inserted, or merged into the stored one (``Dialect.merge``), in uuid
order (two exporters lock shared rows in the same order); its parameter is ``finish``'s
``pending_before``."""


def safe_description(url: str) -> str:
    """The URL without its password, for the log."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unreadable URL)"
    params.pop("password", None)
    host, dbname = params.get("host", ""), params.get("dbname", "")
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', '')}/{dbname}"


class PostgresStore(HistoryStore):
    concurrent_writes = 2  # a flush's batches hold distinct tasks: no lock between them

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        self.description = safe_description(url)
        conninfo = make_conninfo(url, connect_timeout=CONNECT_TIMEOUT)
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            open=False,
            timeout=POOL_TIMEOUT,
            # A connection the server dropped (a restart, a failover) is found out and replaced
            # before it is handed out, not by the first read or write that uses it.
            check=ConnectionPool.check_connection,
            name="celery-history",
        )

    def open(self) -> None:
        self.pool.open(wait=False)

    def migrate(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
            row = conn.execute(f"SELECT max(version) FROM {SCHEMA_TABLE}").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database holds history schema {found}, newer than this exporter's "
                    f"({SCHEMA_VERSION}): upgrade the exporter"
                )
            for statement in POSTGRESQL.migration(found):
                conn.execute(statement)
            self._free_text_index(conn)

    def _free_text_index(self, conn: psycopg.Connection[Any]) -> None:
        """The trigram index of free-text search, if pg_trgm is there or may be created (that
        needs the right to create an extension): without it free text scans the table."""
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                conn.execute(FREE_TEXT_INDEX)
        except psycopg.Error as exc:
            log.warning(
                "no trigram index for free-text search: it scans the table",
                store=self.description,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )

    def write(self, rows: Sequence[RowValues], pending_before: float | None) -> None:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(_CREATE_INCOMING)
            with cur.copy(_COPY_INCOMING) as copy:
                copy.set_types(_COPY_TYPES)
                for values in rows:
                    copy.write_row(encode_values(values))
            cur.execute(_MERGE_INCOMING, (POSTGRESQL.to_time(pending_before),))

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            with self.pool.connection(timeout=READ_WAIT) as conn:
                return conn.execute(sql, params).fetchall()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            first_line = str(exc).strip().partition("\n")[0][:200]
            raise HistoryUnavailable(
                f"the task history's database does not answer ({self.description}): "
                f"{type(exc).__name__}: {first_line}"
            ) from exc

    def page(self, query: HistoryQuery) -> list[TaskRow]:
        sql, params = select_page(POSTGRESQL, query)
        return [POSTGRESQL.decode(values) for values in self._fetch(sql, params)]

    def get(self, uuid: str) -> TaskRow | None:
        rows = self._fetch(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE uuid = %s", (uuid,))
        return POSTGRESQL.decode(rows[0]) if rows else None

    def children(self, uuid: str) -> list[tuple[str, str | None, str | None]]:
        return [(r[0], r[1], r[2]) for r in self._fetch(select_children(POSTGRESQL), (uuid,))]

    def _delete_batches(
        self, where: str, params: Sequence[Any], batches: int, deadline: float = math.inf
    ) -> int:
        def delete_batch() -> int:
            with self.pool.connection() as conn:
                cursor = conn.execute(
                    f"DELETE FROM {TABLE} WHERE uuid IN (SELECT uuid FROM {TABLE} WHERE {where} "
                    f"LIMIT {DELETE_BATCH} FOR UPDATE SKIP LOCKED)",
                    params,
                )
            return cursor.rowcount

        return delete_in_batches(delete_batch, batches, deadline)

    def expire(self, now: float, retention: Retention) -> int:
        deadline = time.monotonic() + EXPIRE_BUDGET
        to_time = POSTGRESQL.to_time
        deleted = 0
        failed = list(FAILED_STATES)
        if retention.default > 0:
            deleted += self._delete_batches(
                "updated_at < %s AND state <> ALL(%s)",
                (to_time(now - retention.default), failed),
                ROUND,
                deadline,
            )
        if retention.failed > 0:
            deleted += self._delete_batches(
                "updated_at < %s AND state = ANY(%s)",
                (to_time(now - retention.failed), failed),
                ROUND,
                deadline,
            )
        if retention.pending > 0:
            with self.pool.connection() as conn:
                conn.execute(
                    f"UPDATE {TABLE} SET state = 'UNKNOWN' WHERE uuid IN (SELECT uuid FROM "
                    f"{TABLE} WHERE state = 'PENDING' AND sent < %s LIMIT {DELETE_BATCH} "
                    "FOR UPDATE SKIP LOCKED)",
                    (to_time(now - retention.pending),),
                )
        return deleted

    def erase(self, erasure: Erasure) -> int:
        where, params = erasure.where(POSTGRESQL)
        total = 0
        while True:
            deleted = self._delete_batches(where, params, 1)
            total += deleted
            if deleted < DELETE_BATCH:
                return total

    def explain(self, sql: str, params: Sequence[object]) -> str:
        rows = self._fetch("EXPLAIN " + sql, list(params))
        return "\n".join(str(row[0]) for row in rows)

    def close(self) -> None:
        self.pool.close()
