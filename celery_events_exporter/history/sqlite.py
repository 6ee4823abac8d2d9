"""The history in a SQLite file: WAL, one writer (``BEGIN IMMEDIATE``), readers alongside.

In WAL mode with ``synchronous=NORMAL`` a committed transaction survives the process being
killed (only a power loss may take the last ones back); nothing the exporter does leaves the
file corrupt. Each reading thread opens its own connection, so an ``/api/tasks`` request never
waits for the writer.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from celery_events_exporter.history.row import COLUMNS, RowValues, TaskRow
from celery_events_exporter.history.sql import (
    FAILED_STATES,
    SCHEMA_TABLE,
    SCHEMA_VERSION,
    SQLITE,
    TABLE,
    Cursor,
    Erasure,
    HistoryQuery,
    Page,
    encode_values,
    select_children,
    select_page,
    select_rows,
    select_scan_end,
)
from celery_events_exporter.history.store import (
    DELETE_BATCH,
    EXPIRE_BUDGET,
    ROUND,
    HistoryStore,
    Retention,
    delete_in_batches,
)


def _as_is(value: None) -> None:
    return value


# sqlite3 looks an adapter up for every parameter that is not an int, float or str and, for a
# None, finds none only after raising and clearing an AttributeError: most of the cost of
# binding a history row, whose columns are mostly null. None adapted to itself binds NULL at
# once (bench/README.md, "Task history").
sqlite3.register_adapter(type(None), _as_is)

BUSY_TIMEOUT = 10.0
"""Seconds a connection waits for another's write lock (another exporter on the same file)."""
_UPSERT = (
    f"INSERT INTO {TABLE} AS t ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'?{i}' for i in range(1, len(COLUMNS) + 1))}) "
    f"ON CONFLICT (uuid) DO UPDATE SET {SQLITE.merge(f'?{len(COLUMNS) + 1}')}"
)
"""A row inserted, or merged into the one stored (``Dialect.merge``); its last parameter is
``finish``'s ``pending_before``."""


class SqliteStore(HistoryStore):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.description = f"sqlite:///{self.path}"
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self) -> None:
        with self._writing() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
            found = conn.execute(f"SELECT max(version) FROM {SCHEMA_TABLE}").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} holds history schema {found}, newer than this exporter's "
                    f"({SCHEMA_VERSION}): upgrade the exporter"
                )
            for statement in SQLITE.migration(found):
                conn.execute(statement)

    def write(self, rows: Sequence[RowValues], pending_before: float | None) -> None:
        params = []
        for values in rows:
            encoded = encode_values(values)
            encoded.append(pending_before)
            params.append(encoded)
        with self._writing() as conn:
            conn.executemany(_UPSERT, params)

    def page(self, query: HistoryQuery) -> list[TaskRow]:
        return self.search(query).rows

    def search(self, query: HistoryQuery) -> Page:
        conn = self.conn
        scan_end = select_scan_end(SQLITE, query)
        if scan_end is None:
            sql, params = select_page(SQLITE, query)
            return Page([SQLITE.decode(values) for values in conn.execute(sql, params)])
        # One read transaction: the page reads up to the very row found as the budget's last
        # even while the writer commits.
        conn.execute("BEGIN")
        try:
            found = conn.execute(*scan_end).fetchone()
            end = None if found is None else Cursor(found[0], found[1])
            sql, params = select_page(SQLITE, query, end)
            rows = [SQLITE.decode(values) for values in conn.execute(sql, params)]
        finally:
            conn.execute("COMMIT")
        return Page(rows, end if len(rows) < query.limit else None)

    def get(self, uuid: str) -> TaskRow | None:
        values = self.conn.execute(select_rows(SQLITE, 1), (uuid,)).fetchone()
        return None if values is None else SQLITE.decode(values)

    def children(self, uuid: str) -> list[tuple[str, str | None, str | None]]:
        return [tuple(r) for r in self.conn.execute(select_children(SQLITE), (uuid,))]

    def _delete_batches(
        self, where: str, params: Sequence[object], batches: int, deadline: float = math.inf
    ) -> int:
        def delete_batch() -> int:
            with self._writing() as conn:
                cursor = conn.execute(
                    f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
                    f"WHERE {where} LIMIT {DELETE_BATCH})",
                    params,
                )
            return cursor.rowcount

        return delete_in_batches(delete_batch, batches, deadline)

    def expire(self, now: float, retention: Retention) -> int:
        deadline = time.monotonic() + EXPIRE_BUDGET
        failed = ", ".join(f"'{s}'" for s in FAILED_STATES)
        deleted = 0
        if retention.default > 0:
            deleted += self._delete_batches(
                f"updated_at < ? AND state NOT IN ({failed})",
                (now - retention.default,),
                ROUND,
                deadline,
            )
        if retention.failed > 0:
            deleted += self._delete_batches(
                f"updated_at < ? AND state IN ({failed})",
                (now - retention.failed,),
                ROUND,
                deadline,
            )
        if retention.pending > 0:
            with self._writing() as conn:
                conn.execute(
                    f"UPDATE {TABLE} SET state = 'UNKNOWN' WHERE rowid IN (SELECT rowid FROM "
                    f"{TABLE} WHERE state = 'PENDING' AND sent < ? LIMIT {DELETE_BATCH})",
                    (now - retention.pending,),
                )
        if retention.max_bytes > 0:
            for _ in range(5):
                if self.used_bytes() <= retention.max_bytes:
                    break
                deleted += self._delete_batches(
                    f"updated_at <= (SELECT updated_at FROM {TABLE} ORDER BY updated_at "
                    f"LIMIT 1 OFFSET {DELETE_BATCH - 1})",
                    (),
                    1,
                )
        return deleted

    def used_bytes(self) -> int:
        """Bytes the database's pages hold, free pages left out (a delete frees pages for
        reuse; the file does not shrink)."""
        conn = self.conn
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(page_size * (pages - free))

    def erase(self, erasure: Erasure) -> int:
        where, params = erasure.where(SQLITE)
        total = 0
        while True:
            deleted = self._delete_batches(where, params, 1)
            total += deleted
            if deleted < DELETE_BATCH:
                return total
            time.sleep(0)

    def explain(self, sql: str, params: Sequence[object]) -> str:
        plan = self.conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        return "\n".join(str(row[-1]) for row in plan)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def file_bytes(self) -> int:
        return sum(
            os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p)
        )
