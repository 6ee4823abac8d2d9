"""The history's writer: the sink the state feeds, and the thread that writes what it buffered.

``sink`` runs on the ingest thread and only appends the changes to a buffer bounded in bytes.
The writer thread wakes every ``FLUSH_INTERVAL``, turns the buffered changes into rows, merges
the rows of one task into one and writes them in batches. While the database is slow or down the
rows wait (merged, so a task costs one row however many events it sends) and new changes keep
coming in up to the byte budget; past it they are dropped and counted. The thread reconnects by
itself (the store's pool does) and retries with a growing pause. A ``kill -9`` loses what was
buffered: at most one flush window of events while the database keeps up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from celery_events_exporter.history.row import TaskRow, approximate_bytes, fold, join
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.logging import get_logger
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.tasks.redact import Redactor

log = get_logger(__name__)

FLUSH_INTERVAL = 1.0
"""Seconds between two writes: what a ``kill -9`` may lose, and what merging per task saves."""
BATCH_ROWS = 5000
"""Rows per transaction."""
EXPIRE_INTERVAL = 10.0
"""Seconds between two retention rounds (each deletes for up to 2 s)."""
MAX_RETRY_PAUSE = 10.0
"""Longest pause between two attempts while the database fails: how late the history catches
up after an outage."""
ROW_OVERHEAD = 400
"""Bytes a buffered row costs besides its text: its object and the dict slot."""

DROP_BUFFER_FULL = "buffer_full"
"""A change arrived while the buffer held its budget (the database slow or down)."""
DROP_REJECTED = "rejected"
"""The database refused a batch for something else than a connection problem."""
DROP_REASONS = (DROP_BUFFER_FULL, DROP_REJECTED)


def row_bytes(row: TaskRow) -> int:
    size = ROW_OVERHEAD + 40 * len(row.events)
    for value in (row.args, row.kwargs, row.result, row.exception, row.traceback, row.name):
        if value is not None:
            size += len(value)
    return size


@dataclass
class WriterStats:
    rows_written: int = 0
    batches: int = 0
    write_errors: int = 0
    rows_expired: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    last_success: float | None = None


class HistoryWriter:
    """Buffers task changes and writes them to ``store`` from a thread of its own (``run``)."""

    def __init__(
        self,
        store: HistoryStore,
        redactor: Redactor | None,
        *,
        budget_bytes: int,
        retention: Retention,
        flush_interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.redactor = redactor
        self.budget_bytes = budget_bytes
        self.retention = retention
        self.flush_interval = flush_interval
        self.clock = clock
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._incoming: list[TaskChange] = []
        self._incoming_bytes = 0
        self._pending: dict[str, TaskRow] = {}
        self._pending_bytes = 0
        self.ready = threading.Event()
        """Set once the schema is migrated."""
        self._last_flush_ok = True

    @property
    def buffer_bytes(self) -> int:
        return self._incoming_bytes + self._pending_bytes

    def sink(self, changes: Sequence[TaskChange]) -> None:
        """The state's sink: append ``changes`` to the buffer, or drop them past its budget.
        They are read once: the state's batches make their changes anew at every pass."""
        taken = list(changes)
        size = 0
        for change in taken:
            size += approximate_bytes(change)
        with self._lock:
            if self._incoming_bytes + self._pending_bytes + size > self.budget_bytes:
                self.stats.dropped[DROP_BUFFER_FULL] += len(taken)
                return
            self._incoming.extend(taken)
            self._incoming_bytes += size

    def _take(self) -> None:
        """Move the incoming changes into the pending rows, one row per task."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
            incoming_bytes, self._incoming_bytes = self._incoming_bytes, 0
        by_task: dict[str, list[TaskChange]] = {}
        for change in incoming:
            found = by_task.get(change.uuid)
            if found is None:
                by_task[change.uuid] = [change]
            else:
                found.append(change)
        pending = self._pending
        redactor = self.redactor
        added = 0
        for _uuid, changes in by_task.items():
            row = fold(changes, redactor)
            if row is None:
                continue
            stored = pending.get(row.uuid)
            if stored is None:
                pending[row.uuid] = row
                added += row_bytes(row)
            else:
                merged = join(stored, row)
                pending[row.uuid] = merged
                added += row_bytes(merged) - row_bytes(stored)
        with self._lock:
            self._pending_bytes += added
        del incoming_bytes

    def flush(self) -> bool:
        """Write what is buffered; False if the database failed (the rows wait)."""
        self._take()
        pending = self._pending
        if not pending:
            return True
        now = self.clock()
        pending_before = now - self.retention.pending if self.retention.pending > 0 else None
        rows = list(pending.values())
        for start in range(0, len(rows), BATCH_ROWS):
            try:
                self._write(rows[start : start + BATCH_ROWS], pending_before)
            except Exception as exc:  # the database is away: the rows wait
                log.warning(
                    "task history not written; retrying",
                    store=self.store.description,
                    rows=len(pending),
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                return False
        return True

    def _write(self, batch: list[TaskRow], pending_before: float | None) -> None:
        """Write ``batch``; a batch the database refuses (not a connection problem) is split
        until the rows it refuses are alone, and those are dropped and counted. Raises what
        is transient."""
        try:
            self.store.write(batch, pending_before)
        except Exception as exc:
            self.stats.write_errors += 1
            if _is_transient(exc):
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                self._write(batch[:half], pending_before)
                self._write(batch[half:], pending_before)
                return
            log.error(
                "task history row refused; dropped",
                store=self.store.description,
                uuid=batch[0].uuid[:64],
                error=f"{type(exc).__name__}: {str(exc)[:300]}",
            )
            self.stats.dropped[DROP_REJECTED] += 1
            self._forget(batch)
            return
        self._forget(batch)
        self.stats.rows_written += len(batch)
        self.stats.batches += 1
        self.stats.last_success = self.clock()

    def _forget(self, batch: Sequence[TaskRow]) -> None:
        freed = 0
        for row in batch:
            if self._pending.pop(row.uuid, None) is not None:
                freed += row_bytes(row)
        with self._lock:
            self._pending_bytes -= freed

    def _migrate(self, stop: threading.Event) -> bool:
        pause = 1.0
        while not stop.is_set():
            try:
                self.store.migrate()
            except Exception as exc:
                self.stats.write_errors += 1
                log.warning(
                    "task history schema not ready; retrying",
                    store=self.store.description,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                self._take()  # keep merging meanwhile: a task costs one row
                stop.wait(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
                continue
            self.ready.set()
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        """Migrate, then write every flush window and expire every minute, until ``stop``."""
        if not self._migrate(stop):
            return
        pause = self.flush_interval
        next_expiry = 0.0
        while not stop.wait(pause):
            self._last_flush_ok = self.flush()
            if self._last_flush_ok:
                pause = self.flush_interval
            else:
                pause = min(max(pause * 2, 1.0), MAX_RETRY_PAUSE)
                continue
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + EXPIRE_INTERVAL
                try:
                    self.stats.rows_expired += self.store.expire(self.clock(), self.retention)
                except Exception as exc:
                    self.stats.write_errors += 1
                    log.warning("task history retention round failed", error=str(exc)[:300])

    def final_flush(self) -> None:
        """Write what is left at shutdown, unless the database was failing (a stop must not
        wait for a connection timeout)."""
        if self.ready.is_set() and self._last_flush_ok:
            self.flush()


def _is_transient(exc: Exception) -> bool:
    """A connection or lock problem the next attempt may not meet."""
    import sqlite3

    import psycopg
    from psycopg_pool import PoolTimeout

    transient = (
        sqlite3.OperationalError,
        psycopg.OperationalError,
        PoolTimeout,
        psycopg.errors.DeadlockDetected,
        psycopg.errors.SerializationFailure,
    )
    return isinstance(exc, transient)
