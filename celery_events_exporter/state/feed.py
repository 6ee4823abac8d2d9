"""The task changes of one applied batch, as the state hands them to its subscribers.

The counting loop files the changes flat, in one list per batch (``counting.ChangeLog``): each
message's ``received_at`` and JSON body, then three items per task event (its position in the
message, the name and the worker as the ledger knows them). A ``TaskChange`` is made only when a
subscriber reads it, its event decoded again from the body then. The recent-task store keeps
batches unread until someone asks for the Tasks view, so on a busy fleet most changes are never
made into objects: an object per change kept until a read cost the ingest thread a tenth of its
work (most of it in the garbage collector), and the decoded events kept three times the memory
of their JSON (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from celery_events_exporter.events.body import loads
from celery_events_exporter.events.validate import MAX_UUID_LENGTH
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.state.counting import UNKNOWN_TASK, ChangeLog

ChangeFields = tuple[str, str, float, Any, str | None, str | None]
"""A ``TaskChange``'s fields, in its order, without the object."""

CHANGE_JSON_BYTES = 300
"""Bytes of JSON a task change counts for when its sequence does not say (Celery's task events
take about 300 each)."""


def _fields(log: ChangeLog) -> Iterator[ChangeFields]:
    at, events = 0.0, None
    source: Any = None
    index, end = 0, len(log)
    while index < end:
        item = log[index]
        if type(item) is tuple:  # the next message: (received_at, its body or its events)
            at, source = item
            events = None
            index += 1
            continue
        if events is None:  # decoded again, as the decoder did: only when read
            if isinstance(source, (bytes, str)):
                decoded = loads(source)
                events = decoded if type(decoded) is list else (decoded,)
            else:
                events = source
        event: dict[str, Any] = events[item]
        name, worker = log[index + 1], log[index + 2]
        index += 3
        uuid = event["uuid"]  # validated: a non-empty string, cut as the ledger keys it
        yield (
            uuid if len(uuid) <= MAX_UUID_LENGTH else uuid[:MAX_UUID_LENGTH],
            event["type"],
            at,
            event,
            None if name == UNKNOWN_TASK else name,
            worker,
        )


def _changes(log: ChangeLog) -> Iterator[TaskChange]:
    for fields in _fields(log):
        yield TaskChange(*fields)


class ChangeBatch(Sequence[TaskChange]):
    """A batch's task changes in the order they were applied. A change's ``timestamp`` is when
    the exporter received its event (its own clock; the worker's is in the event); ``size`` is
    the bytes of JSON the changes came in, for a subscriber's memory bound.

    A subscriber may keep a batch and read it later on another thread: the state never touches
    a change log once it is handed over (each batch gets a new one), and the message bodies it
    holds are immutable."""

    __slots__ = ("_count", "_log", "size")

    def __init__(self, log: ChangeLog, count: int, size: int) -> None:
        self._log = log
        self._count = count
        self.size = size

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> TaskChange: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[TaskChange]: ...

    def __getitem__(self, index: int | slice) -> TaskChange | Sequence[TaskChange]:
        return list(_changes(self._log))[index]

    def __iter__(self) -> Iterator[TaskChange]:
        return _changes(self._log)

    def fields(self) -> Iterator[ChangeFields]:
        """The changes' fields without the objects, for a subscriber in this package that reads
        every change of every batch it keeps (the recent-task store's merge): a frozen
        dataclass costs six ``object.__setattr__`` calls to make."""
        return _fields(self._log)


def change_fields(changes: Sequence[TaskChange]) -> Iterator[ChangeFields]:
    """The fields of each change, without making objects of a ``ChangeBatch``'s."""
    if isinstance(changes, ChangeBatch):
        return changes.fields()
    return ((c.uuid, c.type, c.timestamp, c.event, c.name, c.worker) for c in changes)


def json_size(changes: Sequence[TaskChange]) -> int:
    """Bytes of JSON ``changes`` came in: a ``ChangeBatch``'s ``size``, else an estimate."""
    if isinstance(changes, ChangeBatch):
        return changes.size
    return CHANGE_JSON_BYTES * len(changes)
