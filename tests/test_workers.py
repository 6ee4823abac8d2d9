"""Worker gauges and liveness: heartbeats, wake-up replies, crashes, clean stops, purging."""

from __future__ import annotations

import os
import time

from tests.conftest import Processes, client, wait_until

SYNTHETIC = "synthetic@heartbeats"


def send_worker_event(broker_url: str, event_type: str, **fields: object) -> None:
    """Publish a worker event through the real broker, as a worker's dispatcher does."""
    with (
        client(broker_url) as app,
        app.events.default_dispatcher(hostname=SYNTHETIC) as dispatcher,
    ):
        dispatcher.send(event_type, **fields)


FULL_HEARTBEAT = {
    "freq": 2.0,
    "active": 3,
    "processed": 7,
    "loadavg": [1.5, 2.5, 3.5],
    "sw_ident": "py-celery",
    "sw_ver": "5.7.0",
    "sw_sys": "Linux",
}


def test_heartbeat_gauges_and_liveness_rules(broker_url: str, processes: Processes) -> None:
    exporter = processes.exporter(broker_url)

    send_worker_event(broker_url, "worker-heartbeat", **FULL_HEARTBEAT)
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker=SYNTHETIC) == 1.0,
        what="the synthetic worker online",
    )
    expected = {
        "celery_worker_online": 1.0,
        "celery_worker_active_tasks": 3.0,
        "celery_worker_processed_tasks_total": 7.0,
        "celery_worker_load1": 1.5,
        "celery_worker_load5": 2.5,
        "celery_worker_load15": 3.5,
        "celery_worker_heartbeat_interval_seconds": 2.0,
    }
    metrics = exporter.metrics()
    assert {name: metrics.get(name, worker=SYNTHETIC) for name in expected} == expected
    assert metrics.get(
        "celery_worker_info", worker=SYNTHETIC, sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux"
    ) == 1.0  # fmt: skip
    first_beat = metrics.get("celery_worker_last_heartbeat_timestamp_seconds", worker=SYNTHETIC)
    assert first_beat is not None and abs(first_beat - time.time()) < 5

    # The reply to a wake-up broadcast: freq 5, no load, no active. It must blank nothing.
    time.sleep(0.2)
    send_worker_event(broker_url, "worker-heartbeat", freq=5.0)
    wait_until(
        lambda: (exporter.metrics().get(
            "celery_worker_last_heartbeat_timestamp_seconds", worker=SYNTHETIC
        ) or 0) > first_beat,
        what="the wake-up heartbeat",
    )  # fmt: skip
    metrics = exporter.metrics()
    assert {name: metrics.get(name, worker=SYNTHETIC) for name in expected} == expected

    # Silence: offline once 2 x freq (4 s) passes without a heartbeat, as Celery's rule says.
    silent_since = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker=SYNTHETIC) == 0.0,
        timeout=10,
        what="the silent worker offline",
    )
    assert 3.0 < time.monotonic() - silent_since < 6.0

    # A clean stop (worker-offline) is offline at once, however recent the last heartbeat.
    send_worker_event(broker_url, "worker-heartbeat", **FULL_HEARTBEAT)
    wait_until(lambda: exporter.metrics().get("celery_worker_online", worker=SYNTHETIC) == 1.0)
    send_worker_event(broker_url, "worker-offline", freq=2.0)
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker=SYNTHETIC) == 0.0,
        timeout=1.5,
        what="offline right after worker-offline",
    )


def test_sigkilled_worker_goes_offline_then_is_purged(
    broker_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(broker_url, "--purge-offline-worker-after", "3")
    worker = processes.worker(broker_url, "doomed@liveness")
    with client(broker_url) as app:
        for i in range(2):
            app.send_task("tests.add", (i, i))
    wait_until(
        lambda: exporter.metrics().get(
            "celery_task_succeeded_total", task="tests.add", worker="doomed@liveness"
        ) == 2.0,
        what="2 successes on the doomed worker",
    )  # fmt: skip
    assert exporter.metrics().get("celery_worker_online", worker="doomed@liveness") == 1.0

    worker.kill()  # SIGKILL: no worker-offline event is ever sent
    killed_at = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker="doomed@liveness") == 0.0,
        timeout=10,
        what="the killed worker offline",
    )
    # Its last heartbeat was at most freq (2 s) before the kill; offline 2 x freq after it.
    assert time.monotonic() - killed_at < 5.0
    assert exporter.metrics().get(
        "celery_task_succeeded_total", task="tests.add", worker="doomed@liveness"
    ) == 2.0  # fmt: skip

    wait_until(
        lambda: (
            "doomed@liveness" not in exporter.metrics().by_label("celery_worker_online", "worker")
        ),
        timeout=10,
        what="the offline worker purged",
    )
    metrics = exporter.metrics()
    purged = ("celery_worker_load1", "celery_task_succeeded_total", "celery_task_received_total")
    for name in purged:
        assert metrics.series(name, worker="doomed@liveness") == {}, name


def test_active_tasks_concurrency_and_load_from_a_real_worker(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url, "--broadcast-interval", "1")
    processes.worker(redis_url, "busy@liveness", concurrency=3)
    wait_until(
        lambda: exporter.metrics().get("celery_worker_concurrency", worker="busy@liveness") == 3.0,
        what="the pool size from inspect stats",
    )
    with client(redis_url) as app:
        for _ in range(2):
            app.send_task("tests.sleep", (4.0,))
    wait_until(
        lambda: exporter.metrics().get("celery_worker_active_tasks", worker="busy@liveness") == 2.0,
        what="2 active tasks in the heartbeat",
    )
    metrics = exporter.metrics()
    load1 = metrics.get("celery_worker_load1", worker="busy@liveness")
    assert load1 is not None and abs(load1 - os.getloadavg()[0]) < 2.0
    wait_until(
        lambda: exporter.metrics().get("celery_worker_active_tasks", worker="busy@liveness") == 0.0,
        timeout=15,
        what="the active count back to 0",
    )


def test_cleanly_stopped_worker_reads_offline_at_once(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url)
    worker = processes.worker(redis_url, "polite@liveness")
    wait_until(lambda: exporter.metrics().get("celery_worker_online", worker="polite@liveness"))
    worker.stop()
    stopped_at = time.monotonic()
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker="polite@liveness") == 0.0,
        timeout=5,
        what="offline after a warm shutdown",
    )
    assert time.monotonic() - stopped_at < 2.0
