"""A broker that is down at start or goes away: keep serving, keep the counts, resume."""

from __future__ import annotations

import os
import time

import pytest
import requests

from testkit.proxy import FreezingProxy
from tests.conftest import (
    ExporterProcess,
    Metrics,
    PrivateRedis,
    Processes,
    client,
    redis_subscriptions,
    wait_until,
)

WORKER = "survivor@outage"

REDIS_PATHS = {
    "fast-path": (),
    "kombu-path": ("--broker-transport-option", "exporter_fast_path=false"),
}
"""The two Redis intake paths and the exporter arguments that choose each."""


def succeeded(metrics: Metrics) -> float | None:
    return metrics.get("celery_task_succeeded_total", task="tests.add", worker=WORKER)


def counting_exporter(
    private_redis: PrivateRedis, processes: Processes, path: str, exporter_url: str | None = None
) -> ExporterProcess:
    """The private Redis started, the exporter on intake ``path`` (through ``exporter_url``, a
    proxy in front of that Redis, if given) and a worker on it, and 3 tasks counted: where every
    outage below begins."""
    private_redis.start()
    exporter = processes.exporter(exporter_url or private_redis.url, *REDIS_PATHS[path])
    on_kombu_path = '"queue": "celeryev.' in exporter.log()  # kombu's path logs its queue
    assert on_kombu_path == (path == "kombu-path")
    processes.worker(private_redis.url, WORKER)
    send_tasks(private_redis.url, 3)
    wait_until(lambda: succeeded(exporter.metrics()) == 3.0, what="3 successes before the outage")
    return exporter


def send_tasks(broker_url: str, count: int) -> None:
    with client(broker_url) as app:
        for i in range(count):
            app.send_task("tests.add", (i, i))


def wait_connected(exporter: ExporterProcess, value: float, what: str) -> float:
    """Wait for ``celery_exporter_broker_connected`` to read ``value``, sampling every 50 ms;
    returns the seconds it took."""
    start = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == value,
        timeout=40,
        interval=0.05,
        what=what,
    )
    return time.monotonic() - start


def readyz(exporter: ExporterProcess) -> int:
    return requests.get(f"{exporter.url}/readyz", timeout=2).status_code


@pytest.mark.parametrize("path", REDIS_PATHS)
def test_broker_restart_keeps_counts_and_resumes(
    path: str, private_redis: PrivateRedis, processes: Processes
) -> None:
    exporter = counting_exporter(private_redis, processes, path)

    private_redis.stop()
    wait_connected(exporter, 0.0, "broker_connected to drop to 0")
    metrics = exporter.metrics()  # still served, nothing counted is lost
    assert succeeded(metrics) == 3.0
    assert (metrics.total("celery_exporter_broker_connection_errors_total") or 0) >= 1
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    assert requests.get(f"{exporter.url}/healthz", timeout=2).status_code == 200
    assert readyz(exporter) == 503
    assert exporter.proc.poll() is None

    # Down long enough for the retry delay to reach its cap (0.5 + 1 + 2 + 4 s of backoff).
    time.sleep(9)
    private_redis.start()  # same port, empty: no event survived the outage
    reconnected_after = wait_connected(exporter, 1.0, "the exporter to reconnect")
    print(f"reconnected {reconnected_after:.2f} s after Redis came back")
    assert reconnected_after < 8.0  # the 5 s cap of the backoff, with room for a loaded machine
    assert readyz(exporter) == 200
    # The worker reconnects on its own schedule; tasks sent meanwhile wait in the queue.
    send_tasks(private_redis.url, 2)
    wait_until(
        lambda: succeeded(exporter.metrics()) == 5.0,
        timeout=60,
        what="2 more successes after the broker came back",
    )
    assert "broker connection lost" in exporter.log()
    assert exporter.stop() == 0


@pytest.mark.parametrize("path", REDIS_PATHS)
def test_connected_means_subscribed(
    path: str, private_redis: PrivateRedis, processes: Processes
) -> None:
    """``broker_connected`` and readiness turn 1 only once Redis holds the subscription, so
    tasks sent the moment they do are counted: Redis keeps nothing for a subscriber that is not
    there yet. The proxy holds the exporter's PSUBSCRIBE from the server for as long as the test
    looks."""
    private_redis.start()
    processes.worker(private_redis.url, WORKER)
    proxy = FreezingProxy(private_redis.port)
    try:
        proxy.hold_subscriptions()
        exporter = processes.exporter(proxy.url(), *REDIS_PATHS[path], wait_connected=False)
        wait_until(proxy.subscription_held.is_set, what="the exporter's PSUBSCRIBE at the proxy")
        assert exporter.metrics().get("celery_exporter_broker_connected") == 0.0
        assert readyz(exporter) == 503
        proxy.release_subscriptions()
        wait_connected(exporter, 1.0, "broker_connected once Redis took the subscription")
        assert redis_subscriptions(private_redis.url, os.getpid()) == 1  # the exporter's pattern
        send_tasks(private_redis.url, 3)
        wait_until(lambda: succeeded(exporter.metrics()) == 3.0, what="the 3 tasks counted")
    finally:
        proxy.close()


def test_exporter_started_before_its_broker(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    exporter = processes.exporter(private_redis.url, wait_connected=False)
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_broker_connected") == 0.0
    assert readyz(exporter) == 503
    wait_until(lambda: "broker unreachable" in exporter.log(), what="one clear log line")

    private_redis.start()
    wait_connected(exporter, 1.0, "the exporter to connect once the broker is up")
    processes.worker(private_redis.url, WORKER)
    send_tasks(private_redis.url, 1)
    wait_until(lambda: succeeded(exporter.metrics()) == 1.0, what="the first success")


def test_sigterm_shuts_down_cleanly(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url)
    assert exporter.stop() == 0
    assert "exporter stopped" in exporter.log()


@pytest.mark.parametrize("path", REDIS_PATHS)
def test_frozen_broker_is_noticed_in_seconds_and_counting_resumes(
    path: str, private_redis: PrivateRedis, processes: Processes
) -> None:
    """SIGSTOP on the broker: the kernel keeps the TCP connections open, only answers stop.
    Both Redis paths PING a connection that has been quiet for 2 s and give up on it when no
    PONG comes within 3 s."""
    exporter = counting_exporter(private_redis, processes, path)

    private_redis.freeze()
    try:
        noticed_after = wait_connected(exporter, 0.0, "broker_connected 0 while Redis is frozen")
        assert readyz(exporter) == 503
        assert "no answer to PING" in exporter.log()
        # Reconnection attempts against the frozen server fail by timeout instead of hanging.
        wait_until(
            lambda: "broker unreachable" in exporter.log(),
            timeout=30,
            what="a reconnection attempt to fail against the frozen server",
        )
        metrics = exporter.metrics()  # served all along
        assert metrics.get("celery_exporter_broker_connected") == 0.0
        assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
        assert succeeded(metrics) == 3.0
    finally:
        private_redis.thaw()
    recovered_after = wait_connected(exporter, 1.0, "the exporter to reconnect after the thaw")
    print(f"{path}: noticed after {noticed_after:.2f} s, reconnected {recovered_after:.2f} s later")
    assert noticed_after < 12.0  # designed: 2 s of silence + 3 s for the PONG
    assert recovered_after < 12.0  # designed: the 5 s backoff cap + a 5 s connection timeout
    assert readyz(exporter) == 200

    metrics = exporter.metrics()
    assert succeeded(metrics) == 3.0  # nothing counted was lost, nothing counted twice
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    send_tasks(private_redis.url, 3)
    wait_until(
        lambda: succeeded(exporter.metrics()) == 6.0,
        timeout=60,
        what="3 more successes after the thaw",
    )
    metrics = exporter.metrics()
    assert metrics.get("celery_task_received_total", task="tests.add", worker=WORKER) == 6.0
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    assert exporter.stop() == 0


@pytest.mark.parametrize("path", REDIS_PATHS)
def test_a_freeze_halfway_through_a_message_is_noticed(
    path: str, private_redis: PrivateRedis, processes: Processes
) -> None:
    """The server stops in the middle of a reply (a busy stream, a host that hangs): the reader
    holds half a message. The fast path reads with timeouts of its own; on kombu's path,
    redis-py reads the rest with none, and only the kernel's bound on that read gets the reader
    out (3 s, then redis-py's reconnection attempt fails after its 5 s timeout)."""
    proxy = FreezingProxy(private_redis.port)
    try:
        exporter = counting_exporter(private_redis, processes, path, proxy.url())
        proxy.freeze_midway()
        with client(private_redis.url) as app, app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="bulky@outage")
            dispatcher.send("worker-heartbeat", padding="x" * 300_000)  # a 400 kB message
        wait_until(proxy.frozen.is_set, timeout=10, what="the proxy to cut the message in half")
        noticed_after = wait_connected(exporter, 0.0, "broker_connected 0 amid a message")
        assert readyz(exporter) == 503
        metrics = exporter.metrics()  # served all along
        assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
        assert succeeded(metrics) == 3.0
        proxy.thaw()
        recovered_after = wait_connected(exporter, 1.0, "the exporter to reconnect after the thaw")
        print(f"{path}: noticed after {noticed_after:.2f} s, reconnected {recovered_after:.2f} s")
        assert noticed_after < 14.0  # designed: 2 + 3 s (fast path), 3 + 5 s (kombu's path)
        assert recovered_after < 12.0  # designed: the 5 s backoff cap + a 5 s connection timeout
        send_tasks(private_redis.url, 3)
        wait_until(
            lambda: succeeded(exporter.metrics()) == 6.0,
            timeout=60,
            what="3 more successes after the thaw",
        )
        assert exporter.metrics().get("celery_exporter_broker_connections_lost_total") == 1.0
        assert exporter.stop() == 0
    finally:
        proxy.close()
