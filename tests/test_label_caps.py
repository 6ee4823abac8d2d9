"""Cardinality caps and the label-length cut (exporter.state.labels), through the state and its
rendering: values past a cap count as "other", long ones are cut, and each fold or cut is counted
in celery_exporter_label_overflow_total."""

from __future__ import annotations

import pytest

from celery_events_exporter.state.labels import CUT_MARK, cut
from tests.test_state import T0, feed, heartbeat, make_state, render, task


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("tasks.add", 16, "tasks.add"),
        ("x" * 16, 16, "x" * 16),
        ("x" * 17, 16, "x" * 13 + CUT_MARK),
        ("é" * 8, 16, "é" * 8),  # 16 bytes: fits
        ("é" * 9, 16, "é" * 6 + CUT_MARK),  # 12 + 3 bytes: never half a character
        ("aé" * 9, 16, "aé" * 4 + "a" + CUT_MARK),  # 13 + 3 bytes
    ],
)
def test_a_value_is_cut_to_its_length_in_bytes_with_a_mark(
    value: str, limit: int, expected: str
) -> None:
    short = cut(value, limit)
    assert short == expected
    assert len(short.encode()) <= limit


def test_task_names_past_the_cap_count_as_other() -> None:
    state = make_state(max_task_names=2)
    for i, name in enumerate(["a", "b", "c", "d", "a"]):
        feed(
            state,
            task("received", f"u{i}", name=name),
            task("started", f"u{i}"),
            task("succeeded", f"u{i}", runtime=0.5),
        )
    metrics = render(state)
    assert metrics.get("celery_task_received_total", task="a", worker="w1@h") == 2
    assert metrics.get("celery_task_received_total", task="b", worker="w1@h") == 1
    assert metrics.get("celery_task_received_total", task="other", worker="w1@h") == 2
    assert metrics.get("celery_task_succeeded_total", task="other", worker="w1@h") == 2
    assert metrics.get("celery_task_runtime_seconds_count", task="other", worker="w1@h") == 2
    assert not metrics.series("celery_task_received_total", task="c")
    # c and d: their received, started and succeeded each counted under "other".
    assert metrics.get("celery_exporter_label_overflow_total", label="task", reason="cap") == 6
    assert metrics.get("celery_exporter_label_overflow_total", label="worker", reason="cap") == 0


def test_workers_past_the_cap_get_no_gauges_and_count_as_other_until_one_is_purged() -> None:
    state = make_state(max_workers=1, purge_offline_worker_after=60.0)
    feed(state, heartbeat("w1@h", freq=2.0, active=1), heartbeat("w2@h", freq=2.0, active=3))
    feed(state, task("received", "u1", host="w2@h", name="t"), task("failed", "u1", host="w2@h"))
    metrics = render(state)
    assert metrics.get("celery_worker_online", worker="w1@h") == 1
    assert not metrics.series("celery_worker_online", worker="w2@h")
    assert not metrics.series("celery_worker_active_tasks", worker="w2@h")
    assert metrics.get("celery_task_failed_total", task="t", worker="other") == 1
    assert metrics.get("celery_worker_tasks_total", worker="other", state="received") == 1
    # The heartbeat and both task events of w2.
    assert metrics.get("celery_exporter_label_overflow_total", label="worker", reason="cap") == 3

    # w1 goes offline and is purged: its place goes to the next worker heard of.
    render(state, now=T0 + 100)
    feed(state, heartbeat("w2@h", freq=2.0, active=3), at=T0 + 101)
    metrics = render(state, now=T0 + 101)
    assert not metrics.series("celery_worker_online", worker="w1@h")
    assert metrics.get("celery_worker_active_tasks", worker="w2@h") == 3


def test_without_the_worker_label_the_per_worker_counts_are_capped_too() -> None:
    state = make_state(max_workers=1, worker_label=False)
    feed(state, task("received", "u1", host="w1@h", name="t"))
    feed(state, task("received", "u2", host="w2@h", name="t"))
    metrics = render(state)
    assert metrics.get("celery_task_received_total", task="t") == 2
    assert metrics.get("celery_worker_tasks_total", worker="w1@h", state="received") == 1
    assert metrics.get("celery_worker_tasks_total", worker="other", state="received") == 1
    assert metrics.get("celery_exporter_label_overflow_total", label="worker", reason="cap") == 1


def test_long_names_hostnames_and_exception_classes_are_cut() -> None:
    state = make_state(max_label_length=32)
    host = "worker@" + "h" * 10_000
    name = "tasks." + "n" * 100_000
    feed(state, heartbeat(host, freq=2.0, active=0), task("received", "u1", host=host, name=name))
    short_host = "worker@" + "h" * 22 + CUT_MARK
    short_name = "tasks." + "n" * 23 + CUT_MARK
    # The tracked name is the cut one: bounded bytes whatever the event carried.
    assert [entry[0] for entry in state.counts.tracked.values()] == [short_name]
    feed(state, task("failed", "u1", host=host, exception="E" * 100 + "('boom')"))
    metrics = render(state)
    assert metrics.get("celery_worker_online", worker=short_host) == 1
    assert metrics.get("celery_task_failed_total", task=short_name, worker=short_host) == 1
    short_class = "E" * 29 + CUT_MARK
    assert metrics.get("celery_task_exceptions_total", task=short_name, exception=short_class) == 1
    overflow = "celery_exporter_label_overflow_total"
    # The hostname comes with each of the three events, the name with task-received only.
    assert metrics.get(overflow, label="worker", reason="length") == 3
    assert metrics.get(overflow, label="task", reason="length") == 1
    assert metrics.get(overflow, label="exception", reason="length") == 1


def test_sent_queues_past_the_cap_count_as_other() -> None:
    state = make_state(max_queues=1)
    for i, queue in enumerate(["q1", "q2", "q1", "q3"]):
        feed(state, task("sent", f"u{i}", host="client@h", name="t", queue=queue))
    metrics = render(state)
    assert metrics.get("celery_task_sent_total", task="t", queue="q1") == 2
    assert metrics.get("celery_task_sent_total", task="t", queue="other") == 2
    assert metrics.get("celery_exporter_label_overflow_total", label="queue", reason="cap") == 2


def test_every_overflow_series_is_exported_from_zero() -> None:
    metrics = render(make_state())
    rows = metrics.series("celery_exporter_label_overflow_total")
    assert len(rows) == 8
    assert all(value == 0 for value in rows.values())


def test_orphaned_tasks_are_labelled_capped_and_purged_like_the_workers_other_series() -> None:
    state = make_state(max_task_names=1, max_label_length=32, purge_offline_worker_after=60.0)
    host = "worker@" + "h" * 100
    short_host = "worker@" + "h" * 22 + CUT_MARK
    feed(state, heartbeat(host, freq=2.0, active=2), heartbeat("w2@h", freq=2.0, active=1))
    feed(state, task("received", "u1", host=host, name="tests.sleep"))
    # As the ledger's sweep hands them over: names and hostnames cut already, or not.
    state.count_orphaned([("tests.sleep", short_host), ("tests.other", host), ("t" * 50, "w2@h")])
    metrics = render(state)
    orphaned = "celery_task_orphaned_total"
    assert metrics.series(orphaned) == {
        frozenset({("task", "tests.sleep"), ("worker", short_host)}): 1,
        frozenset({("task", "other"), ("worker", short_host)}): 1,  # past the one-name cap
        frozenset({("task", "other"), ("worker", "w2@h")}): 1,
    }
    assert metrics.get("celery_exporter_label_overflow_total", label="task", reason="cap") == 2
    assert metrics.get("celery_exporter_label_overflow_total", label="task", reason="length") == 1
    # The long hostname's worker goes offline and is purged: its orphaned series go with it.
    feed(state, heartbeat("w2@h", freq=2.0, active=1), at=T0 + 100)
    metrics = render(state, now=T0 + 100)
    assert metrics.series(orphaned) == {frozenset({("task", "other"), ("worker", "w2@h")}): 1}


def test_orphaned_tasks_without_the_worker_label_merge_across_workers() -> None:
    state = make_state(worker_label=False)
    state.count_orphaned([("t", "w1@h"), ("t", "w2@h")])
    assert render(state).series("celery_task_orphaned_total") == {frozenset({("task", "t")}): 2}


def test_a_task_name_no_worker_has_series_under_gives_its_place_back() -> None:
    """Renamed tasks (a deploy) must not hold the cap for good: once every worker with series
    under a name is purged, the name's sent and exception series go and its place is free."""
    state = make_state(
        max_task_names=2, max_queues=1, max_exception_classes=1, purge_offline_worker_after=60.0
    )
    feed(state, heartbeat("w1@h", freq=2.0), heartbeat("w2@h", freq=2.0))
    feed(state, task("sent", "u1", host="client@h", name="old", queue="q-old"))
    feed(state, task("received", "u1", name="old"), task("failed", "u1", exception="OldError()"))
    feed(state, task("received", "u2", host="w2@h", name="old"))
    feed(state, task("received", "u3", host="w2@h", name="kept"))
    feed(state, task("received", "u4", host="w2@h", name="new"))  # past the cap
    metrics = render(state)
    assert metrics.get("celery_task_received_total", task="other", worker="w2@h") == 1

    # w1 is purged, w2 (which still has "old" series) stays: "old" keeps its place.
    feed(state, heartbeat("w2@h", freq=2.0), at=T0 + 100)
    metrics = render(state, now=T0 + 100)
    assert metrics.get("celery_task_sent_total", task="old", queue="q-old") == 1
    assert state.counts.caps.admitted["task"] == {"old", "kept"}

    # w2 is purged as well: "old" is on no worker, its places (name, queue, class) are free.
    feed(state, heartbeat("w3@h", freq=2.0), at=T0 + 200)
    metrics = render(state, now=T0 + 200)
    assert not metrics.series("celery_task_sent_total")
    assert not metrics.series("celery_task_exceptions_total")
    assert state.counts.caps.admitted == {"task": set(), "worker": {"w3@h"}, "queue": set()}
    feed(state, task("sent", "u5", host="client@h", name="new", queue="q-new"), at=T0 + 200)
    feed(state, task("received", "u5", host="w3@h", name="new"), at=T0 + 200)
    feed(state, task("failed", "u5", host="w3@h", exception="NewError()"), at=T0 + 200)
    metrics = render(state, now=T0 + 200)
    assert metrics.get("celery_task_received_total", task="new", worker="w3@h") == 1
    assert metrics.get("celery_task_sent_total", task="new", queue="q-new") == 1
    assert metrics.get("celery_task_exceptions_total", task="new", exception="NewError") == 1
    # Only the one fold of "new" while the cap was full.
    assert metrics.get("celery_exporter_label_overflow_total", label="task", reason="cap") == 1


def test_a_crafted_uuid_is_cut_so_a_tracked_task_stays_small() -> None:
    state = make_state()
    uuid = "u" * 5_000
    feed(state, task("received", uuid, name="tests.add"))
    assert [len(key) for key in state.counts.tracked] == [128]
    # Its later events find it under the same cut uuid: named, and no longer tracked at the end.
    feed(state, task("started", uuid), task("succeeded", uuid + "-tail", runtime=0.5))
    metrics = render(state)
    assert metrics.get("celery_task_succeeded_total", task="tests.add", worker="w1@h") == 1
    assert state.counts.tracked == {}


def test_a_hostname_past_the_length_cap_is_counted_but_not_greeted() -> None:
    state = make_state(max_label_length=32)
    long_host = "worker@" + "h" * 1_000
    feed(state, heartbeat(long_host, freq=2.0), heartbeat("w1@h", freq=2.0))
    # A broadcast to the cut name would reach no worker; the periodic broadcast reaches it.
    assert state.new_workers() == ["w1@h"]
    assert render(state).get("celery_worker_online", worker="worker@" + "h" * 22 + CUT_MARK) == 1


def test_a_long_custom_event_type_counts_as_other() -> None:
    state = make_state()
    feed(
        state,
        {"type": "custom-" + "x" * 100, "hostname": "w1@h"},
        {"type": "mine", "hostname": "h"},
    )
    assert render(state).by_label("celery_exporter_events_total", "type") == {
        "other": 1.0,
        "mine": 1.0,
    }


def test_a_heartbeat_with_software_text_no_worker_sends_is_rejected_whole() -> None:
    state = make_state()
    feed(state, heartbeat("w1@h", freq=2.0, active=0, sw_ident="py-celery", sw_ver="5.5.3"))
    feed(state, heartbeat("w2@h", freq=2.0, active=0, sw_ver="5." * 1_000))
    metrics = render(state)
    info = {("worker", "w1@h"), ("sw_ident", "py-celery"), ("sw_ver", "5.5.3"), ("sw_sys", "")}
    assert metrics.series("celery_worker_info") == {frozenset(info): 1.0}
    assert not metrics.series("celery_worker_online", worker="w2@h")
    assert metrics.get("celery_exporter_events_rejected_total", reason="invalid_field") == 1


@pytest.mark.parametrize("worker_label", [True, False])
def test_a_sent_only_name_and_queue_give_their_places_back_after_the_delay(
    worker_label: bool,
) -> None:
    """Task names and queues seen only in task-sent events (any broker client may send them)
    have no worker to be purged with: their series go the purge delay after their last
    task-sent, unless a worker holds the name, and their places are free again."""
    state = make_state(
        max_task_names=2, max_queues=2, purge_offline_worker_after=60.0, worker_label=worker_label
    )
    feed(state, heartbeat("w1@h", freq=2.0))
    feed(state, task("sent", "u1", host="c@h", name="crafted", queue="cq1"))
    feed(state, task("sent", "u2", host="c@h", name="held", queue="cq2"))
    feed(state, task("received", "u2", name="held"))
    feed(state, task("sent", "u3", host="c@h", name="late", queue="cq3"))  # both caps full
    feed(state, task("sent", "u4", host="c@h", name="crafted", queue="cq1"), at=T0 + 30)
    metrics = render(state, now=T0 + 30)
    assert metrics.series("celery_task_sent_total") == {
        frozenset({("task", "crafted"), ("queue", "cq1")}): 2,
        frozenset({("task", "held"), ("queue", "cq2")}): 1,
        frozenset({("task", "other"), ("queue", "other")}): 1,
    }

    # 61 s after their last task-sent: the crafted series and (other, other) go; "held" stays,
    # a worker holds its name (its counter must not restart while the task runs).
    feed(state, heartbeat("w1@h", freq=2.0), at=T0 + 91)
    metrics = render(state, now=T0 + 91)
    assert metrics.series("celery_task_sent_total") == {
        frozenset({("task", "held"), ("queue", "cq2")}): 1,
    }
    assert state.counts.caps.admitted["task"] == {"held"}
    assert state.counts.caps.admitted["queue"] == {"cq2"}
    assert state.counts.sent_seen == {}

    # A name seen later takes the free place, under its own label.
    feed(state, task("sent", "u5", host="c@h", name="late", queue="cq3"), at=T0 + 92)
    feed(state, task("received", "u5", name="late"), at=T0 + 92)
    metrics = render(state, now=T0 + 92)
    assert metrics.get("celery_task_sent_total", task="late", queue="cq3") == 1
    received = metrics.by_label("celery_task_received_total", "task")
    assert received == {"held": 1, "late": 1}
    assert metrics.get("celery_exporter_label_overflow_total", label="task", reason="cap") == 1
    assert metrics.get("celery_exporter_label_overflow_total", label="queue", reason="cap") == 1
