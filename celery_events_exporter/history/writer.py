"""The history's writer: the sink the state feeds, and the thread that writes what it buffered.

``sink`` runs on the ingest thread and only appends the state's batch of task changes to a
buffer bounded in bytes, as it is: the batch holds its messages' JSON bodies, and its size is
known without reading it. The writer thread wakes every ``FLUSH_INTERVAL``, reads the buffered
batches (each event decoded again from its body), folds each task's events into its row and
merges the rows into the database in batches, the merge done by the database (``store.py``).
While the database is slow or down the rows wait, folded (a task costs one row however many
events it sends), and new changes keep coming in up to the byte budget; past it they are
dropped and counted. The budget is shared with the intake backlog (``intake/backlog.py``): the
sink takes a batch only within what the backlog leaves of its budget, and when the backlog needs
the room the newest buffered batches are shed (counted as dropped too), so that counting never
loses an event to the history. The thread reconnects by itself (the store's pool does) and
retries with a growing pause. A ``kill -9`` loses what was buffered: at most one flush window of
events while the database keeps up.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from celery_events_exporter.history.row import UUID, Rows, RowValues, finish
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.logging import get_logger
from celery_events_exporter.scrapes import Scrapes
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.state.feed import change_fields, json_size
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
DUTY_CYCLE = 0.2
"""The share of the time the writer thread works while the ingest thread is behind: it shares
the interpreter lock with counting, which comes first (bench/README.md, "Task history")."""
MAX_YIELD = 1.0
"""Longest pause for the ingest thread after one unit of work (a batch folded, rows written)."""
BATCH_OVERHEAD = 200
"""Bytes a buffered batch costs besides its changes: its object and its list."""
CHANGE_OVERHEAD = 100
"""Bytes a buffered change costs besides its JSON: its three slots in the batch's list and its
share of its message's (bench/README.md, "Task history")."""

DROP_BUFFER_FULL = "buffer_full"
"""A change arrived while the buffer held its budget (the database slow or down)."""
DROP_REJECTED = "rejected"
"""The database refused a batch for something else than a connection problem."""
DROP_REASONS = (DROP_BUFFER_FULL, DROP_REJECTED)


def buffered_bytes(changes: Sequence[TaskChange]) -> int:
    """What a batch of changes costs the writer's buffer until it is folded: the JSON it came
    in and the objects keeping it."""
    return json_size(changes) + BATCH_OVERHEAD + CHANGE_OVERHEAD * len(changes)


def ingest_pause(worked: float) -> float:
    """Seconds to leave the ingest thread after ``worked`` seconds of work while it is behind:
    the writer then takes at most ``DUTY_CYCLE`` of the time, and never stops for long."""
    return min(worked * (1 / DUTY_CYCLE - 1), MAX_YIELD)


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
        self.retention = retention
        self.budget_bytes = budget_bytes
        self.flush_interval = flush_interval
        self.clock = clock
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._incoming: deque[tuple[Sequence[TaskChange], int]] = deque()
        """Batches handed over and not folded yet, with what each costs the buffer."""
        self._incoming_bytes = 0
        self._rows = Rows(redactor)
        """The folded rows not written yet (this thread's own)."""
        self.ready = threading.Event()
        """Set once the schema is migrated."""
        self._last_flush_ok = True
        self._stop = threading.Event()
        self._ingest_behind: Callable[[], bool] | None = None
        self._scrapes: Scrapes | None = None
        self._merging: ThreadPoolExecutor | None = None
        """Threads that wait for the database's merges while this one prepares the next
        batch (``store.concurrent_writes`` above one)."""
        self.room: Callable[[], int] | None = None
        """Bytes of the shared budget the intake backlog leaves (``IntakeBacklog.room``);
        None: the history's own budget alone bounds it."""

    @property
    def buffer_bytes(self) -> int:
        return self._incoming_bytes + self._rows.bytes

    @property
    def sheddable_bytes(self) -> int:
        """Bytes of batches not folded yet: what ``shed`` can free."""
        return self._incoming_bytes

    def sink(self, changes: Sequence[TaskChange]) -> None:
        """The state's sink: keep the batch ``changes`` as it is, or drop it past the budget
        (its own, or what the intake backlog leaves of the shared one)."""
        size = buffered_bytes(changes)
        room = self.room
        limit = self.budget_bytes if room is None else min(self.budget_bytes, room())
        with self._lock:
            if self._incoming_bytes + self._rows.bytes + size > limit:
                self.stats.dropped[DROP_BUFFER_FULL] += len(changes)
                return
            self._incoming.append((changes, size))
            self._incoming_bytes += size

    def shed(self, nbytes: int) -> None:
        """Drop the newest batches not folded yet, worth at least ``nbytes`` (or all of them),
        counted as ``buffer_full``: the intake backlog needs the shared budget (reader thread).
        The newest go first, as the sink drops the newest past the budget: a task keeps the
        row its earlier events make."""
        with self._lock:
            incoming, dropped = self._incoming, self.stats.dropped
            while nbytes > 0 and incoming:
                changes, size = incoming.pop()
                self._incoming_bytes -= size
                dropped[DROP_BUFFER_FULL] += len(changes)
                nbytes -= size

    def _take(self, max_rows: int | None = None, max_batches: int | None = None) -> int:
        """Fold the buffered batches into the pending rows, one row per task, batch by batch,
        oldest first, until ``max_rows`` rows are pending or ``max_batches`` are folded (a
        batch's bytes leave the buffer's account once its rows hold them; until it is taken,
        ``shed`` may drop it). Returns the batches folded."""
        fold = self._rows.fold
        rows = self._rows.by_uuid
        incoming = self._incoming
        taken = 0
        while (max_rows is None or len(rows) < max_rows) and (
            max_batches is None or taken < max_batches
        ):
            with self._lock:
                if not incoming:
                    break
                changes, size = incoming.popleft()
            taken += 1
            began = time.perf_counter()
            fold(change_fields(changes))
            with self._lock:
                self._incoming_bytes -= size
            self._yield_to_ingest(time.perf_counter() - began)
        return taken

    def _yield_to_ingest(self, worked: float) -> None:
        """After ``worked`` seconds of work, wait for the scrapes in progress, and pause while
        the ingest thread is behind."""
        scrapes = self._scrapes
        if scrapes is not None and scrapes.active:
            scrapes.give_way()
        behind = self._ingest_behind
        if behind is not None and behind():
            self._stop.wait(ingest_pause(worked))

    def flush(self) -> bool:
        """Write what is buffered, a transaction's worth of rows folded at a time; False if the
        database failed (then every batch is folded: the rows wait, a task in one row).

        Folded and written piece by piece, the rows pending stay within one transaction's: a
        buffer folded whole before its first write held the rows of all its tasks at once, on
        top of the messages' memory just freed, which the allocator does not hand back (after
        a burst, the process's peak; bench/README.md, "One budget")."""
        with self._lock:
            left = len(self._incoming)  # this window's: later ones wait for the next
        while True:
            # PostgreSQL merges concurrent_writes batches at once: fold that many.
            left -= self._take(BATCH_ROWS * self.store.concurrent_writes, left)
            if not self._write_pending():
                self._take()
                return False
            if left <= 0 or not self._incoming:
                return True

    def _write_pending(self) -> bool:
        """Write the folded rows; False if the database failed (the rows wait)."""
        rows = self._rows.by_uuid
        if not rows:
            return True
        now = self.clock()
        pending_before = now - self.retention.pending if self.retention.pending > 0 else None
        uuids = list(rows)
        width = self.store.concurrent_writes
        if width > 1 and self._merging is None:
            self._merging = ThreadPoolExecutor(width, thread_name_prefix="history-merge")
        # Batches sent and not settled yet, oldest first: at most ``width`` at once.
        sent: deque[tuple[list[RowValues], Future[None]]] = deque()
        failure: Exception | None = None
        for start in range(0, len(uuids), BATCH_ROWS):
            began = time.perf_counter()
            batch = [
                finish(rows[uuid], pending_before) for uuid in uuids[start : start + BATCH_ROWS]
            ]
            try:
                while len(sent) >= width:
                    self._settle(*sent.popleft(), pending_before)
                if self._merging is None:
                    self._write(batch, pending_before)
                else:
                    sent.append(
                        (batch, self._merging.submit(self.store.write, batch, pending_before))
                    )
            except Exception as exc:  # the database is away: the rows wait
                failure = exc
                break
            self._yield_to_ingest(time.perf_counter() - began)
        while sent:  # every batch sent is settled: written rows leave the buffer
            try:
                self._settle(*sent.popleft(), pending_before)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            log.warning(
                "task history not written; retrying",
                store=self.store.description,
                rows=len(rows),
                error=f"{type(failure).__name__}: {str(failure)[:300]}",
            )
            return False
        return True

    def _settle(
        self, batch: list[RowValues], merge: Future[None], pending_before: float | None
    ) -> None:
        """The outcome of ``batch``'s merge sent to another thread, as ``_write`` handles it
        (a refused batch is written again here, split)."""
        error = merge.exception()
        if error is None:
            self._written(batch)
        elif isinstance(error, Exception):
            self._refused(batch, pending_before, error)
        else:
            raise error

    def _write(self, batch: list[RowValues], pending_before: float | None) -> None:
        """Write ``batch``; a batch the database refuses (not a connection problem) is split
        until the rows it refuses are alone, and those are dropped and counted. Raises what
        is transient."""
        try:
            self.store.write(batch, pending_before)
        except Exception as exc:
            self._refused(batch, pending_before, exc)
            return
        self._written(batch)

    def _refused(
        self, batch: list[RowValues], pending_before: float | None, exc: Exception
    ) -> None:
        self.stats.write_errors += 1
        if _is_transient(exc):
            raise exc
        if len(batch) > 1:
            half = len(batch) // 2
            self._write(batch[:half], pending_before)
            self._write(batch[half:], pending_before)
            return
        log.error(
            "task history row refused; dropped",
            store=self.store.description,
            uuid=batch[0][UUID][:64],
            error=f"{type(exc).__name__}: {str(exc)[:300]}",
        )
        self.stats.dropped[DROP_REJECTED] += 1
        self._forget(batch)

    def _written(self, batch: list[RowValues]) -> None:
        self._forget(batch)
        self.stats.rows_written += len(batch)
        self.stats.batches += 1
        self.stats.last_success = self.clock()

    def _forget(self, batch: Sequence[RowValues]) -> None:
        take = self._rows.take
        for values in batch:
            take(values[UUID])

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

    def run(
        self,
        stop: threading.Event,
        ingest_behind: Callable[[], bool] | None = None,
        scrapes: Scrapes | None = None,
    ) -> None:
        """Migrate, then write every flush window and expire every minute, until ``stop``;
        while ``ingest_behind()`` says the ingest thread has a backlog, yield to it, and
        between two units of work wait for the ``scrapes`` in progress."""
        self._stop = stop
        self._ingest_behind = ingest_behind
        self._scrapes = scrapes
        if not self._migrate(stop):
            return
        pause = self.flush_interval
        next_expiry = 0.0
        while not stop.wait(pause):
            began = time.monotonic()
            self._last_flush_ok = self.flush()
            if self._last_flush_ok:
                # A flush longer than the window (a busy fleet) is followed by the next at once.
                pause = max(0.0, self.flush_interval - (time.monotonic() - began))
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
        if self._merging is not None:
            self._merging.shutdown()
            self._merging = None


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
