"""The state's task ledger and its views (celery_events_exporter.state.ledger): the oldest waiting
task per queue and the poller's corrections, prefetched tasks, orphaned tasks found by the sweep,
goodbyes, the bound. Driven through ``State`` as the ingest thread, the tick and the queue
families drive it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.registry import QueueRegistry
from celery_events_exporter.state import State, StateSettings, TaskChange
from celery_events_exporter.state import ledger as ledger_module
from celery_events_exporter.state.labels import cut
from celery_events_exporter.state.snapshot import QueueViews

pytestmark = pytest.mark.unit


def sent(uuid: str, queue: str, name: str = "tests.add") -> dict[str, Any]:
    return {"type": "task-sent", "uuid": uuid, "queue": queue, "name": name, "hostname": "client"}


def task(event_type: str, uuid: str, worker: str = "w1", **fields: Any) -> dict[str, Any]:
    return {"type": f"task-{event_type}", "uuid": uuid, "hostname": worker, **fields}


class Tracking:
    """A state, its changes, and a queue registry as the queue families keep one."""

    def __init__(self, max_tasks: int = 100, max_length: int = 200) -> None:
        settings = StateSettings(
            DEFAULT_RUNTIME_BUCKETS,
            DEFAULT_QUEUE_WAIT_BUCKETS,
            max_tracked_tasks=max_tasks,
            max_label_length=max_length,
        )
        self.state = State(settings)
        self.changes: list[TaskChange] = []
        self.state.subscribe(self.changes.extend)
        self.registry = QueueRegistry()

    def __call__(self, events: list[Any], at: float) -> None:
        self.state.apply_many(events, at)

    def sweep(self, now: float, online: Iterable[str]) -> None:
        self.state.sweep(now, set(online))

    def snapshot(self) -> QueueViews:
        """What the queue families read at a scrape (``queues.collector``)."""
        self.registry.add(self.state.waiting_queues())
        return self.state.queue_views(self.registry.names())

    def orphaned(self) -> dict[tuple[str, str], int]:
        return self.state.snapshot(0.0).orphaned

    @property
    def tracked(self) -> int:
        return self.state.in_flight()


def test_oldest_waiting_task_per_queue_until_received() -> None:
    tracker = Tracking()
    tracker([sent("a", "q1")], 10.0)
    tracker([sent("b", "q1"), sent("c", "q2")], 12.0)
    assert tracker.snapshot().oldest_waiting == {"q1": 10.0, "q2": 12.0}
    tracker([task("received", "a", name="tests.add")], 13.0)
    assert tracker.snapshot().oldest_waiting == {"q1": 12.0, "q2": 12.0}
    # A task revoked before any worker received it no longer waits either.
    tracker([task("revoked", "c")], 14.0)
    tracker([task("received", "b")], 14.0)
    assert tracker.snapshot().oldest_waiting == {}  # absent, not 0
    assert tracker.registry.names() == ["q1", "q2"]


def test_polls_correct_the_waiting_tasks() -> None:
    tracker = Tracking()
    tracker([sent("a", "q"), sent("b", "q"), sent("c", "r"), sent("d", "r")], 10.0)
    tracker([sent("e", "q"), sent("f", "r")], 20.0)
    # q read empty at 15: a and b were purged (no task-received ever comes); e came later.
    tracker.state.queues_read({"q": QueueReading(0)}, 15.0)
    # r's only list holds d as its oldest message: c is gone.
    tracker.state.queues_read({"r": QueueReading(2, oldest_ids=("d",))}, 25.0)
    assert tracker.snapshot().oldest_waiting == {"q": 20.0, "r": 10.0}
    # A list whose oldest message is unknown corrects nothing.
    tracker.state.queues_read({"r": QueueReading(2, oldest_ids=("f", None))}, 25.0)
    tracker.state.queues_read({"r": QueueReading(2, oldest_ids=("f", "zzz"))}, 25.0)
    assert tracker.snapshot().oldest_waiting == {"q": 20.0, "r": 10.0}
    tracker.state.queues_read({"r": QueueReading(1, oldest_ids=("f",))}, 25.0)
    assert tracker.snapshot().oldest_waiting == {"q": 20.0, "r": 20.0}


def test_prefetched_is_received_and_not_started() -> None:
    tracker = Tracking()
    tracker([task("received", u, name="tests.sleep") for u in "abcd"], 1.0)
    tracker([task("received", "e", worker="w2")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    assert tracker.snapshot().prefetched == {"w1": 4, "w2": 1, "w3": 0}
    tracker([task("started", "a"), task("started", "b"), task("succeeded", "a")], 3.0)
    tracker([task("revoked", "c"), task("started", "e", worker="w2")], 3.0)
    assert tracker.snapshot().prefetched == {"w1": 1, "w2": 0, "w3": 0}


def test_started_tasks_of_a_worker_gone_without_goodbye_are_orphaned() -> None:
    tracker = Tracking()
    tracker([task("received", u, name="tests.sleep") for u in "abc"], 1.0)
    tracker([task("started", "a"), task("started", "b"), task("failed", "b")], 1.0)
    tracker([task("started", "x", worker="w2"), task("started", "y", worker="w3")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    tracker([{"type": "worker-offline", "hostname": "w3"}], 2.5)
    del tracker.changes[:]
    tracker.sweep(3.0, {"w2"})  # w1 fell silent; w3 said goodbye
    assert tracker.orphaned() == {("tests.sleep", "w1"): 1}
    assert tracker.snapshot().prefetched == {"w2": 0}
    assert [
        (change.uuid, change.type, change.timestamp, dict(change.event), change.name, change.worker)
        for change in tracker.changes
    ] == [
        (
            "a",
            "task-orphaned",
            3.0,
            {"type": "task-orphaned", "uuid": "a", "hostname": "w1", "timestamp": 3.0},
            "tests.sleep",
            "w1",
        )
    ]
    tracker.sweep(4.0, {"w2"})  # counted once
    tracker.sweep(5.0, set())
    assert tracker.orphaned() == {("tests.sleep", "w1"): 1, ("unknown", "w2"): 1}


def test_tracked_names_and_hostnames_are_cut_as_the_worker_records_are() -> None:
    tracker = Tracking(max_length=16)
    long_host, long_name = "w@" + "h" * 100, "tests." + "n" * 100
    tracker([task("received", "a", worker=long_host, name=long_name)], 1.0)
    tracker([task("received", "b", worker=long_host), task("started", "b", worker=long_host)], 1.0)
    tracker([task("started", "c", worker="é" * 40)], 1.0)
    # The state's online workers are its cut hostnames: the prefetched count meets them.
    tracker.sweep(2.0, {cut(long_host, 16), cut("é" * 40, 16)})
    assert tracker.snapshot().prefetched == {cut(long_host, 16): 1, cut("é" * 40, 16): 0}
    tracker.sweep(3.0, set())
    assert tracker.orphaned() == {("unknown", "w@hhhhhhhhhhh…"): 1, ("unknown", "éééééé…"): 1}
    # A queue name past the cap is no queue's: it is not followed or polled.
    tracker([sent("d", "q" * 17), sent("e", "q" * 16)], 4.0)
    assert tracker.snapshot().oldest_waiting == {"q" * 16: 4.0}
    assert tracker.registry.names() == ["q" * 16]
    assert tracker.tracked == 1  # e waiting (a went with its worker: the broker redelivers it)


def test_the_ledger_is_bounded_and_ignores_malformed_events() -> None:
    tracker = Tracking(max_tasks=3)
    tracker([sent(str(i), "q") for i in range(10)], 1.0)
    assert tracker.snapshot().oldest_waiting == {"q": 1.0}
    # One bound for every task: the youngest three are kept, received or waiting.
    tracker([task("received", str(i)) for i in range(10, 20)], 1.0)
    malformed: list[Any] = [
        None,
        {"type": 3},
        {"type": "task-sent", "uuid": "u", "hostname": "c", "queue": 7},
        {"type": "task-received", "uuid": "v"},
        "x",
        {"type": "worker-offline"},
    ]
    tracker(malformed, 1.0)
    assert list(tracker.state.counts.tracked) == ["18", "19", "u"]
    assert tracker.tracked == 2
    assert tracker.snapshot().oldest_waiting == {}


def test_goodbyes_forget_tasks_at_the_sweep_or_at_the_workers_next_start() -> None:
    tracker = Tracking()
    tracker([task("received", "a", worker="w1"), task("received", "b", worker="w2")], 1.0)
    tracker([task("started", "b", worker="w2"), task("received", "c", worker="w3")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    assert tracker.snapshot().prefetched == {"w1": 1, "w2": 0, "w3": 1}
    # w1 and w2 stop cleanly; w1 starts again and receives a task before the next sweep.
    goodbyes = [{"type": "worker-offline", "hostname": host} for host in ("w1", "w2")]
    tracker(goodbyes, 3.0)
    tracker([task("received", "d", worker="w1")], 3.5)
    assert tracker.tracked == 3  # b (w2, forgotten at the sweep), c, d: a went with w1's stop
    tracker.sweep(4.0, {"w1", "w3"})
    # b was running on w2 when it said goodbye: finished, not orphaned.
    assert tracker.orphaned() == {}
    assert tracker.snapshot().prefetched == {"w1": 1, "w3": 1}
    assert tracker.tracked == 2


def test_goodbyes_past_the_bound_are_forgotten_at_once() -> None:
    tracker = Tracking(max_tasks=5_000)
    hosts = [f"w{i}" for i in range(ledger_module.MAX_DEPARTED + 1)]
    tracker([task("received", f"u{i}", worker=host) for i, host in enumerate(hosts)], 1.0)
    tracker([{"type": "worker-offline", "hostname": host} for host in hosts], 2.0)
    assert tracker.tracked == 0  # the goodbye past the bound forgot them all, in one pass


def test_a_task_sent_then_started_unreceived_is_held_by_its_worker() -> None:
    tracker = Tracking()
    tracker([sent("a", "q")], 1.0)
    tracker([task("started", "a", worker="w1")], 2.0)
    assert tracker.snapshot().oldest_waiting == {}
    entry = tracker.state.counts.tracked["a"]
    assert (entry[ledger_module.NAME], entry[ledger_module.WORKER]) == ("tests.add", "w1")
    tracker.sweep(3.0, {"w1"})
    tracker.sweep(4.0, set())
    assert tracker.orphaned() == {("tests.add", "w1"): 1}
