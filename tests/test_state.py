"""Unit tests of the counting and liveness logic, with hand-made events and a fixed clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from celery_events_exporter.decoder import Decoder
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.writer import Format
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.state import MAX_CUSTOM_EVENT_TYPES, State, StateSettings
from tests.conftest import Metrics

T0 = 1_800_000_000.0


def make_state(**overrides: Any) -> State:
    settings: dict[str, Any] = {
        "runtime_buckets": (0.1, 1.0, 10.0),
        "queue_wait_buckets": (0.5, 5.0),
    }
    settings.update(overrides)
    return State(StateSettings(**settings))


def feed(state: State, *events: dict[str, Any], at: float = T0) -> None:
    for event in events:
        state.apply(event, at)


def task(event_type: str, uuid: str, host: str = "w1@h", **fields: Any) -> dict[str, Any]:
    return {"type": f"task-{event_type}", "uuid": uuid, "hostname": host, **fields}


def heartbeat(host: str = "w1@h", **fields: Any) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": host, **fields}


def render(state: State, now: float = T0) -> Metrics:
    """A scrape at ``now``, after the ingest thread's tick (which purges and sweeps)."""
    decoder = Decoder(state, IntakeBacklog(), clock=lambda: now)
    decoder.tick()
    collector = EventsCollector(state, clock=lambda: now)
    return Metrics.parse(b"".join(collector.render(Format.TEXT)).decode())


def test_task_lifecycle_is_counted_under_the_received_name() -> None:
    state = make_state()
    feed(
        state,
        task("received", "u1", name="img.blur", timestamp=100.0),
        task("started", "u1", timestamp=100.25),
        task("succeeded", "u1", runtime=1.0),
    )
    metrics = render(state)
    for name in ("received", "started", "succeeded"):
        assert metrics.get(f"celery_task_{name}_total", task="img.blur", worker="w1@h") == 1.0
    # A value equal to a bound lands in that bucket (Prometheus' le is "less or equal").
    runtime = metrics.by_label("celery_task_runtime_seconds_bucket", "le", task="img.blur")
    assert runtime == {"0.1": 0.0, "1.0": 1.0, "10.0": 1.0, "+Inf": 1.0}
    assert metrics.by_label("celery_task_queue_wait_seconds_bucket", "le", task="img.blur") == {
        "0.5": 1.0, "5.0": 1.0, "+Inf": 1.0,
    }  # fmt: skip
    assert metrics.get("celery_task_queue_wait_seconds_sum", task="img.blur", worker="w1@h") == 0.25


def test_retry_keeps_the_name_and_reject_after_failure_keeps_it_too() -> None:
    state = make_state()
    feed(
        state,
        task("received", "u1", name="flaky"),
        task("started", "u1"),
        task("retried", "u1", exception="IOError()"),
        task("received", "u1", name="flaky"),
        task("started", "u1"),
        task("failed", "u1", exception="Reject('no')"),
        task("rejected", "u1", requeue=False),
    )
    metrics = render(state)
    assert metrics.by_label("celery_task_received_total", "task") == {"flaky": 2.0}
    assert metrics.by_label("celery_task_retried_total", "task") == {"flaky": 1.0}
    assert metrics.by_label("celery_task_rejected_total", "task") == {"flaky": 1.0}
    assert metrics.by_label("celery_task_exceptions_total", "exception") == {"Reject": 1.0}


def test_events_of_unknown_tasks_are_labelled_unknown() -> None:
    state = make_state()
    feed(state, task("failed", "never-received", exception="NotRegistered('x')"))
    metrics = render(state)
    assert metrics.get("celery_task_failed_total", task="unknown", worker="w1@h") == 1.0


def test_tracked_tasks_are_bounded_oldest_first() -> None:
    state = make_state(max_tracked_tasks=2)
    feed(state, *(task("received", f"u{i}", name=f"t{i}") for i in range(3)))
    feed(state, task("succeeded", "u0"), task("succeeded", "u2"))
    metrics = render(state)
    # u0 was evicted when u2 arrived: its success cannot be named any more. (Every task's
    # series exists from its first event, at 0 until it succeeds.)
    assert metrics.by_label("celery_task_succeeded_total", "task") == {
        "unknown": 1.0, "t0": 0.0, "t1": 0.0, "t2": 1.0,
    }  # fmt: skip
    assert metrics.get("celery_exporter_tracked_tasks") == 1.0


def test_exception_classes_are_capped() -> None:
    state = make_state(max_exception_classes=2)
    feed(
        state,
        *(
            task("failed", f"u{i}", name="t", exception=f"{cls}('x')")
            for i, cls in enumerate(["KeyError", "ValueError", "TypeError", "KeyError"])
        ),
    )
    assert render(state).by_label("celery_task_exceptions_total", "exception") == {
        "KeyError": 2.0, "ValueError": 1.0, "other": 1.0,
    }  # fmt: skip


def test_custom_event_types_are_capped() -> None:
    state = make_state()
    feed(
        state,
        *({"type": f"custom-{i}", "hostname": "h"} for i in range(MAX_CUSTOM_EVENT_TYPES + 3)),
    )
    events = render(state).by_label("celery_exporter_events_total", "type")
    assert len(events) == MAX_CUSTOM_EVENT_TYPES + 1
    assert events["other"] == 3.0


def test_liveness_follows_celerys_rule_and_wake_up_replies_blank_nothing() -> None:
    state = make_state()
    full: dict[str, Any] = {"freq": 2.0, "active": 2, "processed": 9, "loadavg": [0.5, 0.25, 0.125]}
    feed(state, heartbeat(**full), at=T0)
    feed(state, heartbeat(freq=5.0), at=T0 + 1)  # wake-up reply: alive, nothing else
    metrics = render(state, now=T0 + 4.9)
    assert metrics.get("celery_worker_online", worker="w1@h") == 1.0
    assert metrics.get("celery_worker_active_tasks", worker="w1@h") == 2.0
    assert metrics.get("celery_worker_load15", worker="w1@h") == 0.125
    assert metrics.get("celery_worker_heartbeat_interval_seconds", worker="w1@h") == 2.0
    assert metrics.get("celery_worker_last_heartbeat_timestamp_seconds", worker="w1@h") == T0 + 1
    # 2 x freq after the last heartbeat the worker is offline; its gauges stay as they were.
    metrics = render(state, now=T0 + 5.0)
    assert metrics.get("celery_worker_online", worker="w1@h") == 0.0
    assert metrics.get("celery_worker_active_tasks", worker="w1@h") == 2.0


def test_a_goodbye_is_the_workers_last_reading() -> None:
    # worker-offline carries a heartbeat's counters: w1 read processed 201 at its last
    # heartbeat and said 206 when it stopped; the goodbye's figures win.
    state = make_state()
    feed(state, heartbeat(freq=2.0, active=3, processed=201, loadavg=[0.5, 0.25, 0.125]))
    feed(
        state,
        {"type": "worker-offline", "hostname": "w1@h", "freq": 2.0, "active": 0,
         "processed": 206, "loadavg": [0.75, 0.5, 0.25]},
        at=T0 + 1,
    )  # fmt: skip
    metrics = render(state, now=T0 + 1.5)
    assert metrics.get("celery_worker_online", worker="w1@h") == 0.0
    assert metrics.get("celery_worker_processed_tasks_total", worker="w1@h") == 206.0
    assert metrics.get("celery_worker_active_tasks", worker="w1@h") == 0.0
    assert metrics.get("celery_worker_load1", worker="w1@h") == 0.75
    # Its last heartbeat stays when it was last heard from before the goodbye.
    assert metrics.get("celery_worker_last_heartbeat_timestamp_seconds", worker="w1@h") == T0
    # A goodbye with a number no worker sends is refused like a heartbeat with one.
    feed(state, {"type": "worker-offline", "hostname": "w1@h", "processed": -1}, at=T0 + 2)
    metrics = render(state, now=T0 + 2.5)
    assert metrics.get("celery_worker_processed_tasks_total", worker="w1@h") == 206.0


def test_worker_timeout_overrides_celerys_rule() -> None:
    state = make_state(worker_timeout=30.0)
    feed(state, heartbeat(freq=2.0, active=0))
    assert render(state, now=T0 + 29).get("celery_worker_online", worker="w1@h") == 1.0
    assert render(state, now=T0 + 31).get("celery_worker_online", worker="w1@h") == 0.0


def test_offline_workers_are_purged_with_their_task_series() -> None:
    state = make_state(purge_offline_worker_after=60.0)
    feed(state, heartbeat(freq=2.0, active=0), heartbeat("w2@h", freq=2.0, active=0))
    feed(state, task("received", "u1", name="t"), task("received", "u2", "w2@h", name="t"))
    feed(state, {"type": "worker-offline", "hostname": "w2@h"}, at=T0 + 100)
    feed(state, heartbeat("w2@h", freq=2.0, active=0), at=T0 + 100)  # w2 came back
    # w1 went silent at T0 and is offline from T0 + 4: purged 60 s later, not before.
    metrics = render(state, now=T0 + 63)
    assert set(metrics.by_label("celery_worker_online", "worker")) == {"w1@h", "w2@h"}
    metrics = render(state, now=T0 + 100)
    assert metrics.by_label("celery_worker_online", "worker") == {"w2@h": 1.0}
    assert metrics.by_label("celery_task_received_total", "worker") == {"w2@h": 1.0}


def test_without_the_worker_label_task_series_merge_across_workers() -> None:
    state = make_state(worker_label=False)
    feed(state, task("received", "u1", name="t"), task("received", "u2", "w2@h", name="t"))
    metrics = render(state)
    assert metrics.series("celery_task_received_total") == {frozenset({("task", "t")}): 2.0}
    # The Workers view still gets each worker's own counts.
    assert state.worker_task_counts() == {
        "w1@h": {"task-received": 1},
        "w2@h": {"task-received": 1},
    }


@pytest.mark.parametrize("worker_label", [True, False])
def test_a_purged_worker_leaves_no_task_counts_behind(worker_label: bool) -> None:
    state = make_state(purge_offline_worker_after=60.0, worker_label=worker_label)
    feed(state, heartbeat(freq=2.0, active=0), heartbeat("w2@h", freq=2.0, active=0))
    feed(state, task("received", "u1", name="t"), task("received", "u2", "w2@h", name="t"))
    feed(state, heartbeat("w2@h", freq=2.0, active=0), at=T0 + 100)
    render(state, now=T0 + 100)  # a scrape purges w1
    assert state.worker_task_counts() == {"w2@h": {"task-received": 1}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "invalid_json"),
        (b"3", "not_an_object"),
        (b'{"hostname": "h"}', "missing_type"),
        (b'{"type": "task-received"}', "missing_hostname"),
        (b'{"type": "task-received", "hostname": "h"}', "missing_uuid"),
        (b'{"type": "worker-heartbeat", "hostname": "h", "loadavg": [1, 2, "x"]}', "invalid_field"),
        (b'{"type": "worker-heartbeat", "hostname": "h", "active": "many"}', "invalid_field"),
    ],
)
def test_bad_messages_are_rejected_by_reason(body: bytes, reason: str | None) -> None:
    state = make_state()
    inbox = IntakeBacklog()
    inbox.put(RawMessage(T0, "application/json", body))
    Decoder(state, inbox).drain()
    assert state.snapshot(T0).rejected == ({reason: 1} if reason else {})


def test_a_task_multi_batch_counts_every_event() -> None:
    state = make_state()
    batch = [task("received", f"u{i}", name="t") for i in range(24)]
    inbox = IntakeBacklog()
    inbox.put(RawMessage(T0, "application/json", orjson.dumps(batch)))
    Decoder(state, inbox).drain()
    assert state.snapshot(T0).task_counts["task-received"] == {("t", "w1@h"): 24}


def test_a_purge_forgets_a_bounded_slice_of_workers_per_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery_events_exporter.state import state as state_module

    monkeypatch.setattr(state_module, "PURGE_SLICE", 10)
    state = make_state(purge_offline_worker_after=60.0)
    for i in range(12):
        host = f"w{i}@h"
        feed(state, heartbeat(host, freq=2.0), task("received", f"u{i}", host=host, name="t"))
    later = T0 + 100
    # Each worker costs 1 + its one task name: five a slice, and the next calls go on.
    assert len(state.purge_offline_workers(later)) == 5
    assert len(state.counts.workers) == 7
    assert len(state.counts.task_counts["task-received"]) == 7
    assert len(state.purge_offline_workers(later)) == 5
    state.tick(later)  # the ingest thread's tick takes the last two
    assert state.snapshot(later).workers == []
    assert state.snapshot(later).task_counts["task-received"] == {}
