"""A changing fleet, with real workers: workers started after the exporter without -E, a task's
first failure on a real Prometheus, an exporter restarted with tasks in flight, tasks revoked
before a worker received them, and a clean stop told from a SIGKILL."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import ExporterProcess, Metrics, Processes, PrometheusFor, client, wait_until

SUCCEEDED = "celery_task_succeeded_total"
FAILED = "celery_task_failed_total"
GREETED = "task events switched on in new workers"

MEMORY_STORE = ("--tasks.store", "memory://")
"""/api/tasks here is the in-memory recent-task store's (docs/tasks-api.md)."""


def wait_metric(
    exporter: ExporterProcess, name: str, expected: float, timeout: float = 30, **labels: str
) -> Metrics:
    found: list[Metrics] = []

    def check() -> bool:
        found[:] = [exporter.metrics()]
        return found[0].get(name, **labels) == expected

    try:
        wait_until(check, timeout=timeout, what=f"{name}{labels} == {expected}")
    except AssertionError:
        print(found[0].samples.get(name), exporter.log()[-3000:])
        raise
    return found[0]


def greeted(exporter: ExporterProcess, worker: str) -> bool:
    """The exporter's log says ``worker`` answered its enable_events."""
    return any(
        GREETED in line and worker in line.split('"answered"', 1)[-1]
        for line in exporter.log().splitlines()
    )


def test_a_worker_started_after_the_exporter_without_E_is_counted_from_its_first_task(
    broker_url: str, processes: Processes
) -> None:
    # The periodic broadcast is 5 minutes away: only the greeting can switch events on.
    exporter = processes.exporter(broker_url, *MEMORY_STORE, "--broadcast-interval", "300")
    processes.worker(broker_url, "late@prod", events=False)
    wait_until(lambda: greeted(exporter, "late@prod"), what="the new worker greeted")

    with client(broker_url) as app:
        for i in range(20):
            app.send_task("tests.add", (i, i))
    metrics = wait_metric(exporter, SUCCEEDED, 20.0, task="tests.add", worker="late@prod")
    assert metrics.get("celery_task_received_total", task="tests.add", worker="late@prod") == 20
    assert metrics.get("celery_task_started_total", task="tests.add", worker="late@prod") == 20
    # Its heartbeats' processed catches up (every 2 s): nothing is uncounted.
    metrics = wait_metric(exporter, "celery_worker_processed_tasks_total", 20.0, worker="late@prod")
    assert metrics.get("celery_worker_uncounted_tasks", worker="late@prod") == 0.0
    rows = exporter.get("/api/tasks", {"worker": "late@prod"}).json()
    assert {row["state"] for row in rows} == {"SUCCESS"} and len(rows) == 20


def test_tasks_whose_events_stay_off_are_reported_uncounted(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, "--no-enable-events")
    processes.worker(redis_url, "dark@prod", events=False)
    with client(redis_url) as app:
        for i in range(7):
            app.send_task("tests.add", (i, i))
    metrics = wait_metric(exporter, "celery_worker_processed_tasks_total", 7.0, worker="dark@prod")
    assert metrics.get("celery_worker_uncounted_tasks", worker="dark@prod") == 7.0
    assert metrics.get(SUCCEEDED, task="tests.add", worker="dark@prod") is None


def test_a_tasks_first_failure_is_an_increase_on_prometheus(
    redis_url: str, processes: Processes, prometheus_for: PrometheusFor
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE)
    processes.worker(redis_url, "first@prod")
    # The worker's registered tasks get their series at 0 when it comes online.
    metrics = wait_metric(exporter, FAILED, 0.0, task="tests.fail", worker="first@prod")
    assert metrics.get(SUCCEEDED, task="tests.sleep", worker="first@prod") == 0.0
    runtime = "celery_task_runtime_seconds_count"
    assert metrics.get(runtime, task="tests.fail", worker="first@prod") == 0.0
    prometheus = prometheus_for([exporter])
    selector = f'{FAILED}{{task="tests.fail", worker="first@prod"}}'
    wait_until(
        lambda: prometheus.values(f"count_over_time({selector}[5s])", time.time()) != {},
        timeout=30,
        interval=0.5,
        what="the series at 0 in Prometheus",
    )
    time.sleep(1.0)  # a few scrapes at 0
    with client(redis_url) as app:
        app.send_task("tests.fail", ("first",))
    wait_until(
        lambda: prometheus.values(selector, time.time()) == {"": 1.0},
        timeout=30,
        interval=0.5,
        what="Prometheus scraped the failure",
    )
    increase = prometheus.values(f"increase({selector}[1m])", time.time())
    # increase() extrapolates to the window's edges, never past the series' first sample by
    # more than a scrape interval: one failure reads about 1, never 0.
    assert 0.9 <= increase[""] <= 1.25, increase


def test_an_exporter_restarted_with_tasks_in_flight_keeps_their_names(
    redis_url: str, processes: Processes
) -> None:
    first = processes.exporter(redis_url, *MEMORY_STORE)
    processes.worker(redis_url, "busy@prod", concurrency=2, extra=("--prefetch-multiplier", "1"))
    processes.worker(redis_url, "eta@prod", extra=("-Q", "eta"))
    with client(redis_url) as app:
        # Two run, two wait reserved (prefetched) on the worker.
        for _ in range(4):
            app.send_task("tests.sleep", (8.0,))
        # Two wait for their countdown in the other worker's timer: neither active nor
        # reserved until they are due.
        for i in range(2):
            app.send_task("tests.add", (i, i), countdown=8, queue="eta")
    wait_metric(first, "celery_worker_active_tasks", 2.0, worker="busy@prod")
    wait_metric(first, "celery_task_received_total", 2.0, task="tests.add", worker="eta@prod")
    assert first.stop() == 0
    second = processes.exporter(redis_url, *MEMORY_STORE)
    labels = {"task": "tests.sleep", "worker": "busy@prod"}
    metrics = wait_metric(second, SUCCEEDED, 4.0, timeout=40, **labels)
    assert metrics.get(SUCCEEDED, task="unknown", worker="busy@prod") in (None, 0.0)
    rows = second.get("/api/tasks", {"worker": "busy@prod"}).json()
    assert sorted((row["name"], row["state"]) for row in rows) == [("tests.sleep", "SUCCESS")] * 4
    metrics = wait_metric(second, SUCCEEDED, 2.0, task="tests.add", worker="eta@prod")
    assert metrics.get(SUCCEEDED, task="unknown", worker="eta@prod") in (None, 0.0)
    rows = second.get("/api/tasks", {"worker": "eta@prod"}).json()
    assert sorted((row["name"], row["state"]) for row in rows) == [("tests.add", "SUCCESS")] * 2


def test_tasks_revoked_before_a_worker_received_them_are_named(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE)
    processes.worker(redis_url, "rev@prod")
    with client(redis_url) as app:
        app.send_task("tests.add", (1, 1), expires=datetime.now(UTC) - timedelta(seconds=10))
        # Revoked by id before it is even sent: the worker drops it at once, with no
        # task-received; only the client's task-sent named it.
        revoked_id = str(uuid.uuid4())
        assert app.control.revoke(revoked_id, reply=True, timeout=5) != []
        app.send_task("tests.add", (2, 2), task_id=revoked_id)
    metrics = wait_metric(
        exporter, "celery_task_revoked_total", 2.0, task="tests.add", worker="rev@prod"
    )
    assert metrics.get("celery_task_revoked_total", task="unknown", worker="rev@prod") is None
    assert metrics.get("celery_exporter_tracked_tasks") == 0.0


def test_a_clean_stop_is_told_from_a_sigkill(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(
        redis_url,
        *MEMORY_STORE,
        "--purge-stopped-worker-after",
        "15",
        "--purge-offline-worker-after",
        "600",
    )
    stopped = processes.worker(redis_url, "stopped@prod")
    killed = processes.worker(redis_url, "killed@prod")
    for name in ("stopped@prod", "killed@prod"):
        wait_metric(exporter, "celery_worker_online", 1.0, worker=name)
    with client(redis_url) as app:
        app.send_task("tests.fail", ("x",))
    wait_until(
        lambda: sum(exporter.metrics().by_label(FAILED, "worker", task="tests.fail").values()) == 1,
        what="the failure counted",
    )
    stopped.stop()
    killed.kill()
    metrics = wait_metric(exporter, "celery_worker_online", 0.0, worker="killed@prod")
    assert metrics.by_label("celery_worker_shutdown_clean", "worker") == {
        "stopped@prod": 1.0, "killed@prod": 0.0,
    }  # fmt: skip
    assert metrics.get("celery_worker_online", worker="stopped@prod") == 0.0

    # The cleanly stopped worker's series go after 15 s; the vanished one's stay.
    def purged() -> bool:
        online = exporter.metrics().by_label("celery_worker_online", "worker")
        return online == {"killed@prod": 0.0}

    wait_until(purged, timeout=40, what="the stopped worker purged")
    metrics = exporter.metrics()
    assert metrics.series(FAILED, worker="stopped@prod") == {}
    assert metrics.get("celery_worker_shutdown_clean", worker="killed@prod") == 0.0
