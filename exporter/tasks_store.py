"""The recent tasks of the Tasks view: one record per task uuid, bounded, oldest evicted first.

Fed by ``State.task_observer``, so ``observe`` runs on the ingest thread under the state lock for
every message: it only files each task event under its uuid. The events are merged into a
``TaskRecord`` when the task is read, so tasks evicted unread (most of them on a busy fleet) cost
no merging at all. Payloads are kept exactly as the events carry them (Celery's repr strings, cut
to a fixed length when merged); parsing and masking wait until someone asks for them
(exporter/redact.py). Memory: up to ``max_tasks`` tasks, each with its record and at most
``FOLD_AFTER`` unmerged events; events with tracebacks are merged (and cut) on arrival.

Events of one task can arrive out of order (a prefork worker's pool processes and its main process
publish separately, and batch them). Every field an event carries is merged whatever its order;
the state moves only to an event at least as recent as the one that set the current state (the
worker's timestamps, then the lifecycle's order for a tie), so a late task-started never turns a
SUCCESS back into STARTED.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from exporter.state import TaskEvent

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"
REJECTED = "REJECTED"

EVENT_STATES: dict[str, str] = {
    "task-sent": PENDING,
    "task-received": RECEIVED,
    "task-started": STARTED,
    "task-succeeded": SUCCESS,
    "task-failed": FAILURE,
    "task-retried": RETRY,
    "task-revoked": REVOKED,
    "task-rejected": REJECTED,
}
STATES: tuple[str, ...] = tuple(EVENT_STATES.values())

# Ties between equal timestamps are broken by how far along the lifecycle a state is.
_RANK = {PENDING: 0, RECEIVED: 1, STARTED: 2, RETRY: 3, FAILURE: 4, SUCCESS: 5, REJECTED: 6,
         REVOKED: 7}  # fmt: skip

STORED_TEXT_LIMIT = LIMIT = 4096
"""Characters kept of each payload, exception and traceback (Celery's own reprs stop at 1024);
a traceback keeps its end."""


class TaskRecord:
    """What the events told about one task. Timestamps are the worker's (event ``timestamp``),
    falling back to the exporter's clock when an event has none."""

    __slots__ = (
        "args",
        "eta",
        "exception",
        "expires",
        "failed",
        "first_seen",
        "kwargs",
        "name",
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
    event_type: (state, event_type.removeprefix("task-"), _RANK[state])
    for event_type, state in EVENT_STATES.items()
}


FOLD_AFTER = 8
"""Pending events a task may hold before they are merged into its record: bounds the memory of a
task that keeps emitting (retries, custom events) when nobody reads the store."""

_FOLD_AT_ONCE = frozenset({"task-failed", "task-retried"})
"""Events merged on arrival: they carry tracebacks, which are unbounded until cut."""


class RecentTasks:
    """Up to ``max_tasks`` task records; the oldest (by last task-received) is evicted first.

    Merging is deferred: ``observe`` only appends the event to its task's entry, and the entry is
    merged into a ``TaskRecord`` when someone reads it (``get``, ``records``). At a busy fleet's
    rate almost every task is evicted before any read, so its events are never merged at all:
    the merge, half of the ingest thread's cost per event when it ran on arrival, is paid only
    for the tasks a query can still reach. Merging in arrival order gives the same record as
    merging on arrival did.
    """

    def __init__(self, max_tasks: int) -> None:
        if max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, list[Any]] = OrderedDict()
        """uuid -> [TaskRecord or None, *pending events]"""
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, uuid: str) -> TaskRecord | None:
        """The task's record, its pending events merged; call with the state lock held."""
        entry = self._tasks.get(uuid)
        if entry is None:
            return None
        if len(entry) > 1:
            self._fold(uuid, entry)
        record: TaskRecord | None = entry[0]
        return record

    def observe(self, events: list[TaskEvent]) -> None:
        """``State.task_observer``: keep a message's task events. The caller holds the state
        lock."""
        tasks = self._tasks
        for event in events:
            uuid = event[0].get("uuid")
            if type(uuid) is not str or not uuid:
                continue
            event_type = event[1]
            entry = tasks.get(uuid)
            if entry is None:
                entry = tasks[uuid] = [None, event]
                if len(tasks) > self.max_tasks:
                    tasks.popitem(last=False)
                    self.evicted += 1
            else:
                entry.append(event)
                if event_type == "task-received":
                    tasks.move_to_end(uuid)  # a retry is received again: it is recent again
                if len(entry) > FOLD_AFTER:
                    self._fold(uuid, entry)
                    continue
            if event_type in _FOLD_AT_ONCE:
                self._fold(uuid, entry)

    def _fold(self, uuid: str, entry: list[Any]) -> None:
        record: TaskRecord | None = entry[0]
        if record is None:
            record = entry[0] = TaskRecord(uuid, entry[1][4])
        merge = self._merge
        for pending in entry[1:]:
            merge(record, *pending)
        del entry[1:]

    def _merge(
        self,
        record: TaskRecord,
        event: dict[str, Any],
        event_type: str,
        name: str,
        hostname: str,
        received_at: float,
    ) -> None:
        """Merge one event into its task's record, whatever order the events came in."""
        kind = _KINDS.get(event_type)
        if kind is None:  # a custom event (Task.send_event): nothing of Celery's task states
            return
        state, field, rank = kind
        timestamp = event.get("timestamp")
        if type(timestamp) is not float:
            timestamp = float(timestamp) if type(timestamp) is int else received_at
        event_name = event.get("name")
        if type(event_name) is str and event_name:
            record.name = event_name
        elif record.name is None and name != "unknown":
            record.name = name

        if state is PENDING:
            if record.sent is None or timestamp >= record.sent:
                record.sent = timestamp
            if record.state is None:
                record.state = state
                record.state_timestamp = timestamp
            self._payload(record, event)
            queue = event.get("queue")
            if type(queue) is str:
                record.queue = queue
            return

        record.worker = hostname
        current = record.state
        if (
            current is None
            or current is PENDING
            or timestamp > record.state_timestamp
            or (timestamp == record.state_timestamp and rank >= _RANK[current])
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
            value = event.get("eta")
            if type(value) is str:
                record.eta = value
            value = event.get("expires")
            if type(value) is str:
                record.expires = value
            value = event.get("root_id")
            if type(value) is str:
                record.root_id = value
            value = event.get("parent_id")
            if type(value) is str:
                record.parent_id = value
        elif state is SUCCESS:
            if record.succeeded is None or timestamp >= record.succeeded:
                record.succeeded = timestamp
            result = event.get("result")
            record.result = (
                result if type(result) is not str or len(result) <= LIMIT else result[:LIMIT]
            )
            runtime = event.get("runtime")
            if (type(runtime) is float or type(runtime) is int) and runtime >= 0:
                record.runtime = float(runtime)
        else:
            previous = getattr(record, field)
            if previous is None or timestamp >= previous:
                setattr(record, field, timestamp)
            if state is FAILURE or state is RETRY:
                exception = event.get("exception")
                # self.retry() without exc= is reported as the repr of None.
                if exception is not None and exception != "None":
                    text = exception if type(exception) is str else str(exception)
                    record.exception = text if len(text) <= LIMIT else text[:LIMIT]
                traceback = event.get("traceback")
                if type(traceback) is str:
                    record.traceback = traceback if len(traceback) <= LIMIT else traceback[-LIMIT:]

    @staticmethod
    def _payload(record: TaskRecord, event: dict[str, Any]) -> None:
        """What task-sent and task-received carry: the call's arguments and retry count."""
        args = event.get("args")
        if args is not None:
            record.args = args if type(args) is not str or len(args) <= LIMIT else args[:LIMIT]
        kwargs = event.get("kwargs")
        if kwargs is not None:
            record.kwargs = (
                kwargs if type(kwargs) is not str or len(kwargs) <= LIMIT else kwargs[:LIMIT]
            )
        retries = event.get("retries")
        if type(retries) is int and (record.retries is None or retries > record.retries):
            record.retries = retries

    def records(self) -> list[TaskRecord]:
        """The live records, oldest first, their pending events merged; call with the state lock
        held, and ``copy()`` (under the lock again) those to be shown: the ingest thread keeps
        updating them."""
        fold = self._fold
        records = []
        for uuid, entry in self._tasks.items():
            if len(entry) > 1:
                fold(uuid, entry)
            records.append(entry[0])
        return records
