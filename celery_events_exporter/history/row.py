"""One row of ``celery_tasks``: what the events of one task say, merged whatever their order.

A row is built from each event alone (``from_change``) and rows are merged with ``join``, which
is commutative, associative and idempotent: every column is the maximum (or minimum) of what
the two sides hold, or the value that goes with the larger of a key that is itself such a
maximum (a result goes with the latest ``succeeded``). So any permutation or repetition of a
task's events gives the same row, and two exporters merging the same events into one database
row write the same content. ``finish`` derives what is not merged but computed from the merged
columns (state, runtime, updated_at), the same way on every side.

The state rule (docs/task-history.md): the latest event by worker timestamp, lifecycle order
breaking ties, with three exceptions. A ``task-retried`` never overrides a success or a failure
(with ``countdown=0`` the first attempt's retry is often stamped after the second attempt's
success). A task with both ``task-failed`` and ``task-rejected`` (``Reject``) is a FAILURE, as
Celery's result backend and ``events.state`` read it; ``rejected`` stays set. A task found
orphaned while STARTED is LOST. A task seen only as sent for longer than the pending limit reads
UNKNOWN: its worker may send no task events, and no event will ever say how it ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from celery_events_exporter.events.exceptions import exception_class
from celery_events_exporter.events.vocabulary import (
    FAILURE,
    LOST,
    PENDING,
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
from celery_events_exporter.state.changes import TaskChange
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

_WORKER_EVENTS = tuple(t for t in TIME_COLUMN if t not in (TASK_SENT, TASK_ORPHANED))

TimelineEntry = tuple[float, str, str | None, int | None]
"""(timestamp, event type, hostname, retries) of one event in a row's timeline."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    """The columns of ``celery_tasks`` (docs/task-history.md documents each). Times are Unix
    epoch seconds here; the stores write them in their own time type."""

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

# Columns that go with a key: the value of the side whose key is larger is kept.
_WITH_SUCCESS = ("runtime", "result")
_WITH_EXCEPTION = ("exception_type", "exception", "traceback")
_WITH_PAYLOAD = ("args", "kwargs", "eta", "expires")
_WITH_SENT = ("client", "queue", "exchange", "routing_key")


def _cut(value: Any, limit: int) -> str | None:
    return _stored(bounds.cut(value, limit)) if type(value) is str and value else None


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


def from_change(change: TaskChange, redactor: Redactor | None) -> TaskRow | None:
    """The row one event makes; ``None`` for an event the history does not file. Payloads are
    masked with ``redactor`` here, before anything is stored; without one they are left out."""
    values = event_values(change, redactor)
    return None if values is None else TaskRow(**values)


def event_values(change: TaskChange, redactor: Redactor | None) -> dict[str, Any] | None:
    """``from_change``'s columns as a dict (only those the event sets)."""
    column = TIME_COLUMN.get(change.type)
    if column is None or not change.uuid:
        return None
    event = change.event
    # The worker's (or client's) clock, as every column of the row: the change's own timestamp
    # is when the exporter received the event, the fallback for a stamp that is missing or odd.
    moment = (
        bounds.timestamp(event.get("timestamp"), bounds.timestamp(change.timestamp, 0.0)) or None
    )
    if moment is None:
        return None
    hostname = _cut(event.get("hostname"), bounds.NAME_BYTES)
    retries = bounds.retries(event.get("retries"))
    values: dict[str, Any] = {
        "uuid": bounds.cut(change.uuid, bounds.ID_BYTES),
        "name": _cut(event.get("name"), bounds.NAME_BYTES) or _cut(change.name, bounds.NAME_BYTES),
        column: moment,
        "seen_at": moment,
        "retries": retries,
        "events": ((moment, change.type, hostname, retries),),
    }
    if change.type in _WORKER_EVENTS:
        values["worker"] = hostname
    elif change.type == TASK_ORPHANED:
        values["worker"] = hostname or _cut(change.worker, bounds.NAME_BYTES)
    if change.type in (TASK_SENT, TASK_RECEIVED):
        parent = _cut(event.get("parent_id"), bounds.ID_BYTES)
        # A retry is sent again with the task itself as its parent: not a parent.
        values["parent_id"] = None if parent == values["uuid"] else parent
        values["root_id"] = _cut(event.get("root_id"), bounds.ID_BYTES)
        values["eta"] = parse_time(event.get("eta"))
        values["expires"] = parse_time(event.get("expires"))
        if redactor is not None:
            for key in ("args", "kwargs"):
                raw = event.get(key)
                values[key] = None if raw is None else _stored(redactor.payload(raw))
    if change.type == TASK_SENT:
        values["client"] = hostname
        for key in ("queue", "exchange", "routing_key"):
            values[key] = _cut(event.get(key), bounds.NAME_BYTES)
    elif change.type == TASK_SUCCEEDED:
        values["runtime"] = bounds.runtime(event.get("runtime"))
        if redactor is not None and event.get("result") is not None:
            values["result"] = _stored(redactor.payload(event.get("result")))
    elif change.type in (TASK_FAILED, TASK_RETRIED):
        exception = event.get("exception")
        # self.retry() without exc= is reported as the repr of None: no exception.
        if type(exception) is str and exception and exception != "None":
            values["exception_at"] = moment
            values["exception_type"] = exception_class(exception)
            if redactor is not None:
                values["exception"] = _stored(redactor.truncate(redactor.mask_text(exception)))
                traceback = event.get("traceback")
                if type(traceback) is str and traceback:
                    values["traceback"] = _stored(
                        redactor.truncate_tail(redactor.mask_text(traceback))
                    )
    return values


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _min(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


_WORKER_COLUMNS = tuple(TIME_COLUMN[t] for t in (*_WORKER_EVENTS, TASK_ORPHANED))
_EMPTY: dict[str, Any] = {}


def _key_payload(row: dict[str, Any]) -> tuple[int, float]:
    """Arguments come from the latest task-received, else the latest task-sent."""
    received = row.get("received")
    if received is not None:
        return (1, received)
    sent = row.get("sent")
    return (0, sent if sent is not None else -1.0)


def _key_worker(row: dict[str, Any]) -> float:
    """The worker is the one of the latest worker event (an orphan verdict names it too)."""
    best = -1.0
    for column in _WORKER_COLUMNS:
        moment = row.get(column)
        if moment is not None and moment > best:
            best = moment
    return best


def _pick(
    acc: dict[str, Any], ka: Any, b: dict[str, Any], kb: Any, columns: tuple[str, ...]
) -> None:
    """``columns`` from the side whose key is larger; column by column the larger value when
    the keys are equal (two events of one instant)."""
    if ka > kb:
        return
    if kb > ka:
        for c in columns:
            acc[c] = b.get(c)
        return
    for c in columns:
        acc[c] = _max(acc.get(c), b.get(c))


def _timeline(
    a: tuple[TimelineEntry, ...], b: tuple[TimelineEntry, ...]
) -> tuple[TimelineEntry, ...]:
    if not b or a == b:
        return a
    if not a:
        return b
    merged = sorted(set(a) | set(b), key=_entry_order)
    return tuple(merged[-MAX_TIMELINE:])


def _entry_order(entry: TimelineEntry) -> tuple[float, str, str, int]:
    return (entry[0], entry[1], entry[2] or "", -1 if entry[3] is None else entry[3])


def join_into(acc: dict[str, Any], b: dict[str, Any], *, timeline: bool = True) -> None:
    """Join the columns ``b`` holds into ``acc``: the join of ``join``, on dicts (a missing
    column is null), in place: the writer folds a task's events with it."""
    get, bget = acc.get, b.get
    _pick(acc, get("succeeded") or -1.0, b, bget("succeeded") or -1.0, _WITH_SUCCESS)
    _pick(acc, get("exception_at") or -1.0, b, bget("exception_at") or -1.0, _EXCEPTION_GROUP)
    _pick(acc, _key_payload(acc), b, _key_payload(b), _WITH_PAYLOAD)
    _pick(acc, get("sent") or -1.0, b, bget("sent") or -1.0, _WITH_SENT)
    _pick(acc, _key_worker(acc), b, _key_worker(b), ("worker",))
    for column in _MAX_COLUMNS:
        value = bget(column)
        if value is not None:
            mine = get(column)
            if mine is None or value > mine:
                acc[column] = value
    seen = bget("seen_at")
    if seen is not None:
        mine = get("seen_at")
        if mine is None or seen < mine:
            acc["seen_at"] = seen
    if timeline:
        acc["events"] = _timeline(get("events", ()), bget("events", ()))


_EXCEPTION_GROUP = ("exception_at", *_WITH_EXCEPTION)
_MAX_COLUMNS = ("name", *TIME_COLUMN.values(), "retries", "parent_id", "root_id")


def join(a: TaskRow, b: TaskRow) -> TaskRow:
    """The row of the events of ``a`` and ``b`` together (the derived columns are ``finish``'s)."""
    acc = {column: getattr(a, column) for column in COLUMNS}
    join_into(acc, {column: getattr(b, column) for column in COLUMNS})
    for derived in ("state", "updated_at"):
        acc[derived] = None
    return TaskRow(**acc)


def fold(changes: Sequence[TaskChange], redactor: Redactor | None) -> TaskRow | None:
    """The row of one task's ``changes`` (all of the same uuid): the join of their rows."""
    acc: dict[str, Any] | None = None
    entries: list[TimelineEntry] = []
    for change in changes:
        values = event_values(change, redactor)
        if values is None:
            continue
        entries.extend(values["events"])
        if acc is None:
            acc = values
        else:
            join_into(acc, values, timeline=False)
    if acc is None:
        return None
    if len(entries) > 1:
        acc["events"] = tuple(sorted(set(entries), key=_entry_order)[-MAX_TIMELINE:])
    return TaskRow(**acc)


def state_of(row: TaskRow) -> str | None:
    """The state the merged times say (see the module's docstring)."""
    finished = row.succeeded is not None or row.failed is not None
    best: tuple[float, int] | None = None
    state: str | None = None
    for event_type, column in TIME_COLUMN.items():
        moment = getattr(row, column)
        if moment is None:
            continue
        candidate = TASK_EVENT_STATES[event_type]
        if candidate is RETRY and finished:
            continue
        if candidate is LOST:
            continue  # the exporter's own verdict, stamped with its clock: see below
        key = (moment, STATE_RANK[candidate])
        if best is None or key > best:
            best, state = key, candidate
    if state == "REJECTED" and row.failed is not None:
        state = FAILURE
    if row.orphaned is not None and (state is STARTED or state is None):
        state = LOST
    return state


def finish(row: TaskRow, *, pending_before: float | None = None) -> TaskRow:
    """``row`` with its derived columns: state, runtime of a failure, updated_at. A task seen
    only as sent before ``pending_before`` reads UNKNOWN."""
    state = state_of(row)
    if state is PENDING and pending_before is not None and (row.sent or 0.0) < pending_before:
        state = UNKNOWN
    times = [getattr(row, c) for c in TIME_COLUMN.values()]
    updated = max((t for t in times if t is not None), default=None)
    runtime = row.runtime if row.succeeded is not None else None
    if (
        runtime is None
        and state == FAILURE
        and row.failed is not None
        and row.started is not None
        and row.failed >= row.started
    ):
        runtime = round(row.failed - row.started, 6)
    if state == row.state and updated == row.updated_at and runtime == row.runtime:
        return row
    return replace(row, state=state, updated_at=updated, runtime=runtime)


def merged(rows: list[TaskRow], pending_before: float | None = None) -> TaskRow:
    """Every row of one task joined and finished."""
    total = rows[0]
    for row in rows[1:]:
        total = join(total, row)
    return finish(total, pending_before=pending_before)


def approximate_bytes(change: TaskChange) -> int:
    """What a change costs the writer's buffer, roughly: its event's text fields."""
    size = 200
    for value in change.event.values():
        if type(value) is str:
            size += len(value)
    return size
