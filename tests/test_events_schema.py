"""celery_events_exporter.events.schema: the task events of a message decoded with only the
fields the state reads, and only where the full read (``body.loads``) would read the same: any
other message is left to the full read, so that the state's checks and rejections see it."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_events_exporter.decoder import Decoder
from celery_events_exporter.events import vocabulary
from celery_events_exporter.events.body import loads
from celery_events_exporter.events.decode import decode_events
from celery_events_exporter.events.schema import TaskEvent, task_events
from celery_events_exporter.events.validate import MAX_UUID_LENGTH, validate
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.state import State, StateSettings, TaskChange

FIELDS = ("hostname", "uuid", "name", "exception", "runtime", "timestamp", "type", "queue")

UUID = "6a1c2f0e-0000-4000-8000-000000000001"
RECEIVED: dict[str, Any] = {
    "hostname": "celery@w1",
    "utcoffset": 0.0,
    "pid": 10,
    "clock": 7,
    "uuid": UUID,
    "name": "tasks.add",
    "args": "(1, 2)",
    "kwargs": "{}",
    "root_id": None,
    "parent_id": None,
    "retries": 0,
    "eta": None,
    "expires": None,
    "timestamp": 1796582504.6367533,
    "type": "task-received",
}
STARTED = {
    "hostname": "celery@w1",
    "uuid": UUID,
    "timestamp": 1796582504.75,
    "type": "task-started",
}
FAILED = {
    "hostname": "celery@w1",
    "uuid": UUID,
    "exception": "KeyError('k')",
    "traceback": "Traceback...",
    "timestamp": 1796582505,
    "type": "task-failed",
}


def test_a_task_multi_message_is_read_with_the_fields_the_state_reads() -> None:
    events = task_events(orjson.dumps([RECEIVED, STARTED, FAILED]))
    assert events == [
        TaskEvent(
            hostname="celery@w1",
            uuid=UUID,
            name="tasks.add",
            timestamp=1796582504.6367533,
            type="task-received",
        ),
        TaskEvent(
            hostname="celery@w1",
            uuid=UUID,
            timestamp=1796582504.75,
            type="task-started",
        ),
        TaskEvent(
            hostname="celery@w1",
            uuid=UUID,
            exception="KeyError('k')",
            timestamp=1796582505,
            type="task-failed",
        ),
    ]
    # The vocabulary's own strings: the state's tables are keyed by them.
    assert events[0].type is vocabulary.TASK_RECEIVED
    assert type(events[2].timestamp) is int


def test_one_task_event_alone_is_a_list_of_one() -> None:
    sent = {
        "hostname": "client@a",
        "uuid": "u1",
        "name": "t",
        "queue": "celery",
        "type": "task-sent",
    }
    assert task_events(json.dumps(sent)) == [
        TaskEvent(hostname="client@a", uuid="u1", name="t", queue="celery", type="task-sent")
    ]


H, U, T = b'"hostname": "w@h"', b'"uuid": "u1"', b'"type": "task-started"'


def one(*fields: bytes) -> bytes:
    """A task.multi list of one event made of ``fields`` (JSON members, as bytes)."""
    return b"[{" + b", ".join(fields) + b"}]"


@pytest.mark.parametrize(
    "body",
    [
        # Events of other kinds: the state reads other fields of them (or checks them).
        b'{"hostname": "w@h", "freq": 2.0, "active": 0, "type": "worker-heartbeat"}',
        one(H, U, T)[:-1] + b', {"hostname": "w@h", "type": "worker-online"}]',
        one(H, U, b'"type": "custom-progress"')[1:-1],
        # What validate rejects, or cuts.
        one(H, T),
        one(b'"hostname": ""', U, T),
        one(U, T),
        one(H, b'"uuid": ""', T),
        one(H, U),
        one(H, U, b'"type": 3'),
        one(b'"hostname": ["w@h"]', U, T),
        one(H, b'"uuid": "' + b"u" * (MAX_UUID_LENGTH + 1) + b'"', T),
        one(H, U, T)[:-1] + b", 3]",
        b'"task-started"',
        b"[[]]",
        # What the full read reads otherwise: NaN, an integer orjson reads as a float, a bool
        # timestamp, a non-ASCII or invalid UTF-8 body, an escaped lone surrogate.
        one(H, U, b'"runtime": NaN', b'"type": "task-succeeded"'),
        one(H, U, b'"args": NaN', T),
        one(H, U, b'"timestamp": 18446744073709551616', T),
        one(H, U, b'"timestamp": 1e400', T),
        one(H, U, b'"timestamp": true', T),
        one(H, U, b'"timestamp": "12"', T),
        one('"hostname": "hôte@h"'.encode(), U, T),
        one(H, U, b'"args": "\xff"', T),
        one(H, U, b'"name": "\\ud800"', T),
        # Not JSON, or nested deeper than any parser goes.
        b"[{",
        b"",
        one(H, U, b'"args": ' + b"[" * 5000 + b"]" * 5000, T),
    ],
)
def test_any_other_message_is_left_to_the_full_read(body: bytes) -> None:
    assert task_events(body) is None


def test_a_duplicate_key_counts_as_its_last_value_as_the_full_read_does() -> None:
    body = b'[{"hostname": "w@h", "uuid": "u1", "type": "task-received", "type": "task-started"}]'
    assert loads(body)[0]["type"] == "task-started"
    assert task_events(body) == [TaskEvent(hostname="w@h", uuid="u1", type="task-started")]


def test_the_fields_the_state_does_not_read_may_be_anything() -> None:
    body = json.dumps([{**RECEIVED, "args": [1, {"a": None}], "eta": 1e308, "retries": 2**70}])
    (event,) = task_events(body) or []
    assert (event.name, event.timestamp) == ("tasks.add", RECEIVED["timestamp"])


# Values from small pools, mostly plausible, sometimes odd: a message of them is often read by
# the schema, often not.
odd = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers().map(lambda n: n * 10**30)
    | st.floats()
    | st.text(max_size=4)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 31).flatmap(lambda choice: plausible if choice < 31 else odd)


task_event = st.fixed_dictionaries(
    {
        "hostname": mostly(st.sampled_from(["w1@h", "w2@h", "w3@h", "wé@h", ""])),
        "uuid": mostly(st.sampled_from(["u1", "u2", "u3", "u" * MAX_UUID_LENGTH, "u" * 129])),
        "type": mostly(
            st.sampled_from(vocabulary.TASK_EVENTS)
            | st.sampled_from(["worker-heartbeat", "custom", ""])
        ),
    },
    optional={
        "name": mostly(st.sampled_from(["tests.add", "tâche", ""])),
        "exception": mostly(st.just("KeyError('k')")),
        "runtime": mostly(st.floats(0, 10) | st.integers(0, 10)),
        "timestamp": mostly(st.floats(0, 2e9) | st.integers(0, 2**40)),
        "queue": mostly(st.just("celery")),
        "args": mostly(st.sampled_from(["(1, 2)", "('é',)"])),
    },
)
message = st.integers(0, 7).flatmap(
    lambda choice: st.lists(task_event, max_size=4) if choice < 6 else (task_event | odd)
)


@settings(max_examples=500, deadline=None)
@given(what=message, ensure_ascii=st.booleans())
def test_the_schema_reads_only_what_the_full_read_and_validate_read_the_same(
    what: Any, ensure_ascii: bool
) -> None:
    body = json.dumps(what, ensure_ascii=ensure_ascii)
    events = task_events(body)
    if events is None:
        return
    full = loads(body)
    full = full if type(full) is list else [full]
    assert len(events) == len(full)
    for event, decoded in zip(events, full, strict=True):
        assert validate(decoded) == (event.type, event.hostname, event.uuid)
        assert event.type in vocabulary.TASK_EVENTS
        for field in FIELDS:
            mine, theirs = getattr(event, field), decoded.get(field)
            assert type(mine) is type(theirs)
            assert mine == theirs or (mine != mine and theirs != theirs)  # NaN


def _state() -> State:
    return State(StateSettings((0.1, 1.0, 10.0), (0.5, 5.0), max_tracked_tasks=5))


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.tuples(message, st.booleans()), max_size=8))
def test_the_decoders_events_are_counted_as_the_full_read_is(
    messages: list[tuple[Any, bool]],
) -> None:
    """The state counts a message the schema read exactly as it counts the same message read
    in full, and hands its subscribers the same changes (decoded again, in full)."""
    through_schema, in_full = _state(), _state()
    changes: tuple[list[TaskChange], list[TaskChange]] = ([], [])
    through_schema.subscribe(changes[0].extend)
    in_full.subscribe(changes[1].extend)
    for at, (what, ensure_ascii) in enumerate(messages):
        body = json.dumps(what, ensure_ascii=ensure_ascii)
        through_schema.apply_batch([(decode_events(body), float(at), body)])
        full = loads(body)
        in_full.apply_batch([(full if type(full) is list else (full,), float(at), body)])
    # (As text: a NaN is equal to a NaN there.)
    assert repr(_tables(through_schema)) == repr(_tables(in_full))
    assert repr(changes[0]) == repr(changes[1])


def _tables(state: State) -> dict[str, Any]:
    counts = state.counts
    return {
        "task_counts": counts.task_counts,
        "sent": counts.sent,
        "exceptions": counts.exceptions,
        "runtime": {key: (h.counts, h.total) for key, h in counts.runtime.items()},
        "queue_wait": {key: (h.counts, h.total) for key, h in counts.queue_wait.items()},
        "events_by_type": counts.events_by_type,
        "rejected": counts.rejected,
        "tracked": list(counts.tracked.items()),
        "waiting": counts.ledger.waiting,
        "workers": {host: vars(worker) for host, worker in counts.workers.items()},
        "last_event": counts.last_event,
        "ended": counts.ended,
    }


def test_a_subscriber_reads_every_field_of_an_event_the_schema_read() -> None:
    state = _state()
    seen: list[TaskChange] = []
    state.subscribe(seen.extend)
    inbox = IntakeBacklog()
    inbox.put(RawMessage(5.0, "application/json", orjson.dumps([RECEIVED, STARTED])))
    Decoder(state, inbox).drain()
    assert [(c.uuid, c.type, c.name, c.worker) for c in seen] == [
        (UUID, "task-received", "tasks.add", "celery@w1"),
        (UUID, "task-started", "tasks.add", "celery@w1"),
    ]
    assert seen[0].event == RECEIVED
    assert seen[1].event == STARTED
    assert state.counts.ledger.tasks[UUID][1] == RECEIVED["timestamp"]
    assert not math.isnan(state.counts.queue_wait[("tasks.add", "celery@w1")].total)
