"""A broker that is down at start or goes away: keep serving, keep the counts, resume."""

from __future__ import annotations

import time

import requests

from tests.conftest import Metrics, PrivateRedis, Processes, client, wait_until

WORKER = "survivor@outage"


def succeeded(metrics: Metrics) -> float | None:
    return metrics.get("celery_task_succeeded_total", task="tests.add", worker=WORKER)


def test_broker_restart_keeps_counts_and_resumes(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    private_redis.start()
    exporter = processes.exporter(private_redis.url)
    processes.worker(private_redis.url, WORKER)
    with client(private_redis.url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i))
    wait_until(
        lambda: succeeded(exporter.metrics()) == 3.0,
        what="3 successes before the outage",
    )

    private_redis.stop()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 0.0,
        what="broker_connected to drop to 0",
    )
    metrics = exporter.metrics()  # still served, nothing counted is lost
    assert succeeded(metrics) == 3.0
    assert (metrics.get("celery_exporter_broker_connection_errors_total") or 0) >= 1
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    assert requests.get(f"{exporter.url}/healthz", timeout=2).status_code == 200
    assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 503
    assert exporter.proc.poll() is None

    # Down long enough for the retry delay to reach its cap (0.5 + 1 + 2 + 4 s of backoff).
    time.sleep(9)
    private_redis.start()  # same port, empty: no event survived the outage
    back_at = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=40,
        interval=0.05,
        what="the exporter to reconnect",
    )
    reconnected_after = time.monotonic() - back_at
    print(f"reconnected {reconnected_after:.2f} s after Redis came back")
    assert reconnected_after < 8.0  # the 5 s cap of the backoff, with room for a loaded machine
    assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 200
    # The worker reconnects on its own schedule; tasks sent meanwhile wait in the queue.
    with client(private_redis.url) as app:
        for i in range(2):
            app.send_task("tests.add", (i, 10))
    wait_until(
        lambda: succeeded(exporter.metrics()) == 5.0,
        timeout=60,
        what="2 more successes after the broker came back",
    )
    assert "broker connection lost" in exporter.log()
    assert exporter.stop() == 0


def test_exporter_started_before_its_broker(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    exporter = processes.exporter(private_redis.url, wait_connected=False)
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_broker_connected") == 0.0
    assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 503
    wait_until(lambda: "broker unreachable" in exporter.log(), what="one clear log line")

    private_redis.start()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=40,
        what="the exporter to connect once the broker is up",
    )
    processes.worker(private_redis.url, WORKER)
    with client(private_redis.url) as app:
        app.send_task("tests.add", (1, 1))
    wait_until(lambda: succeeded(exporter.metrics()) == 1.0, what="the first success")


def test_sigterm_shuts_down_cleanly(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url)
    assert exporter.stop() == 0
    assert "exporter stopped" in exporter.log()


def test_frozen_broker_is_noticed_in_seconds_and_counting_resumes(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    """SIGSTOP on the broker: the kernel keeps the TCP connections open, only answers stop."""
    private_redis.start()
    exporter = processes.exporter(private_redis.url)
    processes.worker(private_redis.url, WORKER)
    with client(private_redis.url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i))
    wait_until(lambda: succeeded(exporter.metrics()) == 3.0, what="3 successes before the freeze")

    private_redis.freeze()
    frozen_at = time.monotonic()
    try:
        wait_until(
            lambda: exporter.metrics().get("celery_exporter_broker_connected") == 0.0,
            timeout=30,
            interval=0.05,
            what="broker_connected to drop to 0 while Redis is frozen",
        )
        noticed_after = time.monotonic() - frozen_at
        assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 503
        assert "no answer to PING" in exporter.log()
        # Reconnection attempts against the frozen server fail by timeout instead of hanging.
        wait_until(
            lambda: "broker unreachable" in exporter.log(),
            timeout=30,
            what="a reconnection attempt to fail against the frozen server",
        )
        assert exporter.metrics().get("celery_exporter_broker_connected") == 0.0
    finally:
        private_redis.thaw()
    thawed_at = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=30,
        interval=0.05,
        what="the exporter to reconnect after the thaw",
    )
    recovered_after = time.monotonic() - thawed_at
    print(f"freeze noticed after {noticed_after:.2f} s, reconnected {recovered_after:.2f} s after")
    assert noticed_after < 12.0  # designed: 2 s of silence + 3 s for the PONG
    assert recovered_after < 12.0  # designed: the 5 s backoff cap + a 5 s connection timeout
    assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 200

    metrics = exporter.metrics()
    assert succeeded(metrics) == 3.0  # nothing counted was lost, nothing counted twice
    assert metrics.get("celery_exporter_broker_connections_lost_total") == 1.0
    with client(private_redis.url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, 10))
    wait_until(
        lambda: succeeded(exporter.metrics()) == 6.0,
        timeout=60,
        what="3 more successes after the thaw",
    )
    metrics = exporter.metrics()
    assert metrics.get("celery_task_received_total", task="tests.add", worker=WORKER) == 6.0
    assert exporter.stop() == 0
