"""Exact task counts from real prefork workers, on the real Redis and the real RabbitMQ."""

from __future__ import annotations

import time

from tests.conftest import ExporterProcess, Metrics, Processes, client, wait_until

WORKER = "w1@counters"

EXPECTED_COUNTERS = {
    # 5 adds succeed; a 6th add is revoked before its ETA, so it is received but never started.
    "celery_task_received_total": {
        "tests.add": 6, "tests.fail": 3, "tests.flaky": 3, "tests.reject": 1,
    },
    "celery_task_started_total": {
        "tests.add": 5, "tests.fail": 3, "tests.flaky": 3, "tests.reject": 1,
    },
    "celery_task_succeeded_total": {"tests.add": 5, "tests.flaky": 1},
    # Celery reports a task that raised Reject as failed, then as rejected.
    "celery_task_failed_total": {"tests.fail": 3, "tests.reject": 1},
    "celery_task_retried_total": {"tests.flaky": 2},
    "celery_task_rejected_total": {"tests.reject": 1},
    "celery_task_revoked_total": {"tests.add": 1},
}  # fmt: skip


def run_workload(broker_url: str, exporter: ExporterProcess) -> None:
    with client(broker_url) as app:
        for i in range(5):
            app.send_task("tests.add", (i, i))
        for i in range(3):
            app.send_task("tests.fail", (f"boom {i}",))
        app.send_task("tests.flaky", (2,))  # retried twice, then succeeds
        app.send_task("tests.reject")
        doomed = app.send_task("tests.add", (100, 100), countdown=4)
        # Revoke once the worker holds it: a task revoked before it is received is discarded
        # on arrival with a task-revoked event that carries no name (task="unknown").
        wait_until(
            lambda: (
                exporter.metrics().get(
                    "celery_task_received_total", task="tests.add", worker=WORKER
                )
                == 6.0
            ),
            what="the ETA task to be received",
        )
        app.control.revoke(doomed.id)


def task_counters(metrics: Metrics) -> dict[str, dict[str, float]]:
    return {
        name: {
            task: value
            for task, value in metrics.by_label(name, "task", worker=WORKER).items()
            if value
        }
        for name in EXPECTED_COUNTERS
    }


def settled(exporter: ExporterProcess) -> Metrics:
    """Wait for the workload's last event, then one more heartbeat, so late events would show."""
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_revoked_total", task="tests.add", worker=WORKER)
            == 1.0
        ),
        timeout=30,
        what="the revoked task",
    )
    wait_until(
        lambda: task_counters(exporter.metrics()) == EXPECTED_COUNTERS,
        timeout=10,
        what="the expected counters",
    )
    time.sleep(2.5)
    return exporter.metrics()


def test_every_task_state_is_counted_exactly(broker_url: str, processes: Processes) -> None:
    exporter = processes.exporter(broker_url)
    processes.worker(broker_url, WORKER)
    run_workload(broker_url, exporter)
    metrics = settled(exporter)

    assert task_counters(metrics) == EXPECTED_COUNTERS
    assert metrics.by_label("celery_task_sent_total", "task") == {
        # the worker re-sends a task it retries, so flaky is sent 3 times
        "tests.add": 6.0, "tests.fail": 3.0, "tests.flaky": 3.0, "tests.reject": 1.0,
    }  # fmt: skip
    assert set(metrics.by_label("celery_task_sent_total", "queue")) == {"celery"}
    assert (
        metrics.get("celery_task_exceptions_total", task="tests.fail", exception="ValueError") == 3
    )
    # One runtime observation per success, one queue-wait observation per start; every task
    # the worker registered has its histograms from 0 (inspect registered, when it came online).
    registered = dict.fromkeys(
        ("tests.add", "tests.fail", "tests.flaky", "tests.flaky_exc", "tests.image",
         "tests.reject", "tests.sleep"), 0.0,
    )  # fmt: skip
    assert metrics.by_label("celery_task_runtime_seconds_count", "task", worker=WORKER) == {
        **registered, "tests.add": 5.0, "tests.flaky": 1.0,
    }  # fmt: skip
    assert metrics.by_label("celery_task_queue_wait_seconds_count", "task", worker=WORKER) == {
        **registered, "tests.add": 5.0, "tests.fail": 3.0, "tests.flaky": 3.0, "tests.reject": 1.0,
    }  # fmt: skip
    assert metrics.by_label("celery_task_failed_total", "task", worker=WORKER) == {
        **registered, "tests.fail": 3.0, "tests.reject": 1.0,
    }  # fmt: skip
    # tests.add returns at once: every runtime lands in the first bucket (10 ms).
    assert metrics.get("celery_task_runtime_seconds_bucket", task="tests.add", worker=WORKER,
                       le="0.01") == 5.0  # fmt: skip
    assert metrics.get("celery_worker_online", worker=WORKER) == 1.0
    assert metrics.get("celery_worker_active_tasks", worker=WORKER) == 0.0
    assert metrics.get("celery_exporter_events_rejected_total") is None
    assert metrics.by_label("celery_exporter_events_total", "type")["task-received"] == 13.0


def test_worker_label_can_be_dropped(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, "--no-worker-label")
    processes.worker(redis_url, WORKER)
    processes.worker(redis_url, "w2@counters")
    with client(redis_url) as app:
        for i in range(8):
            app.send_task("tests.add", (i, 1))
    wait_until(
        lambda: exporter.metrics().get("celery_task_succeeded_total", task="tests.add") == 8.0,
        what="8 successes summed over both workers in one series",
    )
    metrics = exporter.metrics()
    assert list(metrics.series("celery_task_succeeded_total")) == [
        frozenset({("task", "tests.add")})
    ]
    assert metrics.get("celery_task_runtime_seconds_count", task="tests.add") == 8.0
    # Worker gauges keep their worker label: they are per worker by nature.
    assert set(metrics.by_label("celery_worker_online", "worker")) == {WORKER, "w2@counters"}


def test_workers_started_without_events_are_switched_on(
    redis_url: str, processes: Processes
) -> None:
    quiet = processes.exporter(redis_url, "--no-enable-events")
    processes.worker(redis_url, WORKER, events=False)
    with client(redis_url) as app:
        app.send_task("tests.add", (1, 2))
    # The worker ran it (its heartbeat counts it) but sent no task event: nobody enabled them.
    wait_until(
        lambda: quiet.metrics().get("celery_worker_processed_tasks_total", worker=WORKER) == 1.0,
        what="the worker's heartbeat to count the task",
    )
    assert quiet.metrics().series("celery_task_received_total") == {}

    loud = processes.exporter(redis_url, "--broadcast-interval", "1")
    wait_until(lambda: "enabled by remote" in _worker_log(processes, WORKER), what="enable_events")
    with client(redis_url) as app:
        for i in range(4):
            app.send_task("tests.add", (i, 2))
    wait_until(
        lambda: (
            loud.metrics().get("celery_task_succeeded_total", task="tests.add", worker=WORKER)
            == 4.0
        ),
        what="4 successes once task events are on",
    )


def _worker_log(processes: Processes, name: str) -> str:
    return (processes.tmp_path / f"worker-{name}.log").read_text(errors="replace")
