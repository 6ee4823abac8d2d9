"""One row of ``celery_tasks``: what the events of one task say, folded whatever their order.

The writer folds each task event into its task's row as it reads it (``Rows.fold``). Every
column is the maximum (or minimum) of what the events hold, or the value that goes with the
larger of a key that is itself such a maximum (a result goes with the latest ``succeeded``), so
any permutation or repetition of a task's events gives the same row. The database merges a row
into the one it holds by the same rules, in SQL (``sql.Dialect.upsert``): a task whose events
span several flush windows, or that two exporters write, ends as one row holding all its
events, whatever the order of the writes. ``finish`` derives what is not merged but computed
from the merged columns (state, runtime, updated_at), as the SQL merge does.

The state rule (docs/task-history.md): the latest event by worker timestamp, lifecycle order
breaking ties, with four exceptions. A ``task-sent`` never overrides a worker's event: the client
stamps it after publishing the task, so a worker quick to run it (or a client slow to get the
CPU back) sends received, started and succeeded with earlier stamps. A ``task-retried`` never
overrides a success or a failure (with ``countdown=0`` the first attempt's retry is often
stamped after the second attempt's success). A task with both ``task-failed`` and
``task-rejected`` (``Reject``) is a FAILURE, as Celery's result backend and ``events.state``
read it; ``rejected`` stays set. A task found orphaned while STARTED is LOST. A task seen only
as sent for longer than the pending limit reads UNKNOWN: its worker may send no task events,
and no event will ever say how it ended.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from celery_events_exporter.events.exceptions import exception_class
from celery_events_exporter.events.vocabulary import (
    FAILURE,
    LOST,
    PENDING,
    REJECTED,
    RETRY,
    STARTED,
    STATE_RANK,
    TASK_EVENT_STATES,
    TASK_FAILED,
    TASK_ORPHANED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
)
from celery_events_exporter.state.feed import ChangeFields
from celery_events_exporter.tasks import bounds
from celery_events_exporter.tasks.redact import Redactor

UNKNOWN = "UNKNOWN"
"""The history's state for a task seen only as sent for longer than the pending limit."""

HISTORY_STATES: tuple[str, ...] = (*dict.fromkeys(TASK_EVENT_STATES.values()), UNKNOWN)

MAX_TIMELINE = 64
"""Events kept in a row's timeline: the latest ones (a task retried 100 times keeps its last)."""

TIME_COLUMN = {
    TASK_SENT: "sent",
    TASK_RECEIVED: "received",
    TASK_STARTED: "started",
    TASK_SUCCEEDED: "succeeded",
    TASK_FAILED: "failed",
    TASK_RETRIED: "retried",
    TASK_REVOKED: "revoked",
    TASK_REJECTED: "rejected",
    TASK_ORPHANED: "orphaned",
}
"""Task event type -> the column holding the latest time of that event."""

TimelineEntry = tuple[float, str, str | None, int | None]
"""(timestamp, event type, hostname, retries) of one event in a row's timeline."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    """The columns of ``celery_tasks`` (docs/task-history.md documents each), as read back.
    Times are Unix epoch seconds here; the stores write them in their own time type."""

    uuid: str
    name: str | None = None
    state: str | None = None
    worker: str | None = None
    client: str | None = None
    seen_at: float | None = None
    updated_at: float | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    retried: float | None = None
    revoked: float | None = None
    rejected: float | None = None
    orphaned: float | None = None
    runtime: float | None = None
    retries: int | None = None
    exception_type: str | None = None
    exception_at: float | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    eta: float | None = None
    expires: float | None = None
    events: tuple[TimelineEntry, ...] = ()


COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(TaskRow))
TIME_COLUMNS: frozenset[str] = frozenset(
    {"seen_at", "updated_at", "exception_at", "eta", "expires", *TIME_COLUMN.values()}
)

RowValues = list[Any]
"""A row as the writer hands it to a store: the columns in ``COLUMNS`` order, times in epoch
seconds, the timeline a tuple of ``TimelineEntry`` (``finish``'s output)."""

# Columns that go with a key: the value of the side whose key is larger is kept; column by
# column the larger value when the keys are equal (two events of one instant).
WITH_SUCCESS = ("runtime", "result")
"""... with the latest ``succeeded``."""
WITH_EXCEPTION = ("exception_at", "exception_type", "exception", "traceback")
"""... with the latest exception (``exception_at``)."""
WITH_PAYLOAD = ("args", "kwargs", "eta", "expires")
"""... with the latest ``received``, else the latest ``sent``."""
WITH_SENT = ("client", "queue", "exchange", "routing_key")
"""... with the latest ``sent``."""
WORKER_TIMES = tuple(
    TIME_COLUMN[t]
    for t in (TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED, TASK_RETRIED,
              TASK_REVOKED, TASK_REJECTED, TASK_ORPHANED)
)  # fmt: skip
"""``worker`` goes with the latest of these (an orphan verdict names the worker too)."""
MAX_COLUMNS = ("name", *TIME_COLUMN.values(), "retries", "parent_id", "root_id")
"""Columns holding the largest value any event gave."""

_AT = {column: index for index, column in enumerate(COLUMNS)}
WIDTH = len(COLUMNS)
UUID, EVENTS = _AT["uuid"], _AT["events"]
"""Positions in ``RowValues`` that the writer and the stores read."""
_NAME, _STATE, _WORKER, _SEEN_AT = _AT["name"], _AT["state"], _AT["worker"], _AT["seen_at"]
_UPDATED_AT, _RETRIES = _AT["updated_at"], _AT["retries"]
_SENT, _RECEIVED, _STARTED = _AT["sent"], _AT["received"], _AT["started"]
_SUCCEEDED, _FAILED, _ORPHANED = _AT["succeeded"], _AT["failed"], _AT["orphaned"]
_PARENT_ID, _ROOT_ID = _AT["parent_id"], _AT["root_id"]
_SUCCESS_AT = _RUNTIME, _RESULT = tuple(_AT[c] for c in WITH_SUCCESS)
_EXCEPTION_GROUP = _EXCEPTION_AT, _EXCEPTION_TYPE, _EXCEPTION, _TRACEBACK = tuple(
    _AT[c] for c in WITH_EXCEPTION
)
_PAYLOAD_AT = _ARGS, _KWARGS, _ETA, _EXPIRES = tuple(_AT[c] for c in WITH_PAYLOAD)
_SENT_AT = _CLIENT, _QUEUE, _EXCHANGE, _ROUTING_KEY = tuple(_AT[c] for c in WITH_SENT)
_times = operator.itemgetter(*(_AT[c] for c in TIME_COLUMN.values()))
_STATE_TIMES = tuple(
    (_AT[column], TASK_EVENT_STATES[event_type], STATE_RANK[TASK_EVENT_STATES[event_type]])
    for event_type, column in TIME_COLUMN.items()
    if event_type != TASK_ORPHANED  # the exporter's own verdict, stamped with its clock
)

# Slots past the columns while a row is folded.
_WORKER_AT = WIDTH
"""The latest time of a worker event (``WORKER_TIMES``): the key ``worker`` goes with."""
_COST = WIDTH + 1
"""Bytes the row is accounted for in the writer's buffer."""
_SLOTS = WIDTH + 2

ROW_BYTES = 1000
"""Bytes a folded row costs besides its timeline and payloads: its list, its uuid and the
dict slot keeping it, the texts it holds (measured with tracemalloc: bench/README.md)."""
ENTRY_BYTES = 180
"""Bytes one event adds to a folded row: its timeline entry and its hostname."""

_SENT_KIND, _RECEIVED_KIND, _SUCCESS_KIND, _EXCEPTION_KIND, _WORKER_KIND, _ORPHAN_KIND = range(6)
_KIND = {
    TASK_SENT: _SENT_KIND,
    TASK_RECEIVED: _RECEIVED_KIND,
    TASK_STARTED: _WORKER_KIND,
    TASK_SUCCEEDED: _SUCCESS_KIND,
    TASK_FAILED: _EXCEPTION_KIND,
    TASK_RETRIED: _EXCEPTION_KIND,
    TASK_REVOKED: _WORKER_KIND,
    TASK_REJECTED: _WORKER_KIND,
    TASK_ORPHANED: _ORPHAN_KIND,
}
_TIME_AT = {event_type: _AT[column] for event_type, column in TIME_COLUMN.items()}

_MAX_TIMESTAMP = bounds.MAX_TIMESTAMP
_MAX_RETRIES = bounds.MAX_RETRIES
_ID_BYTES, _NAME_BYTES = bounds.ID_BYTES, bounds.NAME_BYTES


def _text(value: Any, limit: int) -> str | None:
    """A text column's value: a non-empty string within ``limit`` bytes, as stored; ``None``
    for anything else."""
    if type(value) is not str or not value:
        return None
    if len(value) > limit // 4 or "\x00" in value:  # else short enough and nothing to replace
        return _stored(bounds.cut(value, limit))
    return value


def _stored(text: str) -> str:
    """``text`` as a database keeps it: PostgreSQL refuses NUL in text and JSON (a crafted
    event would otherwise get its whole batch refused)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def parse_time(value: Any) -> float | None:
    """An ``eta``/``expires`` as Celery sends it (ISO 8601; a number from old clients) in epoch
    seconds; ``None`` when it is neither."""
    if type(value) in (int, float):
        return float(value) if 0 < value < bounds.MAX_TIMESTAMP else None
    if type(value) is not str or not value or len(value) > bounds.SHORT_TEXT_BYTES:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _larger(row: list[Any], columns: tuple[int, ...], new: tuple[Any, ...]) -> None:
    """Column by column the larger of ``row``'s value and ``new``'s (values in ``columns``
    order): what goes with a key when two events of one instant give it."""
    for column, value in zip(columns, new, strict=True):
        row[column] = _max(row[column], value)


class Rows:
    """The rows of the tasks whose events were folded and not yet written, by uuid, with the
    bytes they are accounted for (``bytes``). Payloads are masked with ``redactor`` as they are
    folded, before anything is stored; without one they are left out. One thread only."""

    def __init__(self, redactor: Redactor | None) -> None:
        self.redactor = redactor
        self.by_uuid: dict[str, list[Any]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.by_uuid)

    def fold(self, changes: Iterable[ChangeFields]) -> None:
        """Fold each task change into its task's row; events the history does not file (no
        uuid, another type, no usable timestamp) are skipped."""
        rows = self.by_uuid
        added = 0
        kinds, times = _KIND, _TIME_AT
        for uuid, event_type, at, event, ledger_name, ledger_worker in changes:
            kind = kinds.get(event_type)
            if kind is None or not uuid:
                continue
            # The worker's (or client's) clock, as every column of the row: the change's own
            # timestamp is when the exporter received the event, the fallback for a stamp that
            # is missing or odd.
            moment = event.get("timestamp")
            if (type(moment) is float or type(moment) is int) and 0 < moment < _MAX_TIMESTAMP:
                moment = float(moment)
            elif (type(at) is float or type(at) is int) and 0 < at < _MAX_TIMESTAMP:
                moment = float(at)
            else:
                continue
            if len(uuid) > _ID_BYTES // 4:
                uuid = bounds.cut(uuid, _ID_BYTES)
            host = _text(event.get("hostname"), _NAME_BYTES)
            retries = event.get("retries")
            if type(retries) is not int or not 0 <= retries <= _MAX_RETRIES:
                retries = None
            name = _text(event.get("name"), _NAME_BYTES) or _text(ledger_name, _NAME_BYTES)
            row = rows.get(uuid)
            if row is None:
                row = [None] * _SLOTS
                row[UUID] = uuid
                row[EVENTS] = []
                row[_WORKER_AT] = -1.0
                row[_COST] = ROW_BYTES
                added += ROW_BYTES
                rows[uuid] = row
            cost = ENTRY_BYTES
            # What goes with a key, by the keys the row holds before this event.
            if kind == _SENT_KIND:
                cost += self._sent(row, uuid, moment, event, host)
            elif kind == _RECEIVED_KIND:
                cost += self._received(row, uuid, moment, event)
            elif kind == _SUCCESS_KIND:
                succeeded = row[_SUCCEEDED]
                if succeeded is None or moment >= succeeded:
                    result = None
                    if self.redactor is not None and event.get("result") is not None:
                        result = _stored(self.redactor.payload(event.get("result")))
                        cost += len(result)
                    runtime = bounds.runtime(event.get("runtime"))
                    if succeeded is None or moment > succeeded:
                        row[_RUNTIME], row[_RESULT] = runtime, result
                    else:
                        _larger(row, _SUCCESS_AT, (runtime, result))
            elif kind == _EXCEPTION_KIND:
                cost += self._exception(row, moment, event)
            if kind != _SENT_KIND:
                worker_at = row[_WORKER_AT]
                worker = host
                if kind == _ORPHAN_KIND and worker is None:
                    worker = _text(ledger_worker, _NAME_BYTES)
                if moment > worker_at:
                    row[_WORKER] = worker
                    row[_WORKER_AT] = moment
                elif moment == worker_at:
                    row[_WORKER] = _max(row[_WORKER], worker)
            # The maxima and the minimum.
            column = times[event_type]
            mine = row[column]
            if mine is None or moment > mine:
                row[column] = moment
            if name is not None:
                mine = row[_NAME]
                if mine is None or name > mine:
                    row[_NAME] = name
            if retries is not None:
                mine = row[_RETRIES]
                if mine is None or retries > mine:
                    row[_RETRIES] = retries
            mine = row[_SEEN_AT]
            if mine is None or moment < mine:
                row[_SEEN_AT] = moment
            entries = row[EVENTS]
            entries.append((moment, event_type, host, retries))
            if len(entries) > 2 * MAX_TIMELINE:  # a task retried without end
                kept = row[EVENTS] = _timeline(entries)
                cost -= ENTRY_BYTES * (len(entries) - len(kept))
            row[_COST] += cost
            added += cost
        self.bytes += added

    def _payload(
        self, row: list[Any], uuid: str, key_row: tuple[int, float], key_new: tuple[int, float],
        event: Any,
    ) -> int:  # fmt: skip
        """Arguments, eta and expires, parent and root: from task-sent and task-received."""
        parent = _text(event.get("parent_id"), _ID_BYTES)
        # A retry is sent again with the task itself as its parent: not a parent.
        if parent is not None and parent != uuid:
            row[_PARENT_ID] = _max(row[_PARENT_ID], parent)
        root = _text(event.get("root_id"), _ID_BYTES)
        if root is not None:
            row[_ROOT_ID] = _max(row[_ROOT_ID], root)
        if key_row > key_new:
            return 0
        args = kwargs = None
        cost = 0
        redactor = self.redactor
        if redactor is not None:
            raw = event.get("args")
            if raw is not None:
                args = _stored(redactor.payload(raw))
                cost += len(args)
            raw = event.get("kwargs")
            if raw is not None:
                kwargs = _stored(redactor.payload(raw))
                cost += len(kwargs)
        eta, expires = event.get("eta"), event.get("expires")
        if eta is not None:
            eta = parse_time(eta)
        if expires is not None:
            expires = parse_time(expires)
        if key_new > key_row:
            row[_ARGS], row[_KWARGS], row[_ETA], row[_EXPIRES] = args, kwargs, eta, expires
        else:
            _larger(row, _PAYLOAD_AT, (args, kwargs, eta, expires))
        return cost

    def _sent(self, row: list[Any], uuid: str, moment: float, event: Any, host: str | None) -> int:
        sent = row[_SENT]
        received = row[_RECEIVED]
        cost = self._payload(
            row,
            uuid,
            (0, -1.0 if sent is None else sent) if received is None else (1, received),
            (0, moment),
            event,
        )
        if sent is None or moment >= sent:
            values = (
                host,
                _text(event.get("queue"), _NAME_BYTES),
                _text(event.get("exchange"), _NAME_BYTES),
                _text(event.get("routing_key"), _NAME_BYTES),
            )
            if sent is None or moment > sent:
                row[_CLIENT], row[_QUEUE], row[_EXCHANGE], row[_ROUTING_KEY] = values
            else:
                _larger(row, _SENT_AT, values)
        return cost

    def _received(self, row: list[Any], uuid: str, moment: float, event: Any) -> int:
        received = row[_RECEIVED]
        if received is None:
            sent = row[_SENT]
            key_row = (0, -1.0 if sent is None else sent)
        else:
            key_row = (1, received)
        return self._payload(row, uuid, key_row, (1, moment), event)

    def _exception(self, row: list[Any], moment: float, event: Any) -> int:
        exception = event.get("exception")
        # self.retry() without exc= is reported as the repr of None: no exception.
        if type(exception) is not str or not exception or exception == "None":
            return 0
        exception_at = row[_EXCEPTION_AT]
        if exception_at is not None and exception_at > moment:
            return 0
        text = traceback = None
        cost = 0
        redactor = self.redactor
        if redactor is not None:
            text = _stored(redactor.truncate(redactor.mask_text(exception)))
            cost += len(text)
            raw = event.get("traceback")
            if type(raw) is str and raw:
                traceback = _stored(redactor.truncate_tail(redactor.mask_text(raw)))
                cost += len(traceback)
        values = (moment, exception_class(exception), text, traceback)
        if exception_at is None or moment > exception_at:
            row[_EXCEPTION_AT], row[_EXCEPTION_TYPE], row[_EXCEPTION], row[_TRACEBACK] = values
        else:
            _larger(row, _EXCEPTION_GROUP, values)
        return cost

    def take(self, uuid: str) -> None:
        """Forget the row of ``uuid`` (written, or refused)."""
        row = self.by_uuid.pop(uuid, None)
        if row is not None:
            self.bytes -= row[_COST]

    def finished(self, pending_before: float | None) -> list[RowValues]:
        """Every row, finished (``finish``), for the store."""
        return [finish(row, pending_before) for row in self.by_uuid.values()]


def _entry_order(entry: TimelineEntry) -> tuple[float, str, str, int]:
    return (entry[0], entry[1], entry[2] or "", -1 if entry[3] is None else entry[3])


def _timeline(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """The distinct entries in time order, the latest ``MAX_TIMELINE``."""
    distinct = set(entries)
    try:  # tuples compare as the order does, unless a None meets a value (two events alike)
        ordered = sorted(distinct)
    except TypeError:
        ordered = sorted(distinct, key=_entry_order)
    return ordered[-MAX_TIMELINE:]


def finish(row: list[Any], pending_before: float | None = None) -> RowValues:
    """A folded row's columns (a copy) with its timeline in order and its derived columns:
    state, updated_at, and the runtime of a task that failed without a success (failed minus
    started; a success keeps the worker's runtime). A task seen only as sent before
    ``pending_before`` reads UNKNOWN."""
    values = row[:WIDTH]
    entries = values[EVENTS]
    values[EVENTS] = tuple(_timeline(entries) if len(entries) > 1 else entries)
    state = state_of(values)
    if state == PENDING and pending_before is not None and (values[_SENT] or 0.0) < pending_before:
        state = UNKNOWN
    values[_STATE] = state
    values[_UPDATED_AT] = max([t for t in _times(values) if t is not None], default=None)
    if values[_SUCCEEDED] is None:  # else the worker's runtime of the success
        failed, started = values[_FAILED], values[_STARTED]
        values[_RUNTIME] = (
            round(failed - started, 6)
            if state == FAILURE and failed is not None and started is not None and failed >= started
            else None
        )
    return values


def state_of(values: RowValues) -> str | None:
    """The state the merged times say (see the module's docstring)."""
    finished = values[_SUCCEEDED] is not None or values[_FAILED] is not None
    best: tuple[float, int] | None = None
    state: str | None = None
    for column, candidate, rank in _STATE_TIMES:
        moment = values[column]
        if moment is None or (candidate == RETRY and finished) or candidate == PENDING:
            continue
        key = (moment, rank)
        if best is None or key > best:
            best, state = key, candidate
    if state is None and values[_SENT] is not None:
        state = PENDING  # a sent task no worker has spoken of yet
    if state == REJECTED and values[_FAILED] is not None:
        state = FAILURE
    if values[_ORPHANED] is not None and (state == STARTED or state is None):
        state = LOST
    return state


def task_row(values: RowValues) -> TaskRow:
    """The ``TaskRow`` of a row's columns (``COLUMNS`` order)."""
    return TaskRow(*values)
