"""Malformed, partial and unknown events published straight to the broker never crash the exporter:
each is counted by reason, logged, and what comes after is still counted exactly."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.events.event import get_exchange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from celery_events_exporter.events.vocabulary import CELERY_EVENT_TYPES
from tests.conftest import ExporterProcess, Processes, client, wait_until

CANARY = "canary@malformed"


@pytest.fixture
def publish(redis_url: str) -> Iterator[Any]:
    """Publish raw bodies on Celery's event exchange, bypassing every serializer."""
    with Connection(redis_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))

        def send(
            body: bytes, routing_key: str = "task.multi", content_type: str = "application/json"
        ) -> None:
            producer.publish(
                body, routing_key=routing_key, content_type=content_type, content_encoding="utf-8"
            )

        yield send


def send_canary(broker_url: str, uuid: str) -> None:
    with (
        client(broker_url) as app,
        app.events.default_dispatcher(hostname=CANARY) as dispatcher,
    ):
        dispatcher.send("task-received", uuid=uuid, name="canary.task")
        dispatcher.send("task-succeeded", uuid=uuid, runtime=0.5)


def canaries(exporter: ExporterProcess) -> float | None:
    return exporter.metrics().get("celery_task_succeeded_total", task="canary.task", worker=CANARY)


def test_each_kind_of_bad_input_is_counted_by_reason(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    exporter = processes.exporter(redis_url)
    publish(b"not json {")
    publish(b'"just a string"')
    publish(b'[1, "x", {"type": "task-received"}]')  # 2 non-objects, 1 without hostname
    publish(b'{"hostname": "bad@host"}')
    publish(b'{"type": "task-succeeded", "hostname": "bad@host"}')
    publish(b'{"type": "worker-heartbeat", "hostname": "bad@host", "loadavg": ["a", "b", "c"]}')
    publish(
        pickle.dumps({"type": "worker-heartbeat"}), content_type="application/x-python-serialize"
    )
    # Partial or unknown, but usable: counted, not rejected.
    publish(b'{"type": "task-progress", "hostname": "odd@host", "uuid": "u-1", "pct": 50}')
    publish(b'{"type": "task-succeeded", "hostname": "odd@host", "uuid": "u-2", "runtime": "x"}')
    send_canary(redis_url, "c-0")
    wait_until(lambda: canaries(exporter) == 1.0, what="the canary after the bad input")

    metrics = exporter.metrics()
    assert metrics.by_label("celery_exporter_events_rejected_total", "reason") == {
        "invalid_json": 1.0,
        "not_an_object": 3.0,
        "missing_hostname": 1.0,
        "missing_type": 1.0,
        "missing_uuid": 1.0,
        "invalid_field": 1.0,
        "unsupported_content_type": 1.0,
    }
    events = metrics.by_label("celery_exporter_events_total", "type")
    assert events["task-progress"] == 1.0
    assert metrics.get("celery_task_succeeded_total", task="unknown", worker="odd@host") == 1.0
    # No observation: the runtime series exists only at 0 (created with the pair's first event).
    assert set(metrics.series("celery_task_runtime_seconds_count", worker="odd@host").values()) == {
        0.0
    }
    assert metrics.get("celery_task_runtime_seconds_sum", task="canary.task", worker=CANARY) == 0.5
    log = exporter.log()
    for reason in ("invalid_json", "missing_uuid", "unsupported_content_type"):
        assert f'"reason": "{reason}"' in log, reason


# -- fuzzing -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
EVENT_TYPES = list(CELERY_EVENT_TYPES)
FIELDS = [
    "uuid", "name", "runtime", "timestamp", "exception", "freq", "active", "processed",
    "loadavg", "sw_ident", "sw_ver", "queue",
]  # fmt: skip
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES) | st.text(max_size=12) | json_values},
    optional={
        "hostname": st.sampled_from(["fuzz@a", "fuzz@b"]) | json_values,
        **{field: json_values for field in FIELDS},
    },
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda value: json.dumps(value).encode()),
    event_like.map(lambda event: json.dumps(event).encode()),
    st.lists(event_like, max_size=6).map(lambda events: json.dumps(events).encode()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(bodies, min_size=1, max_size=8))
def test_fuzzed_events_never_crash_it(
    redis_url: str, processes: Processes, publish: Any, batch: list[bytes]
) -> None:
    _survives(_shared_exporter(processes, redis_url), redis_url, publish, batch)


def _survives(exporter: ExporterProcess, redis_url: str, publish: Any, batch: list[bytes]) -> None:
    """Publish a fuzzed batch, then a canary: the exporter must be alive and count it."""
    before = canaries(exporter) or 0.0
    for body in batch:
        publish(body)
    send_canary(redis_url, f"c-{uuid.uuid4()}")
    wait_until(lambda: canaries(exporter) == before + 1, what="the canary after fuzzed input")
    assert exporter.proc.poll() is None


_EXPORTERS: dict[int, ExporterProcess] = {}


def _shared_exporter(processes: Processes, redis_url: str) -> ExporterProcess:
    """One exporter for all of hypothesis' examples within this test: it must survive them all."""
    key = id(processes)
    if key not in _EXPORTERS:
        _EXPORTERS.clear()
        _EXPORTERS[key] = processes.exporter(redis_url)
    return _EXPORTERS[key]


# -- raw envelopes on Redis ----------------------------------------------------------------------


@pytest.fixture
def publish_raw(redis_url: str) -> Iterator[Any]:
    """PUBLISH bytes on the event channel itself: envelopes no kombu producer would write."""
    import redis

    client_ = redis.Redis.from_url(redis_url)
    db = redis_url.rsplit("/", 1)[1]
    try:
        yield lambda body: client_.publish(f"/{db}.celeryev/task.multi", body)
    finally:
        client_.close()


def test_malformed_envelopes_are_counted_not_fatal(
    redis_url: str, processes: Processes, publish_raw: Any
) -> None:
    """The Redis fast path opens every envelope itself."""
    exporter = processes.exporter(redis_url)
    publish_raw(b"not json")
    publish_raw(b"[1, 2]")
    publish_raw(b'{"nobody": 1}')
    publish_raw(b'{"body": 5}')
    publish_raw(b'{"body": "", "properties": [1]}')
    publish_raw(b'{"body": "e30=", "properties": {"body_encoding": "rot13"}}')
    publish_raw(b'{"body": "!!!", "properties": {"body_encoding": "base64"}}')  # decodes to b""
    publish_raw(b"")  # an empty payload is counted too, as on RabbitMQ
    send_canary(redis_url, "c-raw")
    wait_until(lambda: canaries(exporter) == 1.0, what="the canary after raw envelopes")
    assert exporter.metrics().by_label("celery_exporter_events_rejected_total", "reason") == {
        "invalid_envelope": 7.0,
        "invalid_json": 1.0,
    }
    assert exporter.metrics().get("celery_exporter_broker_connections_lost_total") == 0
    assert exporter.proc.poll() is None


def test_malformed_envelopes_on_kombus_path_are_counted_not_fatal(
    redis_url: str, processes: Processes, publish_raw: Any
) -> None:
    """kombu opens the envelopes on its own path: JSON that is no envelope raises inside its
    delivery, which cost the connection (and every event of the gap) until it was counted as
    a rejection instead. What is not JSON at all, or empty, kombu drops itself, with a warning
    in the log."""
    exporter = processes.exporter(
        redis_url, "--broker-transport-option", "exporter_fast_path=false"
    )
    publish_raw(b"not json")  # dropped by kombu
    publish_raw(b"")  # dropped by kombu
    publish_raw(b"[1, 2]")
    publish_raw(b'{"nobody": 1}')
    publish_raw(b'{"body": 5}')
    publish_raw(b'{"body": "", "properties": [1]}')
    send_canary(redis_url, "c-kombu")
    wait_until(lambda: canaries(exporter) == 1.0, what="the canary after raw envelopes")
    metrics = exporter.metrics()
    assert metrics.by_label("celery_exporter_events_rejected_total", "reason") == {
        "invalid_envelope": 4.0,
    }
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 0
    assert exporter.proc.poll() is None


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(
        st.binary(max_size=64)
        | st.fixed_dictionaries(
            {"body": json_values},
            optional={"properties": json_values, "content-type": json_values},
        ).map(lambda envelope: json.dumps(envelope).encode()),
        min_size=1,
        max_size=8,
    )
)
def test_fuzzed_envelopes_never_crash_it(
    redis_url: str, processes: Processes, publish_raw: Any, batch: list[bytes]
) -> None:
    _survives(_shared_exporter(processes, redis_url), redis_url, publish_raw, batch)
