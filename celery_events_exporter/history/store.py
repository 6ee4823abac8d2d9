"""What a history store does, whatever the database: merge rows in, answer pages, expire.

Each store merges a batch in one statement: a row is inserted, or merged into the stored row of
its uuid by ``row.py``'s rules expressed in SQL (``sql.Dialect.merge``), which the database runs
under the row's lock. Nothing is read back; two exporters writing one task into one database
leave one row, with the content either would have written alone, whatever the order.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery_events_exporter.history.row import RowValues, TaskRow
from celery_events_exporter.history.sql import Erasure, HistoryQuery, Page


class HistoryUnavailable(Exception):
    """The history's database cannot answer a read now (down, restarting, unreachable); the
    message names the store, never its credentials. The API answers 503: retry later."""


@dataclass(frozen=True)
class Retention:
    """How long rows are kept, after their last event (seconds; 0 keeps them forever)."""

    default: float
    failed: float
    """For FAILURE, LOST, REVOKED and REJECTED rows."""
    pending: float
    """A row seen only as sent for this long reads UNKNOWN (0: never)."""
    max_bytes: int = 0
    """SQLite only: past this many bytes of rows the oldest go first (0: no budget)."""


DELETE_BATCH = 1000
"""Rows one retention or erasure statement deletes: each is a short transaction."""
EXPIRE_BUDGET = 2.0
"""Seconds one retention round may delete for (batch after batch), so that a busy fleet's
expired rows go as fast as new ones come without holding the writer long."""
ROUND = 1_000_000
"""Batches per retention round at most: the budget binds first."""


def delete_in_batches(
    delete_batch: Callable[[], int], batches: int, deadline: float = math.inf
) -> int:
    """Run ``delete_batch`` (one statement that deletes up to ``DELETE_BATCH`` rows in a
    transaction of its own and returns how many) up to ``batches`` times: until a batch deletes
    fewer (nothing more matches) or ``deadline`` (``time.monotonic``) has passed. The rows
    deleted."""
    deleted = 0
    for _ in range(batches):
        if time.monotonic() > deadline:
            break
        count = delete_batch()
        deleted += count
        if count < DELETE_BATCH:
            break
    return deleted


class HistoryStore(ABC):
    """A database holding ``celery_tasks``."""

    description: str
    """Where the store is, for the log: never its credentials."""
    concurrent_writes = 1
    """Batches ``write`` may merge at once, from as many threads (each its own transaction):
    more than one lets the writer fold and send the next batch while the database merges one."""

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema, under a lock shared with other exporters."""

    @abstractmethod
    def write(self, rows: Sequence[RowValues], pending_before: float | None) -> None:
        """Merge ``rows`` (finished, one per uuid: ``row.finish``) into the table; a merged row's
        state is derived as ``finish`` derives it with ``pending_before``."""

    @abstractmethod
    def page(self, query: HistoryQuery) -> list[TaskRow]:
        """One page of rows matching ``query``, newest first seen first (with
        ``query.scan_rows`` it may stop short: ``search`` says where)."""

    def search(self, query: HistoryQuery) -> Page:
        """``page`` and, if ``query.scan_rows`` ran out before the page filled, where the scan
        stopped. Only SQLite has a scan budget; this default reads until the page is full."""
        return Page(self.page(query))

    @abstractmethod
    def get(self, uuid: str) -> TaskRow | None: ...

    @abstractmethod
    def children(self, uuid: str) -> list[tuple[str, str | None, str | None]]:
        """(uuid, name, state) of the tasks whose parent is ``uuid``."""

    @abstractmethod
    def expire(self, now: float, retention: Retention) -> int:
        """Delete expired rows, batch after batch, for up to ``EXPIRE_BUDGET``; the rows deleted."""

    @abstractmethod
    def erase(self, erasure: Erasure) -> int:
        """Delete the rows ``erasure`` names, in small batches; the rows deleted."""

    @abstractmethod
    def close(self) -> None: ...

    def explain(self, sql: str, params: Sequence[object]) -> str:
        """The database's plan for ``sql`` (for the tests that check indexes serve searches)."""
        raise NotImplementedError
