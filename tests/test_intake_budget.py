"""Memory bounded by bytes under overload: the intake backlog's budget, the counted drops past
it, a socket kept drained; and what the log says when Redis cuts a slow subscriber off."""

from __future__ import annotations

import base64
import signal
import time

import orjson
import pytest
import redis

from celery_events_exporter.intake.backlog import INTAKE_BUDGET, MESSAGE_OVERHEAD, IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.intake.redis import closed_by_server
from tests.conftest import ExporterProcess, PrivateRedis, Processes, wait_until

HOST = "burst@overload"
EVENTS_PER_MESSAGE = 24
TOPIC = "/0.celeryev/worker.heartbeat"


def _message(body: bytes) -> RawMessage:
    return RawMessage(1.0, None, body)


# -- the backlog itself ------------------------------------------------------------------------


def test_the_budget_counts_bodies_and_overhead_and_drops_past_it() -> None:
    backlog = IntakeBacklog(budget_bytes=3 * (100 + MESSAGE_OVERHEAD))
    bodies = [bytes([i]) * 100 for i in range(5)]
    for body in bodies:
        backlog.put(_message(body))
    assert backlog.qsize() == 3
    assert backlog.bytes == 3 * (100 + MESSAGE_OVERHEAD)
    assert backlog.dropped_by_reason == {INTAKE_BUDGET: 2}
    assert backlog.get(timeout=0).body == bodies[0]  # first in, first out
    backlog.put(_message(bodies[3]))  # room again for one
    assert [backlog.get_nowait().body for _ in range(3)] == [bodies[1], bodies[2], bodies[3]]
    assert backlog.bytes == 0
    assert backlog.dropped == 2


def test_no_drop_is_reported_as_zero_from_the_start() -> None:
    assert IntakeBacklog().dropped_by_reason == {INTAKE_BUDGET: 0}


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        IntakeBacklog(0)


def test_a_close_amid_a_busy_stream_names_the_output_buffer_limit() -> None:
    assert "client-output-buffer-limit" in closed_by_server(0.01)
    assert closed_by_server(12.0) == "connection closed by the server after 12.0 s without data"
    assert closed_by_server(12.0, sentinel=True) == (
        "connection closed by the server after 12.0 s without data; or a Sentinel failover "
        "demoted or stopped this server (the master is asked for again)"
    )


# -- against a real redis-server ---------------------------------------------------------------


def _envelope(clock: int) -> bytes:
    """A kombu Redis envelope holding a batch of worker-heartbeat events of HOST."""
    events = [
        {"type": "worker-heartbeat", "hostname": HOST, "timestamp": time.time(), "utcoffset": 0,
         "pid": 1, "clock": clock + i, "freq": 2.0, "active": 0, "processed": clock + i,
         "loadavg": [0.1, 0.2, 0.3], "sw_ident": "py-celery", "sw_ver": "5.7.0",
         "sw_sys": "Linux"}
        for i in range(EVENTS_PER_MESSAGE)
    ]  # fmt: skip
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(events)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": HOST},
            "properties": {"body_encoding": "base64", "delivery_mode": 1, "delivery_tag": "t"},
        }
    )


def _publish(client: redis.Redis, messages: int, per_round: int = 64) -> int:
    """PUBLISH ``messages`` envelopes in pipelined rounds; returns how many reached a
    subscriber (Redis' own count)."""
    payload = _envelope(0)
    delivered = 0
    for start in range(0, messages, per_round):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(per_round, messages - start)):
            pipe.publish(TOPIC, payload)
        delivered += sum(pipe.execute())
    return delivered


def _accounted(exporter: ExporterProcess) -> tuple[float, float]:
    metrics = exporter.metrics()
    counted = metrics.get("celery_exporter_events_total", type="worker-heartbeat") or 0.0
    dropped = metrics.get("celery_exporter_events_dropped_total", reason=INTAKE_BUDGET)
    assert dropped is not None
    return counted, dropped


def test_a_burst_past_the_budget_is_shed_and_every_event_is_counted_or_dropped(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    """8 000 messages (~60 MB, 192 000 events) against a 1 MiB budget, on Redis' default
    output-buffer limit: every event is either counted or in a counted drop, and Redis never
    cuts the exporter off. (That the budget bounds the exporter's memory is measured by the
    benchmark: python -m bench.run --only overload.)"""
    private_redis.start()
    budget = 1 << 20
    exporter = processes.exporter(private_redis.url, "--max-intake-backlog-bytes", str(budget))
    messages = 8000
    with redis.Redis(port=private_redis.port) as client:
        delivered = _publish(client, messages)
    assert delivered == messages  # one subscriber, the exporter, got each one
    sent_events = messages * EVENTS_PER_MESSAGE

    def settled() -> bool:
        counted, dropped = _accounted(exporter)
        return counted + dropped * EVENTS_PER_MESSAGE == sent_events

    wait_until(settled, timeout=90, what="every event counted or dropped")
    counted, dropped = _accounted(exporter)
    metrics = exporter.metrics()
    assert dropped > 0  # the burst outran the decoder: shed, not queued
    assert counted > 0
    assert counted + dropped * EVENTS_PER_MESSAGE == sent_events
    assert metrics.total("celery_exporter_broker_connection_errors_total") == 0.0
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 0.0
    assert metrics.get("celery_exporter_broker_connected") == 1.0
    assert metrics.series("celery_exporter_events_rejected_total") == {}
    assert metrics.get("celery_exporter_intake_backlog_bytes") == 0.0
    assert "intake backlog over its byte budget: dropping messages" in exporter.log()


def test_a_subscriber_cut_off_by_redis_says_why(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    """The exporter paused (SIGSTOP) while a burst arrives: Redis closes it at the output-buffer
    limit; once running again it reads what the kernel kept, then logs the likely cause."""
    private_redis.start()
    exporter = processes.exporter(private_redis.url)
    with redis.Redis(port=private_redis.port) as client:
        client.config_set("client-output-buffer-limit", "pubsub 1mb 0 0")
        exporter.proc.send_signal(signal.SIGSTOP)
        try:
            _publish(client, 4000)  # ~30 MB: more than the kernel's socket buffers hold
            wait_until(lambda: client.pubsub_numpat() == 0, what="Redis to drop the subscriber")
        finally:
            exporter.proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: "client-output-buffer-limit for pubsub was probably exceeded" in exporter.log(),
            what="the log to name the likely cause",
        )
        wait_until(
            lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
            what="the exporter to reconnect",
        )
        metrics = exporter.metrics()
        assert metrics.total("celery_exporter_broker_connection_errors_total") == 1.0
        assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
        assert client.pubsub_numpat() == 1
