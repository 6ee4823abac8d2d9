"""A broker that is down at start or goes away: keep serving, keep the counts, resume."""

from __future__ import annotations

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
    assert requests.get(f"{exporter.url}/healthz", timeout=2).status_code == 200
    assert requests.get(f"{exporter.url}/readyz", timeout=2).status_code == 503
    assert exporter.proc.poll() is None

    private_redis.start()  # same port, empty: no event survived the outage
    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=40,
        what="the exporter to reconnect",
    )
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
