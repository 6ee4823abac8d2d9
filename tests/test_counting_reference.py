"""The fast counting loop (celery_events_exporter.state.counting, through State) and the plain
one (tests/reference_counts.py) agree on every table, whatever events arrive: valid lifecycles,
retries, events out of order, unknown names, custom types past their cap, malformed events and
items that are not events at all, NaN, infinities and integers beyond any float. Events go
through JSON first: the state gets them as the decoder decodes them (``decode_events``: the
schema's ``TaskEvent`` objects when it reads every event of the message, else the events as
``loads`` reads them), the reference as ``loads`` reads them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_events_exporter.events import vocabulary
from celery_events_exporter.events.body import loads
from celery_events_exporter.events.decode import decode_events
from celery_events_exporter.events.vocabulary import MAX_CUSTOM_EVENT_TYPES
from celery_events_exporter.state import State, StateSettings
from tests.reference_counts import ReferenceCounts

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers().map(lambda n: n * 10**400)  # beyond any float
    | st.floats()  # NaN and infinities too: the decoder reads them as kombu writes them
    | st.text(max_size=6)
)
odd = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=3), scalars)
"""Any JSON value: what a malformed event may carry in any field."""


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value seven times in eight (and when shrinking), else any JSON value."""
    return st.integers(0, 7).flatmap(lambda choice: plausible if choice < 7 else odd)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each as often as its weight says (the first when shrinking)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda index: pool[index])


# Plausible values come from small pools, so that events of one task meet.
LONG_UUID = "u" * 200  # cut to 128 characters: the next one is the same task
uuids = mostly(st.sampled_from(["u1", "u2", "u3", "u4", LONG_UUID, LONG_UUID + "-x"]))
# Long and non-ASCII values meet the label-length cap (16 to 24 bytes in these settings).
LONG_NAME = "tests." + "n" * 30
LONG_HOST = "w3@" + "x" * 30
plausible_names = st.sampled_from(["tests.add", "tests.fail", "", "tâche.é", LONG_NAME, "other"])
plausible_hosts = st.sampled_from(["w1@h", "w2@h", "wé@h", LONG_HOST, "hôte@" + "é" * 12])
names = mostly(plausible_names)
hosts = mostly(plausible_hosts)
times = mostly(st.sampled_from([0.0, 0.05, 1.0, 1.05, 6.0]) | st.floats(0, 100) | st.integers(0, 9))
runtimes = mostly(st.floats(-1, 20) | st.integers(-1, 20))
exceptions = mostly(st.sampled_from(["KeyError('k')", "ValueError()", "Reject('no')", "E: x"]))
numbers = mostly(st.integers(0, 10) | st.integers(-1, 10) | st.floats(0, 10))
loadavgs = mostly(st.lists(mostly(st.floats(0, 4)), min_size=3, max_size=3))
task_types = (vocabulary.TASK_SENT, *vocabulary.TASK_STATE_EVENTS)
custom_types = st.sampled_from(
    [f"custom-{i}" for i in range(MAX_CUSTOM_EVENT_TYPES + 10)] + ["custom-" + "x" * 100]
)

task_fields = {
    "name": names,
    "runtime": runtimes,
    "exception": exceptions,
    "queue": mostly(st.sampled_from(["celery", "q2", "q3", "q" * 40])),
}
worker_fields = {
    "freq": numbers,
    "active": numbers,
    "processed": numbers,
    "loadavg": loadavgs,
    "sw_ident": mostly(st.sampled_from(["py-celery", "x" * 101])),
}
task_events = st.fixed_dictionaries(
    {
        "type": mostly(st.sampled_from(task_types)),
        "hostname": hosts,
        "uuid": uuids,
        "timestamp": times,
    },
    optional=task_fields,
)
worker_events = st.fixed_dictionaries(
    {"type": mostly(st.sampled_from(vocabulary.WORKER_EVENTS)), "hostname": hosts},
    optional=worker_fields,
)
custom_events = st.fixed_dictionaries(
    {"type": custom_types | st.just("other"), "hostname": hosts}, optional={"uuid": uuids}
)
any_events = st.fixed_dictionaries(
    {},
    optional={
        "type": odd,
        "hostname": odd,
        "uuid": odd,
        "timestamp": odd,
        **task_fields,
        **worker_fields,
    },
)
items = weighted(
    (6, task_events), (2, worker_events), (1, custom_events), (1, any_events), (1, odd)
)
message = st.tuples(st.just("count"), st.lists(items, max_size=6), st.floats(0, 1000))
purge = st.tuples(st.just("purge"), st.integers(0, 9), st.just(0.0))
"""Forget the n-th worker the state knows of (its record or its task series), as a purge does."""
orphan = st.tuples(
    st.just("orphan"),
    st.lists(st.tuples(plausible_names | st.text(max_size=30), plausible_hosts), max_size=3),
    st.just(0.0),
)
"""Count tasks orphaned, as the ledger's sweep finds them: (name, hostname) pairs."""
learn = st.tuples(
    st.just("learn"),
    st.dictionaries(st.sampled_from(["u1", "u2", "u5", "u6"]), plausible_names, max_size=3),
    st.just(0.0),
)
"""Names of tasks in flight, as the workers' inspect active/reserved replies give them."""
operations = st.lists(weighted((6, message), (2, purge), (1, orphan), (1, learn)), max_size=25)
state_settings = st.builds(
    StateSettings,
    runtime_buckets=st.just((0.1, 1.0, 10.0)),
    queue_wait_buckets=st.just((0.5, 5.0)),
    worker_label=st.booleans(),
    max_tracked_tasks=st.integers(1, 4),
    max_exception_classes=st.integers(0, 3),
    max_task_names=st.integers(1, 4),
    max_workers=st.integers(1, 3),
    max_queues=st.integers(1, 2),
    max_label_length=st.integers(16, 24),
)


def tables(counts: Any) -> dict[str, Any]:
    """Everything the counting fills, in comparable form (the tracked tasks in their order)."""
    return {
        "task_counts": counts.task_counts,
        "sent": counts.sent,
        "exceptions": counts.exceptions,
        "runtime": {key: (h.counts, h.total) for key, h in counts.runtime.items()},
        "queue_wait": {key: (h.counts, h.total) for key, h in counts.queue_wait.items()},
        "workers": {host: vars(worker) for host, worker in counts.workers.items()},
        "events_by_type": counts.events_by_type,
        "rejected": counts.rejected,
        "tracked": [(uuid, (entry[0], entry[1])) for uuid, entry in counts.tracked.items()],
        "unlabelled": counts.unlabelled,
        "ended": counts.ended,
        "greetings": list(counts.greetings),
        "overflow": counts.caps.overflow,
        "admitted": counts.caps.admitted,
        "orphaned": counts.orphaned,
        "exception_classes": counts.exception_classes,
        "last_event": counts.last_event,
    }


def known_hosts(counts: Any) -> list[str]:
    """The hostnames the counts hold anything under, in a stable order."""
    hosts = set(counts.workers) | set(counts.unlabelled)
    for series in (*counts.task_counts.values(), counts.orphaned):
        hosts.update(host for _, host in series)
    return sorted(hosts)


@settings(max_examples=400, deadline=None)
@given(config=state_settings, ops=operations)
def test_the_fast_loop_counts_what_the_reference_counts(
    config: StateSettings, ops: list[tuple[str, Any, float]]
) -> None:
    fast_rejections: list[tuple[str, str]] = []
    observed: list[int] = []
    state = State(config, on_reject=lambda reason, detail: fast_rejections.append((reason, detail)))
    state.subscribe(lambda changes: observed.append(len(changes)))
    plain_rejections: list[tuple[str, str]] = []
    reference = ReferenceCounts(
        config, on_reject=lambda reason, detail: plain_rejections.append((reason, detail))
    )
    plain_observed = []
    for op, what, at in ops:
        if op == "count":
            body = json.dumps(what)
            state.apply_batch([(decode_events(body), at, body)])
            plain_observed.append(reference.count(loads(body), at))
        elif op == "orphan":
            state.count_orphaned(what)
            reference.count_orphaned(what)
        elif op == "learn":
            state.learn_names(what)
            reference.learn_names(what)
        else:  # the fast purge finds the worker's series through its index, the plain one looks
            hosts = known_hosts(reference)
            assert known_hosts(state.counts) == hosts
            if hosts:
                host = hosts[what % len(hosts)]
                state.counts.forget_worker(host)
                reference.forget_worker(host)

    assert tables(state.counts) == tables(reference)
    assert fast_rejections == plain_rejections
    assert observed == [n for n in plain_observed if n]
    assert_never_negative(state.counts)


def assert_never_negative(counts: Any) -> None:
    """Every counter, histogram bucket and sum the page is made from is at least 0."""
    values: list[float] = [
        *(n for series in counts.task_counts.values() for n in series.values()),
        *counts.sent.values(),
        *counts.exceptions.values(),
        *counts.orphaned.values(),
        *counts.events_by_type.values(),
        *counts.rejected.values(),
        *counts.caps.overflow.values(),
        *(n for host in counts.unlabelled.values() for n in host.values()),
    ]
    for histograms in (counts.runtime, counts.queue_wait):
        for histogram in histograms.values():
            values += [*histogram.counts, histogram.total]
    values += [w.processed for w in counts.workers.values() if w.processed is not None]
    assert all(value >= 0 for value in values)


def test_a_lifecycle_with_a_retry_fills_the_same_tables() -> None:
    """One readable case of the property above, with the values spelled out."""
    config = StateSettings((0.1, 1.0, 10.0), (0.5, 5.0), max_tracked_tasks=10)
    lifecycle: list[Any] = [
        {"type": "task-received", "hostname": "w1@h", "uuid": "u1", "name": "t", "timestamp": 1.0},
        {"type": "task-started", "hostname": "w1@h", "uuid": "u1", "timestamp": 1.25},
        {"type": "task-retried", "hostname": "w1@h", "uuid": "u1", "exception": "IOError()"},
        {"type": "task-received", "hostname": "w1@h", "uuid": "u1", "name": "t", "timestamp": 2.0},
        {"type": "task-started", "hostname": "w1@h", "uuid": "u1", "timestamp": 8.0},
        {"type": "task-succeeded", "hostname": "w1@h", "uuid": "u1", "runtime": 0.5},
        {"type": "task-received", "hostname": "w1@h"},
        "not an event",
    ]
    state = State(config)
    state.apply_many(lifecycle, 100.0)
    reference = ReferenceCounts(config)
    reference.count(lifecycle, 100.0)
    assert tables(state.counts) == tables(reference)
    expected = tables(reference)
    assert expected["task_counts"]["task-received"] == {("t", "w1@h"): 2}
    assert expected["queue_wait"] == {("t", "w1@h"): ([1, 0, 1], 6.25)}
    assert expected["runtime"] == {("t", "w1@h"): ([0, 1, 0, 0], 0.5)}
    assert expected["tracked"] == []
    assert expected["rejected"] == {"missing_uuid": 1, "not_an_object": 1}
    assert expected["events_by_type"] == {
        "task-received": 3,
        "task-started": 2,
        "task-retried": 1,
        "task-succeeded": 1,
    }
