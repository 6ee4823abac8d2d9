"""A frozen RabbitMQ (SIGSTOP of a private node's VM): the kernel keeps the TCP connections open
and nothing is answered. Both AMQP intake paths must notice within the heartbeat rule, say so on
/readyz and broker_connected, keep serving /metrics, and count again within seconds of the thaw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from celery_events_exporter.intake.reader import AMQP_HEARTBEAT
from testkit.brokers import RabbitNode
from tests.conftest import ExporterProcess, Processes, client, wait_until

pytestmark = pytest.mark.integration

WORKER = "survivor@rabbit-freeze"

PATHS = {
    "fast": (),
    "kombu": ("--broker-transport-option", "exporter_fast_path=false"),
}
"""The two AMQP intake paths: the frame-reading fast path (the default for amqp://) and kombu's."""

DETECTION_BOUND = 2 * AMQP_HEARTBEAT + 4.0
"""Designed: a connection silent for two heartbeat intervals is dead (8 s), noticed at the fast
path's next 1 s socket timeout or within two of kombu's path's 0.5 s heartbeat checks; 3 s more
for a loaded machine (two cores shared with other test runs)."""

RECONNECTION_BOUND = 8.0
"""Designed: at most the 5 s backoff step in progress at the thaw, then a handshake of a few
milliseconds; the rest is room for a loaded machine."""


@pytest.fixture
def amqp(rabbit_node: RabbitNode) -> Iterator[str]:
    """A virtual host of our own on the private node: its AMQP URL."""
    with rabbit_node.vhost("cee-freeze") as url:
        yield url


@dataclass
class Counts:
    received: float
    succeeded: float


def counts(exporter: ExporterProcess) -> Counts:
    metrics = exporter.metrics()
    return Counts(
        sum(metrics.series("celery_task_received_total", task="tests.add").values()),
        sum(metrics.series("celery_task_succeeded_total", task="tests.add").values()),
    )


def ready(exporter: ExporterProcess) -> int:
    return requests.get(f"{exporter.url}/readyz", timeout=2).status_code


def log_lines(exporter: ExporterProcess, message: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in exporter.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == message]


@pytest.mark.parametrize("path", list(PATHS))
def test_frozen_rabbitmq_is_noticed_in_seconds_and_counting_resumes(
    rabbit_node: RabbitNode, amqp: str, processes: Processes, path: str
) -> None:
    exporter = processes.exporter(amqp, *PATHS[path])
    (connected,) = log_lines(exporter, "broker connected")
    # The fast path logs the heartbeat it negotiated; kombu's path does not.
    assert ("heartbeat" in connected) == (path == "fast"), connected
    if path == "fast":
        assert connected["heartbeat"] == AMQP_HEARTBEAT
    processes.worker(amqp, WORKER)
    with client(amqp) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i))
    wait_until(lambda: counts(exporter) == Counts(3, 3), what="3 tasks counted before the freeze")

    rabbit_node.freeze()
    frozen_at = time.monotonic()
    slowest_scrape = 0.0
    try:

        def noticed() -> bool:
            nonlocal slowest_scrape
            started = time.monotonic()
            metrics = exporter.metrics()  # /metrics keeps answering meanwhile
            slowest_scrape = max(slowest_scrape, time.monotonic() - started)
            return metrics.get("celery_exporter_broker_connected") == 0.0

        wait_until(noticed, timeout=30, interval=0.05, what="broker_connected to drop to 0")
        noticed_after = time.monotonic() - frozen_at
        assert ready(exporter) == 503
        metrics = exporter.metrics()
        assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
        assert counts(exporter) == Counts(3, 3)  # nothing counted is lost
        # Reconnection attempts against the frozen node fail by timeout instead of hanging.
        wait_until(
            lambda: log_lines(exporter, "broker unreachable"),
            timeout=30,
            what="a reconnection attempt to fail against the frozen node",
        )
        assert exporter.metrics().get("celery_exporter_broker_connected") == 0.0
        assert ready(exporter) == 503
    finally:
        rabbit_node.thaw()
    thawed_at = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=30,
        interval=0.05,
        what="the exporter to reconnect after the thaw",
    )
    reconnected_after = time.monotonic() - thawed_at
    print(
        f"{path} path: freeze noticed after {noticed_after:.2f} s, reconnected "
        f"{reconnected_after:.2f} s after the thaw, slowest scrape meanwhile {slowest_scrape:.3f} s"
    )
    assert noticed_after < DETECTION_BOUND
    assert reconnected_after < RECONNECTION_BOUND
    assert slowest_scrape < 1.0  # the scrape never waits for the broker
    assert ready(exporter) == 200
    (lost,) = log_lines(exporter, "broker connection lost")
    print(f"{path} path: {lost['error']}")

    # The queue is bound again once broker_connected reads 1: tasks sent now are all counted.
    with client(amqp) as app:
        for i in range(4):
            app.send_task("tests.add", (i, 10))
    wait_until(
        lambda: counts(exporter) == Counts(7, 7),
        timeout=30,
        what="4 more tasks counted after the thaw",
    )
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    assert exporter.stop() == 0


STREAM_RATE = 10.0
"""Events a second: more often than the 1 s drain timeout, so kombu's path never times out."""
STREAM_SECONDS = 16.0
"""Longer than RabbitMQ takes to close a connection that sent no heartbeat (two 4 s intervals,
checked every interval: 8-12 s)."""


def test_a_steady_event_stream_keeps_both_paths_connected(amqp: str, processes: Processes) -> None:
    """Events that never let a drain time out must not starve the heartbeats: RabbitMQ closes a
    connection it heard nothing from for two intervals, and each close loses events."""
    exporters = {path: processes.exporter(amqp, *options) for path, options in PATHS.items()}
    sent = 0
    with client(amqp) as app, app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="steady@stream", enabled=True)
        started = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=sent)
            sent += 1
            time.sleep(1 / STREAM_RATE)

    for path, exporter in exporters.items():

        def counted(exporter: ExporterProcess = exporter) -> bool:
            metrics = exporter.metrics()
            return metrics.get("celery_exporter_events_total", type="worker-heartbeat") == sent

        wait_until(counted, what=f"{sent} events counted on the {path} path")
        metrics = exporter.metrics()
        assert metrics.get("celery_exporter_broker_connections_lost_total") == 0.0, path
        assert metrics.total("celery_exporter_broker_connection_errors_total") == 0.0, path
