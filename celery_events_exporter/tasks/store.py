"""The recent tasks of the Tasks view: one record per task uuid, bounded, oldest evicted first.

Fed by the state's task changes (``State.subscribe``), so ``take`` runs on the ingest thread,
after the state's lock is released, once per applied batch: it only files the batch. A read of
the store merges what was filed since the previous read into the records, so tasks that pass
unread (most of them, on a busy fleet) cost the ingest thread nothing. Payloads are kept
exactly as the events carry them (Celery's repr strings, cut to a fixed length when merged);
parsing and masking wait until someone asks for them (celery_events_exporter/redact.py).

Events of one task can arrive out of order (a prefork worker's pool processes and its main process
publish separately, and batch them). Every field an event carries is merged whatever its order;
the state moves only to an event at least as recent as the one that set the current state (the
worker's timestamps, then the lifecycle's order for a tie), so a late task-started never turns a
SUCCESS back into STARTED.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from celery_events_exporter.events.vocabulary import (
    FAILURE,
    LOST,
    PENDING,
    RECEIVED,
    RETRY,
    STARTED,
    STATE_RANK,
    SUCCESS,
    TASK_EVENT_STATES,
    TASK_RECEIVED,
    TASK_STATES,
)
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.state.feed import change_fields, json_size
from celery_events_exporter.tasks import bounds

# What the API and the dashboards import from here; the vocabulary is events.vocabulary's.
STATES: tuple[str, ...] = TASK_STATES

STORED_TEXT_LIMIT = bounds.PAYLOAD_BYTES
"""Bytes kept of each payload, exception and traceback (Celery's own reprs stop at 1024
characters); a traceback keeps its end. The other fields' bounds are in ``bounds``."""


class TaskRecord:
    """What the events told about one task. Timestamps are the worker's (event ``timestamp``),
    falling back to the exporter's clock when an event has none."""

    __slots__ = (
        "args",
        "eta",
        "exception",
        "exception_at",
        "expires",
        "failed",
        "first_seen",
        "kwargs",
        "name",
        "orphaned",
        "parent_id",
        "queue",
        "received",
        "rejected",
        "result",
        "retried",
        "retries",
        "revoked",
        "root_id",
        "runtime",
        "sent",
        "started",
        "state",
        "state_timestamp",
        "succeeded",
        "traceback",
        "uuid",
        "worker",
    )

    def __init__(self, uuid: str, first_seen: float) -> None:
        self.uuid = uuid
        self.first_seen = first_seen
        self.name: str | None = None
        self.state: str | None = None
        self.state_timestamp = 0.0
        self.args: Any = None
        self.kwargs: Any = None
        self.result: Any = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.exception_at: float | None = None
        """The worker's timestamp of the event that set ``exception`` and ``traceback``."""
        self.retries: int | None = None
        self.worker: str | None = None
        self.queue: str | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.runtime: float | None = None
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.succeeded: float | None = None
        self.failed: float | None = None
        self.retried: float | None = None
        self.revoked: float | None = None
        self.rejected: float | None = None
        self.orphaned: float | None = None

    @property
    def sort_time(self) -> float:
        """When the task was received, for ordering; first sight if it never was."""
        return self.received if self.received is not None else self.first_seen

    def copy(self) -> TaskRecord:
        twin = TaskRecord.__new__(TaskRecord)
        for slot in TaskRecord.__slots__:
            setattr(twin, slot, getattr(self, slot))
        return twin


# event type -> (state, the record's timestamp field, rank); states are compared by identity.
_KINDS: dict[str, tuple[str, str, int]] = {
    event_type: (state, event_type.removeprefix("task-"), STATE_RANK[state])
    for event_type, state in TASK_EVENT_STATES.items()
}


WINDOW_EVENTS_PER_TASK = 6
"""Task events kept unmerged per task of ``max_tasks``: a task sends 3 to 4 (sent, received,
started, then its end), so the window reaches back past the ``max_tasks`` most recent tasks."""

WINDOW_BYTES_PER_TASK = 4096
"""Bytes of JSON kept unmerged per task of ``max_tasks``: Celery's task events take about 300
each, so this binds only when payloads or tracebacks are large (a traceback is cut to
``STORED_TEXT_LIMIT`` only when merged)."""

_RECEIVED_TEXT_FIELDS = (
    ("eta", bounds.SHORT_TEXT_BYTES),
    ("expires", bounds.SHORT_TEXT_BYTES),
    ("root_id", bounds.ID_BYTES),
    ("parent_id", bounds.ID_BYTES),
)
"""What task-received carries besides the payload, with the bytes kept of each."""

Kept = tuple[Sequence[TaskChange], int]
"""A batch of task changes kept for a later merge, with the bytes of JSON they came from."""


class RecentTasks:
    """Up to ``max_tasks`` task records; the oldest (by last task-received) is evicted first.

    The ingest thread does not merge anything: ``take`` files each batch of task changes the
    state hands it, in a window of the last ``WINDOW_EVENTS_PER_TASK * max_tasks`` task events.
    A read (``records``, ``get``) merges what arrived since the previous read into the records,
    in arrival order, which gives the records that merging on arrival gave. On a busy fleet most
    tasks leave the window before anyone reads it and cost nothing but the window's slot (what
    merging on arrival cost instead: bench/README.md).

    A window overrun (more task events, or bytes of the JSON they came in, between two reads
    than it holds) skips the oldest batches: counted in ``dropped``; a task whose early events
    were skipped shows what its later events carry.
    """

    def __init__(
        self,
        max_tasks: int,
        forget_pending_after: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self.forget_pending_after = forget_pending_after
        """Seconds after which a task seen only as sent (PENDING) is dropped: one whose worker
        sends no task events would otherwise read PENDING until evicted. 0 keeps them."""
        self.clock = clock
        self.window_events = WINDOW_EVENTS_PER_TASK * max_tasks
        self.window_bytes = WINDOW_BYTES_PER_TASK * max_tasks
        self._window: deque[Kept] = deque()
        self._window_task_events = 0
        self._window_bytes = 0
        self._kept = 0
        """Messages ever kept: the sequence number of the newest one."""
        self._merged = 0
        """Sequence number of the newest message merged into the records."""
        self._window_lock = threading.Lock()
        self._merge_lock = threading.Lock()
        """Held while records are merged or read: one reader at a time owns them."""
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self.evicted = 0
        """Tasks evicted from the records to keep them within ``max_tasks``."""
        self.dropped = 0
        """Task events that left the window before a read merged them."""
        self._known_names: dict[str, str] = {}
        """uuid -> name learnt from the workers for tasks not in the records yet."""

    def __len__(self) -> int:
        """Task records as of the last read."""
        return len(self._tasks)

    def count(self) -> int:
        """Task records up to date with every message kept so far (merges what is new)."""
        with self._merge_lock:
            self._merge_new()
            return len(self._tasks)

    def learn_names(self, names: dict[str, str]) -> None:
        """Name tasks whose events carry no name ({uuid: name}, from the workers' inspect
        active/reserved replies): an exporter restarted with tasks in flight sees only their
        later events. Kept for tasks not in the records yet, up to ``max_tasks`` names."""
        with self._merge_lock:
            self._merge_new()
            tasks, known = self._tasks, self._known_names
            for uuid, name in names.items():
                record = tasks.get(uuid)
                if record is None:
                    known[uuid] = bounds.cut(name, bounds.NAME_BYTES)
                elif record.name is None:
                    record.name = bounds.cut(name, bounds.NAME_BYTES)
            while len(known) > self.max_tasks:
                del known[next(iter(known))]

    @property
    def pending(self) -> int:
        """Task events kept in the window and not merged yet."""
        with self._window_lock:
            return sum(len(item[0]) for item in self._unmerged())

    def _unmerged(self) -> Iterator[Kept]:
        """The window's messages not merged yet; call with ``_window_lock`` held."""
        merged_in_window = self._merged - (self._kept - len(self._window))
        return itertools.islice(self._window, max(0, merged_in_window), None)

    def take(self, changes: Sequence[TaskChange]) -> None:
        """The state's subscriber (``State.subscribe``): keep a batch of task changes. Its
        ``size`` (``state.feed.ChangeBatch``) is the bytes of JSON the changes came in."""
        if not changes:
            return
        task_events = len(changes)
        size = json_size(changes)
        window = self._window
        with self._window_lock:
            window.append((changes, size))
            self._kept += 1
            self._window_task_events += task_events
            self._window_bytes += size
            while (
                self._window_task_events > self.window_events
                or self._window_bytes > self.window_bytes
            ) and len(window) > 1:
                oldest = self._kept - len(window) + 1
                old_changes, old_size = window.popleft()
                self._window_task_events -= len(old_changes)
                self._window_bytes -= old_size
                if oldest > self._merged:
                    self.dropped += len(old_changes)

    @contextmanager
    def reading(self) -> Iterator[list[TaskRecord]]:
        """The records, oldest first, up to date with every message kept so far; they are the
        reader's until the block ends (another reader waits), so copy what outlives it."""
        with self._merge_lock:
            self._merge_new()
            yield list(self._tasks.values())

    def records(self) -> list[TaskRecord]:
        """Copies of the records, oldest first, up to date with every message kept so far."""
        with self.reading() as records:
            return [record.copy() for record in records]

    def get(self, uuid: str) -> TaskRecord | None:
        """A copy of one task's record, up to date with every message kept so far."""
        with self._merge_lock:
            self._merge_new()
            record = self._tasks.get(uuid)
            return None if record is None else record.copy()

    def _merge_new(self) -> None:
        with self._window_lock:
            new = list(self._unmerged())
            self._merged = self._kept
        observe = self._observe
        for changes, _ in new:
            for uuid, event_type, at, event, _name, worker in change_fields(changes):
                observe(uuid, event_type, at, event, worker)
        if self.forget_pending_after > 0:
            self._forget_stale_pending(self.clock() - self.forget_pending_after)

    def _forget_stale_pending(self, before: float) -> None:
        """Drop the PENDING records first seen before ``before`` (counted as evicted): the
        records are ordered by arrival (a received task moves to the end), so the scan stops
        at the first record newer than that."""
        tasks = self._tasks
        stale: list[str] = []
        for uuid, record in tasks.items():
            if record.first_seen >= before and record.received is None:
                break
            if record.state is PENDING and record.first_seen < before:
                stale.append(uuid)
        for uuid in stale:
            del tasks[uuid]
        self.evicted += len(stale)

    def _observe(
        self,
        uuid: str,
        event_type: str,
        received_at: float,
        event: Mapping[str, Any],
        worker: str | None,
    ) -> None:
        """Merge one task change (its fields) into its task's record."""
        if event_type not in _KINDS:
            return
        hostname = event.get("hostname")
        if type(hostname) is not str:  # the state validated it: only a made-up event may lack it
            hostname = worker or ""
        if len(uuid) > bounds.ID_BYTES // 4:
            uuid = bounds.cut(uuid, bounds.ID_BYTES)  # a crafted 5 kB uuid must not be a key
        tasks = self._tasks
        record = tasks.get(uuid)
        if record is None:
            record = tasks[uuid] = TaskRecord(uuid, received_at)
            if self._known_names:
                record.name = self._known_names.pop(uuid, None)
            if len(tasks) > self.max_tasks:
                tasks.popitem(last=False)
                self.evicted += 1
        elif event_type == TASK_RECEIVED:
            tasks.move_to_end(uuid)  # a retry is received again: it is recent again
        self._merge(record, event, event_type, hostname, received_at)

    def _merge(
        self,
        record: TaskRecord,
        event: Mapping[str, Any],
        event_type: str,
        hostname: str,
        received_at: float,
    ) -> None:
        """Merge one event into its task's record, whatever order the events came in."""
        state, field, rank = _KINDS[event_type]
        timestamp = bounds.timestamp(event.get("timestamp"), received_at)
        event_name = event.get("name")
        if type(event_name) is str and event_name:
            record.name = bounds.cut(event_name, bounds.NAME_BYTES)

        if state is PENDING:
            if record.sent is None or timestamp >= record.sent:
                record.sent = timestamp
            if record.state is None:
                record.state = state
                record.state_timestamp = timestamp
            self._payload(record, event)
            queue = event.get("queue")
            if type(queue) is str:
                record.queue = bounds.cut(queue, bounds.NAME_BYTES)
            return

        record.worker = bounds.cut(hostname, bounds.NAME_BYTES)
        current = record.state
        if (
            current is None
            or current is PENDING
            or timestamp > record.state_timestamp
            or (timestamp == record.state_timestamp and rank >= STATE_RANK[current])
            # LOST is stamped with the exporter's clock: a worker's clock ahead of it must not
            # keep a lost task STARTED forever.
            or (state is LOST and current is STARTED)
        ):
            record.state = state
            record.state_timestamp = timestamp

        if state is STARTED:
            if record.started is None or timestamp >= record.started:
                record.started = timestamp
        elif state is RECEIVED:
            if record.received is None or timestamp >= record.received:
                record.received = timestamp
            self._payload(record, event)
            for name, limit in _RECEIVED_TEXT_FIELDS:
                value = event.get(name)
                if type(value) is str:
                    setattr(record, name, bounds.cut(value, limit))
        elif state is SUCCESS:
            if record.succeeded is None or timestamp >= record.succeeded:
                record.succeeded = timestamp
            record.result = bounds.payload(event.get("result"))
            runtime = bounds.runtime(event.get("runtime"))
            if runtime is not None:
                record.runtime = runtime
            if record.exception_at is not None and timestamp >= record.exception_at:
                record.exception = record.traceback = record.exception_at = None
        else:
            previous = getattr(record, field)
            if previous is None or timestamp >= previous:
                setattr(record, field, timestamp)
            if (state is FAILURE or state is RETRY) and (
                # What a retry said before the task went on to succeed is not the row's story.
                (record.succeeded is None or timestamp > record.succeeded)
                and (record.exception_at is None or timestamp >= record.exception_at)
            ):
                exception = event.get("exception")
                # self.retry() without exc= is reported as the repr of None. Celery sends a
                # repr string: anything else (a crafted nested list) is not kept.
                if type(exception) is str and exception != "None":
                    record.exception = bounds.cut(exception, bounds.PAYLOAD_BYTES)
                    record.exception_at = timestamp
                    traceback = event.get("traceback")
                    record.traceback = (
                        bounds.cut_tail(traceback, bounds.PAYLOAD_BYTES)
                        if type(traceback) is str
                        else None
                    )

    @staticmethod
    def _payload(record: TaskRecord, event: Mapping[str, Any]) -> None:
        """What task-sent and task-received carry: the call's arguments and retry count."""
        args = event.get("args")
        if args is not None:
            record.args = bounds.payload(args)
        kwargs = event.get("kwargs")
        if kwargs is not None:
            record.kwargs = bounds.payload(kwargs)
        retries = bounds.retries(event.get("retries"))
        if retries is not None and (record.retries is None or retries > record.retries):
            record.retries = retries
