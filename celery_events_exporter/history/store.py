"""What a history store does, whatever the database: merge rows in, answer pages, expire.

Each store merges a batch the same way: it reads the batch's rows that exist already (locked
against another exporter writing the same tasks), joins them with the batch's rows in Python
(``row.join``: any order gives the same row) and writes the result; so two exporters writing
one task into one database leave one row, with the content either would have written alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from celery_events_exporter.history.row import TaskRow, finish, join
from celery_events_exporter.history.sql import Erasure, HistoryQuery, Page


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


class HistoryStore(ABC):
    """A database holding ``celery_tasks``."""

    description: str
    """Where the store is, for the log: never its credentials."""

    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema, under a lock shared with other exporters."""

    @abstractmethod
    def write(self, rows: Sequence[TaskRow], pending_before: float | None) -> None:
        """Merge ``rows`` (one per uuid) into the table."""

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


def merge_into(
    existing: dict[str, TaskRow], rows: Sequence[TaskRow], pending_before: float | None
) -> list[TaskRow]:
    """``rows`` joined with the stored rows of the same uuids, finished."""
    out: list[TaskRow] = []
    for row in rows:
        stored = existing.get(row.uuid)
        out.append(
            finish(row if stored is None else join(stored, row), pending_before=pending_before)
        )
    return out
