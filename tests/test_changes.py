"""What the state hands its subscribers (celery_events_exporter.state.changes, .feed): one batch
per applied batch, outside the state's lock, each change with the name and worker the ledger
knows; the event decoded again from the message's JSON when read."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from celery_events_exporter.state import State, StateSettings, TaskChange
from celery_events_exporter.state.feed import ChangeBatch

pytestmark = pytest.mark.unit

HOST = "celery@w1"


def make_state() -> State:
    return State(StateSettings(DEFAULT_RUNTIME_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS))


def task(kind: str, uuid: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": f"task-{kind}", "uuid": uuid, "hostname": HOST, "timestamp": at, **fields}


def as_tuple(change: TaskChange) -> tuple[Any, ...]:
    return (change.uuid, change.type, change.timestamp, change.name, change.worker)


def test_each_batch_is_handed_over_once_in_order_with_what_the_ledger_knows() -> None:
    state = make_state()
    batches: list[list[TaskChange]] = []
    state.subscribe(lambda changes: batches.append(list(changes)))
    first = [
        {"type": "task-sent", "uuid": "a", "hostname": "client", "name": "t.add", "queue": "q"},
        task("received", "a", 1.0, name="t.add", args="(1, 2)"),
    ]
    second = [
        task("started", "a", 2.0),
        {"type": "worker-heartbeat", "hostname": HOST},
        {"type": "task-started", "hostname": HOST},  # no uuid: rejected, no change
        task("succeeded", "a", 3.0, runtime=0.5, result="3"),
        task("started", "b", 3.5),  # never received: no name known
    ]
    state.apply_batch([(first, 10.0, orjson.dumps(first)), (second, 11.0, orjson.dumps(second))])
    state.apply_batch([([{"type": "worker-heartbeat", "hostname": HOST}], 12.0, None)])
    assert len(batches) == 1  # a batch without task events hands nothing over
    assert [as_tuple(change) for change in batches[0]] == [
        ("a", "task-sent", 10.0, "t.add", None),
        ("a", "task-received", 10.0, "t.add", HOST),
        ("a", "task-started", 11.0, "t.add", HOST),
        ("a", "task-succeeded", 11.0, "t.add", HOST),
        ("b", "task-started", 11.0, None, HOST),
    ]
    # The events are what the worker sent, every field, decoded again from the JSON.
    assert dict(batches[0][1].event) == first[1]
    assert dict(batches[0][3].event) == second[3]


def test_a_batch_is_a_sequence_read_as_often_as_wanted() -> None:
    state = make_state()
    kept: list[Sequence[TaskChange]] = []
    state.subscribe(kept.append)
    events = [task("received", f"u{i}", float(i), name="t") for i in range(5)]
    state.apply_many(events, 100.0, orjson.dumps(events))
    (batch,) = kept
    assert len(batch) == 5
    assert [c.uuid for c in batch] == [c.uuid for c in batch] == ["u0", "u1", "u2", "u3", "u4"]
    assert batch[2].uuid == "u2"
    assert [c.uuid for c in batch[1:3]] == ["u1", "u2"]
    assert isinstance(batch, ChangeBatch)
    assert batch.size == len(orjson.dumps(events))


def test_subscribers_are_called_outside_the_lock_and_a_failing_one_stops_nothing() -> None:
    state = make_state()
    readers: list[bool] = []

    def reads_the_state(changes: Sequence[TaskChange]) -> None:
        # Another thread can take the state's lock while a subscriber runs.
        reader = threading.Thread(target=lambda: readers.append(bool(state.snapshot(1.0))))
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive()

    def broken(changes: Sequence[TaskChange]) -> None:
        raise RuntimeError("a subscriber's bug")

    got: list[int] = []
    state.subscribe(broken)
    state.subscribe(reads_the_state)
    state.subscribe(lambda changes: got.append(len(changes)))
    state.apply(task("received", "a", 1.0, name="t"), 2.0)
    state.apply(task("started", "a", 1.5), 2.0)
    assert readers == [True, True]
    assert got == [1, 1]
    assert state.snapshot(3.0).task_counts["task-started"] == {("t", HOST): 1}


def test_an_orphaned_task_is_handed_over_as_a_made_up_event() -> None:
    state = make_state()
    seen: list[TaskChange] = []
    state.subscribe(seen.extend)
    state.apply_many([task("received", "a", 1.0, name="t"), task("started", "a", 1.1)], 2.0)
    state.sweep(3.0, {HOST})
    del seen[:]
    state.sweep(4.0, set())  # HOST vanished without a goodbye
    assert [(as_tuple(c), dict(c.event)) for c in seen] == [
        (
            ("a", "task-orphaned", 4.0, "t", HOST),
            {"type": "task-orphaned", "uuid": "a", "hostname": HOST, "timestamp": 4.0},
        )
    ]
