"""The event families as the collector writes them from a state, held byte for byte to
prometheus-client's output for the same snapshot (``tests.exposition_oracle``), in both formats,
through the per-series caches, on hand-made and on generated event sequences."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_events_exporter.app import build_state
from celery_events_exporter.config import Config
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.writer import Format
from celery_events_exporter.state import Histogram, State
from tests.exposition_oracle import Families, families, reference

T0 = 1_000.0


def _apply(state: State, events: Iterable[dict[str, object]]) -> None:
    for event in events:
        state.apply(event, T0)


def _task(state: State, i: int, worker: str, name: str) -> None:
    uuid = f"u{i}"
    _apply(state, [
        {"type": "task-sent", "hostname": "client", "uuid": uuid, "name": name, "queue": "q"},
        {"type": "task-received", "hostname": worker, "uuid": uuid, "name": name,
         "timestamp": T0},
        {"type": "task-started", "hostname": worker, "uuid": uuid, "timestamp": T0 + i},
        {"type": "task-failed", "hostname": worker, "uuid": uuid,
         "exception": "KeyError('k')"} if i % 7 == 0 else
        {"type": "task-succeeded", "hostname": worker, "uuid": uuid,
         "runtime": 1e6 + i if i == 3 else i / 10},
    ])  # fmt: skip


def sample_state(worker_label: bool = True) -> State:
    """A state whose series need every escaping, "%" (histogram lines are %-formatted) and Go's
    exponent notation."""
    state = build_state(Config(worker_label=worker_label))
    names = ['odd"name\\', "new\nline", "100%d%%s", "ünïcode", "plain"]
    for i in range(60):
        _task(state, i, f"celery@w{i % 4}", names[i % 5])
    _apply(state, [
        {"type": "worker-heartbeat", "hostname": "celery@w1", "freq": 2.0, "active": 1,
         "processed": 5, "loadavg": [1, 2.5, 3], "sw_ident": "py-celery", "sw_ver": "5.7.0",
         "sw_sys": "Linux"},
        {"type": "worker-heartbeat", "hostname": "celery@w2", "freq": 2.0},
        {"type": "custom-event", "hostname": "celery@w2"},
        {"type": "task-received", "hostname": "celery@w2"},  # rejected: no uuid
    ])  # fmt: skip
    state.set_concurrency({"celery@w1": 8})
    # Go writes 1e6 and more in exponent notation: counts and sums that large (too many to
    # count one by one here, so set straight into the tables).
    state.counts.runtime[("big", "celery@w3")] = Histogram([0] * 17 + [1_500_000], 2.5e9)
    state.counts.queue_wait[("big", "celery@w3")] = Histogram([999_999, 1] + [0] * 14, 12.5)
    return state


def collector_for(state: State) -> EventsCollector:
    """A collector of ``state`` with a fixed clock, a second after the events."""
    return EventsCollector(state, clock=lambda: T0 + 1)


def _assert_same(collector: EventsCollector, fmt: Format) -> None:
    """What the collector writes is what prometheus-client writes for the same snapshot."""
    now = collector.clock()
    snap, per_worker = collector.snapshot(now)
    ours = b"".join(collector.write(snap, per_worker, now, fmt))
    expected = reference(Families(families(collector, snap, per_worker, now)), fmt)
    if fmt is Format.OPENMETRICS:
        ours += b"# EOF\n"
    assert ours == expected


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("worker_label", [True, False])
def test_both_formats_are_byte_identical_to_prometheus_client(
    fmt: Format, worker_label: bool
) -> None:
    collector = collector_for(sample_state(worker_label))
    _assert_same(collector, fmt)
    _assert_same(collector, fmt)  # again, from the caches


def test_render_writes_the_state_as_of_the_clock() -> None:
    collector = collector_for(sample_state())
    now = collector.clock()
    snap, per_worker = collector.snapshot(now)
    assert collector.render(Format.TEXT) == collector.write(snap, per_worker, now, Format.TEXT)


@pytest.mark.parametrize("fmt", list(Format))
def test_the_caches_follow_changes_and_purged_workers(fmt: Format) -> None:
    state = sample_state()
    collector = collector_for(state)
    _assert_same(collector, fmt)
    for i in range(100, 110):  # some series change, one appears
        _task(state, i, "celery@w1", "plain" if i < 109 else "fresh")
    _assert_same(collector, fmt)
    state.settings.purge_offline_worker_after = 1.0
    assert "celery@w1" in state.purge_offline_workers(T0 + 100)
    collector.clock = lambda: T0 + 100
    _assert_same(collector, fmt)
    caches = collector._task_series["celery_task_runtime_seconds"]
    assert not [key for key in caches.histograms if key[1] == "celery@w1"]


# -- generated event sequences --------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=10)
task_names = texts | st.sampled_from(['a"b', "c\\d", "e\nf", "%d%%", "名前"])
workers = st.sampled_from(["celery@w1", 'celery@"quoted"', "celery@back\\slash", "celery@ü"])
runtimes = st.floats(min_value=0, max_value=1e7) | st.sampled_from([0.0, 999_999.5, 2e6])


@st.composite
def task_lifecycle(draw: st.DrawFn, uuid: str) -> list[dict[str, Any]]:
    worker, name = draw(workers), draw(task_names)
    received = draw(st.floats(min_value=0, max_value=1e6))
    events: list[dict[str, Any]] = [
        {"type": "task-sent", "hostname": "client", "uuid": uuid, "name": name,
         "queue": draw(texts)},
        {"type": "task-received", "hostname": worker, "uuid": uuid, "name": name,
         "timestamp": received},
        {"type": "task-started", "hostname": worker, "uuid": uuid,
         "timestamp": received + draw(st.floats(min_value=0, max_value=2e6))},
    ]  # fmt: skip
    end = draw(st.sampled_from(["succeeded", "failed", "retried", "rejected", "revoked", None]))
    if end == "succeeded":
        events.append({"type": "task-succeeded", "hostname": worker, "uuid": uuid,
                       "runtime": draw(runtimes)})  # fmt: skip
    elif end is not None:
        exception = f"{draw(st.sampled_from(['KeyError', 'app.Boom', 'x']))}({draw(texts)!r})"
        events.append({"type": f"task-{end}", "hostname": worker, "uuid": uuid,
                       "exception": exception})  # fmt: skip
    return events


heartbeats = st.builds(
    lambda host, freq, active, processed, load, software: {
        "type": "worker-heartbeat", "hostname": host, "freq": freq, "active": active,
        "processed": processed, "loadavg": load, "sw_ident": software[0],
        "sw_ver": software[1], "sw_sys": software[2],
    },
    workers,
    st.floats(min_value=0.5, max_value=60),
    st.integers(0, 2_000_000),
    st.integers(0, 10**7),
    st.lists(st.floats(min_value=0, max_value=1e7), min_size=3, max_size=3),
    st.tuples(texts, texts, texts),
)  # fmt: skip


@st.composite
def event_batches(draw: st.DrawFn, start: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 6))):
        events += draw(task_lifecycle(f"u{start + i}"))
    events += draw(st.lists(heartbeats, max_size=3))
    return events


@settings(max_examples=60, deadline=None)
@given(
    worker_label=st.booleans(),
    first=event_batches(0),
    second=event_batches(100),
)
def test_any_event_sequence_is_written_as_prometheus_client_writes_it(
    worker_label: bool, first: list[dict[str, Any]], second: list[dict[str, Any]]
) -> None:
    state = build_state(Config(worker_label=worker_label))
    collector = collector_for(state)
    _apply(state, first)
    for fmt in Format:
        _assert_same(collector, fmt)
    _apply(state, second)  # a later scrape, through the caches
    for fmt in Format:
        _assert_same(collector, fmt)
