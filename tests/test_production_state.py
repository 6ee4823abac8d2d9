"""Unit tests of what a changing fleet needs from the state: series at 0 before their first event,
names learnt from task-sent and from the workers, uncounted tasks, clean stops told from
vanished workers, and the controller's parsing of inspect replies."""

from __future__ import annotations

from typing import Any

import pytest

from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from celery_events_exporter.control import registered_tasks, task_names
from celery_events_exporter.state import MAX_ENDED_NAMES, State, StateSettings
from celery_events_exporter.tasks.store import RecentTasks
from tests.test_state import T0, feed, heartbeat, make_state, render, task

pytestmark = pytest.mark.unit

STATES = ("received", "started", "succeeded", "failed", "retried", "rejected", "revoked")


def test_a_pairs_first_event_creates_its_other_series_at_0() -> None:
    state = make_state()
    feed(state, task("received", "u1", name="t"))
    metrics = render(state)
    values = {s: metrics.get(f"celery_task_{s}_total", task="t", worker="w1@h") for s in STATES}
    assert values == {**dict.fromkeys(STATES, 0.0), "received": 1.0}
    assert metrics.get("celery_task_runtime_seconds_count", task="t", worker="w1@h") == 0.0
    assert metrics.get("celery_task_queue_wait_seconds_count", task="t", worker="w1@h") == 0.0


@pytest.mark.parametrize("worker_label", [True, False])
def test_registered_tasks_get_their_series_at_0_up_to_the_cap(worker_label: bool) -> None:
    state = make_state(max_registered_tasks=2, worker_label=worker_label)
    assert state.seed_tasks("w1@h", ["a", "b", "c"]) == 1
    metrics = render(state)
    labels = {"worker": "w1@h"} if worker_label else {}
    assert metrics.by_label("celery_task_failed_total", "task", **labels) == {"a": 0.0, "b": 0.0}
    assert metrics.by_label("celery_task_runtime_seconds_count", "task", **labels) == {
        "a": 0.0, "b": 0.0,
    }  # fmt: skip
    # Seeded series do not make a worker's Workers-view counts.
    assert state.worker_task_counts() == {}


def test_a_task_revoked_before_any_worker_received_it_is_named_by_its_task_sent() -> None:
    state = make_state()
    feed(
        state,
        {"type": "task-sent", "uuid": "u1", "hostname": "client@h", "name": "t", "queue": "q"},
        task("revoked", "u1", expired=True),
    )
    metrics = render(state)
    assert metrics.by_label("celery_task_revoked_total", "task") == {"t": 1.0}
    assert metrics.get("celery_exporter_tracked_tasks") == 0.0


def test_a_failed_task_is_no_longer_tracked_but_its_rejection_is_named() -> None:
    state = make_state()
    feed(
        state,
        task("received", "u1", name="t"),
        task("failed", "u1", exception="Reject()"),
        task("rejected", "u1"),
    )
    metrics = render(state)
    assert metrics.get("celery_exporter_tracked_tasks") == 0.0
    assert metrics.get("celery_task_failed_total", task="t", worker="w1@h") == 1.0
    assert metrics.get("celery_task_rejected_total", task="t", worker="w1@h") == 1.0


def test_ended_names_are_bounded() -> None:
    state = make_state()
    for i in range(MAX_ENDED_NAMES + 5):
        feed(state, task("received", f"u{i}", name="t"), task("failed", f"u{i}"))
    assert len(state.counts.ended) == MAX_ENDED_NAMES
    assert "u0" not in state.counts.ended


def test_names_learnt_from_the_workers_name_later_events() -> None:
    state = make_state(max_tracked_tasks=2)
    state.learn_names({"u0": "old", "u1": "a", "u2": "b"})
    feed(state, task("succeeded", "u1", runtime=0.5), task("succeeded", "u2", runtime=0.5))
    metrics = render(state)
    # Bounded like every tracked task: learnt names fill the room there is, u2 found none.
    assert metrics.by_label("celery_task_succeeded_total", "task") == {"a": 1.0, "unknown": 1.0}
    assert metrics.get("celery_exporter_tracked_tasks") == 1.0


def test_learnt_names_never_displace_names_events_gave() -> None:
    # Any broker client can answer inspect active: a flood of uuids must not push the tasks
    # events named out of the tracking (their later events carry no name).
    state = make_state(max_tracked_tasks=3)
    feed(state, task("received", "r1", name="real"), task("received", "r2", name="real"))
    state.learn_names({f"forged{i}": "forged" for i in range(1000)} | {"r1": "forged"})
    feed(state, task("succeeded", "r1", runtime=0.5), task("succeeded", "r2", runtime=0.5))
    metrics = render(state)
    assert metrics.by_label("celery_task_succeeded_total", "task") == {"real": 2.0}
    assert metrics.get("celery_exporter_tracked_tasks") == 1.0  # one forged name got the room


def test_a_learnt_name_never_brings_back_a_task_that_ended() -> None:
    # A reply taken before the task failed arrives after: the task is over, its name stays
    # the one its events gave (for Celery's task-rejected that follows a Reject's failure).
    state = make_state()
    feed(state, task("received", "u1", name="real"), task("failed", "u1", exception="E()"))
    state.learn_names({"u1": "late"})
    assert state.counts.tracked == {}
    feed(state, task("rejected", "u1"))
    assert render(state).by_label("celery_task_rejected_total", "task") == {"real": 1.0}


def test_uncounted_tasks_are_what_the_heartbeats_accepted_less_what_was_seen_starting() -> None:
    state = make_state()
    # Known to the exporter with 5 tasks behind it: those were before its time, not uncounted.
    feed(state, heartbeat(freq=2.0, active=0, processed=5))
    feed(state, *(task("started", f"u{i}") for i in range(3)))
    feed(state, heartbeat(freq=2.0, active=0, processed=12))
    assert render(state).get("celery_worker_uncounted_tasks", worker="w1@h") == 4.0
    # A restart (processed went down) starts again from its new count.
    feed(state, {**heartbeat(freq=2.0, active=0, processed=0), "type": "worker-online"})
    feed(state, task("started", "u9"), heartbeat(freq=2.0, active=0, processed=1))
    assert render(state).get("celery_worker_uncounted_tasks", worker="w1@h") == 0.0


def test_a_started_event_trailing_its_heartbeat_is_never_negative() -> None:
    state = make_state()
    feed(state, heartbeat(freq=2.0, active=0, processed=0))
    feed(state, task("started", "u1"), task("started", "u2"))
    feed(state, heartbeat(freq=2.0, active=0, processed=1))
    assert render(state).get("celery_worker_uncounted_tasks", worker="w1@h") == 0.0


def test_workers_are_greeted_when_first_heard_and_at_every_start() -> None:
    state = make_state()
    feed(state, heartbeat(freq=2.0), heartbeat(freq=2.0), heartbeat("w2@h", freq=2.0))
    feed(state, {"type": "worker-offline", "hostname": "w1@h"})
    feed(state, {"type": "worker-online", "hostname": "w1@h", "freq": 2.0})
    assert state.new_workers() == ["w1@h", "w2@h"]  # each once per greeting round
    assert state.new_workers() == []
    feed(state, {"type": "worker-online", "hostname": "w2@h", "freq": 2.0})
    assert state.new_workers() == ["w2@h"]


def test_a_clean_stop_is_told_from_a_vanished_worker_and_purged_sooner() -> None:
    state = make_state(purge_offline_worker_after=600.0, purge_stopped_worker_after=60.0)
    feed(state, heartbeat("gone@h", freq=2.0), heartbeat("stopped@h", freq=2.0))
    feed(state, {"type": "worker-offline", "hostname": "stopped@h"})
    metrics = render(state, now=T0 + 10)
    assert metrics.by_label("celery_worker_shutdown_clean", "worker") == {
        "gone@h": 0.0, "stopped@h": 1.0,
    }  # fmt: skip
    assert metrics.by_label("celery_worker_online", "worker") == {"gone@h": 0.0, "stopped@h": 0.0}
    assert render(state, now=T0 + 61).by_label("celery_worker_online", "worker") == {"gone@h": 0.0}
    assert render(state, now=T0 + 605).by_label("celery_worker_online", "worker") == {}


def test_registered_replies_keep_the_names_only() -> None:
    replies = {
        "w1@h": ["tasks.add", "tasks.mul [rate_limit=10/s]", 7, "", "x" * 300],
        "w2@h": "not a list",
        3: ["tasks.add"],
    }
    assert registered_tasks(replies) == {"w1@h": ["tasks.add", "tasks.mul"]}
    assert registered_tasks(None) == {}


def test_active_reserved_and_scheduled_replies_give_uuid_to_name() -> None:
    active = {"w1@h": [{"id": "u1", "name": "tasks.add", "args": [1]}, {"id": "u2"}, "junk"]}
    reserved = {"w2@h": [{"id": "u3", "name": "tasks.mul"}, {"id": 4, "name": "n"}], "w3": None}
    # Celery's scheduled entries: the request info under "request", beside eta and priority.
    scheduled = {
        "w1@h": [
            {
                "eta": "2026-12-01T12:00:00+00:00",
                "priority": 6,
                "request": {"id": "u5", "name": "t.eta"},
            },
            {"eta": None, "priority": 6, "request": "junk"},
        ]
    }
    assert task_names(active, reserved, scheduled, None) == {
        "u1": "tasks.add",
        "u3": "tasks.mul",
        "u5": "t.eta",
    }


def _store_fed(**store_options: Any) -> tuple[State, RecentTasks]:
    store = RecentTasks(100, **store_options)
    state = State(StateSettings(DEFAULT_RUNTIME_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS))
    state.subscribe(store.take)
    return state, store


def sent(uuid: str) -> dict[str, Any]:
    return {"type": "task-sent", "uuid": uuid, "hostname": "client@h", "name": "t", "queue": "q"}


def test_a_task_seen_only_as_sent_is_forgotten_after_the_timeout() -> None:
    now = [T0]
    state, store = _store_fed(forget_pending_after=60.0, clock=lambda: now[0])
    state.apply(sent("old"), T0)
    state.apply(sent("moving"), T0)
    state.apply(task("received", "moving", name="t", timestamp=T0 + 1), T0 + 1)
    state.apply(sent("young"), T0 + 50)
    now[0] = T0 + 70
    assert {(r.uuid, r.state) for r in store.records()} == {
        ("moving", "RECEIVED"), ("young", "PENDING"),
    }  # fmt: skip
    assert store.evicted == 1
    # Its next event brings it back.
    state.apply(task("received", "old", name="t", timestamp=T0 + 71), T0 + 71)
    record = store.get("old")
    assert record is not None and record.state == "RECEIVED"


def test_the_recent_task_count_is_fresh_at_every_scrape() -> None:
    state, store = _store_fed()
    state.apply(sent("a"), T0)
    state.apply(sent("b"), T0)
    assert len(store) == 0  # as of the last read: none yet
    assert store.count() == 2


def test_names_learnt_from_the_workers_name_rows_in_the_tasks_view() -> None:
    state, store = _store_fed()
    state.apply(task("started", "in-flight"), T0)
    store.learn_names({"in-flight": "tests.sleep", "reserved": "tests.add"})
    state.apply(task("succeeded", "reserved", runtime=0.1), T0 + 1)
    assert {r.uuid: r.name for r in store.records()} == {
        "in-flight": "tests.sleep", "reserved": "tests.add",
    }  # fmt: skip


@pytest.mark.parametrize("worker_label", [True, False])
def test_a_worker_without_heartbeats_is_purged_after_its_last_event_and_the_delay(
    worker_label: bool,
) -> None:
    state = make_state(purge_offline_worker_after=60.0, max_workers=1, worker_label=worker_label)
    feed(state, task("received", "u1", host="quiet@h", name="t"), at=T0)
    feed(state, task("succeeded", "u1", host="quiet@h", runtime=0.1), at=T0 + 30)
    assert state.purge_offline_workers(T0 + 89) == []  # 59 s after its last event
    # The cap is full: a worker heard now is past it.
    feed(state, heartbeat("beating@h", freq=2.0), at=T0 + 89)
    assert state.online_workers(T0 + 89) == set()
    assert state.purge_offline_workers(T0 + 91) == ["quiet@h"]
    assert state.worker_task_counts() == {}
    feed(state, heartbeat("beating@h", freq=2.0), at=T0 + 92)
    assert state.online_workers(T0 + 92) == {"beating@h"}


def test_a_heartbeat_makes_the_liveness_rule_apply_not_the_last_event() -> None:
    state = make_state(purge_offline_worker_after=60.0)
    feed(state, heartbeat("w1@h", freq=2.0), at=T0)
    feed(state, task("received", "u1", name="t"), at=T0 + 100)
    # Offline since T0 + 4: purged past T0 + 64 although a task event came later.
    assert state.purge_offline_workers(T0 + 101) == ["w1@h"]
