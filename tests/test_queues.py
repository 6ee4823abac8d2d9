"""Queue depths from real brokers: kombu's Redis layout (global_keyprefix, priority steps), RabbitMQ
passive declares (plain and x-max-priority queues), real workers draining them, a stalled broker."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import redis
from kombu import Connection, Queue

from tests.conftest import PrivateRedis, Processes, client, require_tool, wait_until

REDIS_OPTIONS: dict[str, Any] = {
    "global_keyprefix": "acme:",
    "sep": ":",
    "priority_steps": [0, 2, 4, 6, 8],
    "queue_order_strategy": "priority",
}
FAST_POLL = ("--queue-poll-interval", "0.5", "--broadcast-interval", "1")

MEMORY_STORE = ("--tasks.store", "memory://")
"""/api/tasks here is the in-memory recent-task store's (docs/tasks-api.md)."""


def option_flags(options: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in options.items():
        text = value if isinstance(value, str) else json.dumps(value)
        flags += ["--broker-transport-option", f"{key}={text}"]
    return flags


def test_redis_lengths_sum_kombus_priority_lists_under_a_key_prefix(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(
        redis_url, *MEMORY_STORE, *option_flags(REDIS_OPTIONS), "--queue", "jobs", *FAST_POLL
    )
    first_sent = time.time()
    with client(redis_url) as app:
        app.conf.broker_transport_options = REDIS_OPTIONS
        for i in range(10):
            app.send_task("tests.add", args=(i, i), queue="jobs", priority=i)
        for i in range(4):
            app.send_task("tests.add", args=(i, i), queue="reports")

    # The messages really are spread over kombu's prefixed priority lists.
    raw = redis.Redis.from_url(redis_url)
    per_list = {
        key.decode(): raw.llen(key)
        for key in raw.scan_iter(match="acme:jobs*")
        if raw.type(key) == b"list"
    }
    assert per_list == {"acme:jobs": 2, "acme:jobs:2": 2, "acme:jobs:4": 2, "acme:jobs:6": 2,
                        "acme:jobs:8": 2}  # fmt: skip

    wait_until(
        lambda: (
            exporter.metrics().by_label("celery_queue_length", "queue")
            == {"jobs": 10.0, "reports": 4.0}
        ),
        what="exact lengths of jobs and reports",
    )
    metrics = exporter.metrics()
    assert metrics.by_label("celery_queue_consumers", "queue") == {"jobs": 0.0, "reports": 0.0}
    assert metrics.get("celery_exporter_queues_watched") == 2.0
    assert metrics.series("celery_exporter_queue_poll_errors_total") == {}
    ages = metrics.by_label("celery_queue_oldest_task_age_seconds", "queue")
    assert set(ages) == {"jobs", "reports"}
    assert 0 <= ages["reports"] <= ages["jobs"] <= time.time() - first_sent + 0.1
    duration = metrics.get("celery_exporter_queue_poll_duration_seconds")
    assert duration is not None and 0 < duration < 0.5
    age = metrics.get("celery_exporter_queue_readings_age_seconds")
    assert age is not None and 0 <= age < 2

    processes.worker(
        redis_url,
        "drainer@queues",
        extra=("-Q", "jobs,reports"),
        env={"TEST_BROKER_TRANSPORT_OPTIONS": json.dumps(REDIS_OPTIONS)},
    )
    wait_until(
        lambda: (
            exporter.metrics().by_label("celery_queue_length", "queue")
            == {"jobs": 0.0, "reports": 0.0}
        ),
        timeout=30,
        what="both queues drained",
    )
    # Nothing waits: the age is absent, not 0.
    assert exporter.metrics().series("celery_queue_oldest_task_age_seconds") == {}
    # Redis counts no consumers: the online workers that consume the queue do.
    wait_until(
        lambda: (
            exporter.metrics().by_label("celery_queue_consumers", "queue")
            == {"jobs": 1.0, "reports": 1.0}
        ),
        what="the worker counted as the queues' consumer",
    )


def test_queues_past_the_cap_are_counted_not_watched(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(
        redis_url, *MEMORY_STORE, "--queue", "named", "--max-queues", "2", *FAST_POLL
    )
    with client(redis_url) as app:
        for queue in ("q1", "q2", "q3"):
            for _ in range(2):
                app.send_task("tests.add", args=(1, 1), queue=queue)

    def capped() -> bool:
        metrics = exporter.metrics()
        return (
            metrics.get("celery_exporter_queues_dropped_total") == 2.0
            and len(metrics.series("celery_queue_length")) == 2
        )

    wait_until(capped, what="two queues watched, two dropped")
    metrics = exporter.metrics()
    lengths = metrics.by_label("celery_queue_length", "queue")
    assert lengths["named"] == 0.0  # the command line's queue is always watched
    assert set(lengths) - {"named"} <= {"q1", "q2", "q3"}
    assert list(lengths.values()).count(2.0) == 1
    assert metrics.get("celery_exporter_queues_watched") == 2.0


def test_amqp_lengths_of_plain_and_priority_queues_and_one_known_from_task_sent(
    amqp_url: str, processes: Processes
) -> None:
    vhost = amqp_url.rsplit("/", 1)[1]
    exporter = processes.exporter(
        amqp_url,
        *MEMORY_STORE,
        "--queue",
        "plain",
        "--queue",
        "prio",
        "--queue",
        "ghost",
        *FAST_POLL,
    )
    with client(amqp_url) as app:
        app.conf.task_queues = [
            Queue("plain"),
            Queue("prio", queue_arguments={"x-max-priority": 10}),
            Queue("reports"),
        ]
        for i in range(6):
            app.send_task("tests.add", args=(i, i), queue="plain")
        for i in range(9):
            app.send_task("tests.add", args=(i, i), queue="prio", priority=i)
        for i in range(3):  # named nowhere: known from its task-sent events only
            app.send_task("tests.add", args=(i, i), queue="reports")

    expected = {"plain": 6.0, "prio": 9.0, "ghost": 0.0, "reports": 3.0}
    wait_until(
        lambda: exporter.metrics().by_label("celery_queue_length", "queue") == expected,
        what="exact lengths of plain, prio, ghost and reports",
    )
    metrics = exporter.metrics()
    assert metrics.by_label("celery_queue_consumers", "queue") == dict.fromkeys(expected, 0.0)
    assert metrics.series("celery_exporter_queue_poll_errors_total") == {}
    # A passive declare never creates the queue it asks about.
    listed = subprocess.run(
        [require_tool("rabbitmqctl"), "list_queues", "-p", vhost, "-q", "name"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "ghost" not in listed and {"plain", "prio", "reports"} <= set(listed)

    processes.worker(
        amqp_url,
        "drainer@queues",
        extra=("-Q", "plain,prio,reports"),
        env={"TEST_PRIORITY_QUEUES": "prio"},
    )
    drained = {"plain": 0.0, "prio": 0.0, "ghost": 0.0, "reports": 0.0}
    wait_until(
        lambda: exporter.metrics().by_label("celery_queue_length", "queue") == drained,
        timeout=30,
        what="every queue drained",
    )
    wait_until(
        lambda: (
            exporter.metrics().by_label("celery_queue_consumers", "queue")
            == {"plain": 1.0, "prio": 1.0, "ghost": 0.0, "reports": 1.0}
        ),
        what="RabbitMQ's consumer counts",
    )


def test_a_stalled_broker_keeps_the_last_values_and_never_delays_a_scrape(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    private_redis.start()
    exporter = processes.exporter(
        private_redis.url, *MEMORY_STORE, "--queue", "waiting", *FAST_POLL
    )
    with client(private_redis.url) as app:
        for i in range(3):
            app.send_task("tests.add", args=(i, i), queue="waiting")
    wait_until(
        lambda: exporter.metrics().get("celery_queue_length", queue="waiting") == 3.0,
        what="3 tasks waiting",
    )

    private_redis.freeze()
    try:
        slowest = 0.0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            metrics = exporter.metrics()
            slowest = max(slowest, time.monotonic() - started)
            assert metrics.get("celery_queue_length", queue="waiting") == 3.0
            time.sleep(0.2)
        assert slowest < 1.0, f"a scrape took {slowest:.2f} s while the broker was stalled"
        wait_until(
            lambda: exporter.metrics().get(
                "celery_exporter_queue_poll_errors_total", reason="timeout"
            ),
            what="the stalled polls counted as timeouts",
        )
        metrics = exporter.metrics()
        age = metrics.get("celery_exporter_queue_readings_age_seconds")
        assert age is not None and age > 3.0
    finally:
        private_redis.thaw()

    wait_until(
        lambda: (exporter.metrics().get("celery_exporter_queue_readings_age_seconds") or 99) < 1.5,
        what="fresh readings once the broker answers again",
    )
    assert exporter.metrics().get("celery_queue_length", queue="waiting") == 3.0


def reserved_by(app: Any, worker: str) -> int:
    replies = app.control.inspect(timeout=2.0, destination=[worker]).reserved() or {}
    return len(replies.get(worker, []))


def test_prefetched_tasks_of_a_single_process_worker(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, *FAST_POLL)
    worker = "prefetch@queues"
    processes.worker(
        redis_url,
        worker,
        concurrency=1,
        extra=("-Q", "slow"),
        env={"TEST_PREFETCH_MULTIPLIER": "3"},
    )
    with client(redis_url) as app:
        for _ in range(7):
            app.send_task("tests.sleep", args=(3.0,), queue="slow")

        def settled() -> tuple[float, float] | None:
            metrics = exporter.metrics()
            prefetched = metrics.get("celery_worker_prefetched_tasks", worker=worker)
            length = metrics.get("celery_queue_length", queue="slow")
            if prefetched and length is not None and prefetched + length + 1 == 7:
                return prefetched, length
            return None

        counts = wait_until(settled, what="1 running, the rest prefetched or waiting")
        assert counts is not None
        prefetched, length = counts
        # One process, prefetch multiplier 3: the worker reserves 3 tasks beside the running one,
        # as the worker itself says.
        assert prefetched == 3.0 and length == 3.0
        assert reserved_by(app, worker) == 3
    wait_until(
        lambda: exporter.metrics().get("celery_worker_prefetched_tasks", worker=worker) == 0.0,
        timeout=40,
        what="every task started",
    )


def test_a_sigkilled_workers_started_task_is_orphaned(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, *FAST_POLL)
    worker_name = "doomed@queues"
    worker = processes.worker(redis_url, worker_name, concurrency=1)
    with client(redis_url) as app:
        doomed = app.send_task("tests.sleep", args=(60.0,)).id
        app.send_task("tests.add", args=(1, 2))  # prefetched behind it: not orphaned
    wait_until(
        lambda: exporter.get("/api/tasks", {"uuid": doomed}).json()[0]["state"] == "STARTED",
        what="the long task started",
    )
    wait_until(
        lambda: exporter.metrics().get("celery_worker_prefetched_tasks", worker=worker_name) == 1.0,
        what="the short task prefetched",
    )
    assert exporter.metrics().series("celery_task_orphaned_total") == {}
    worker.kill()
    wait_until(
        lambda: (
            exporter.metrics().get(
                "celery_task_orphaned_total", task="tests.sleep", worker=worker_name
            )
            == 1.0
        ),
        what="the started task counted orphaned",
    )
    metrics = exporter.metrics()
    assert metrics.series("celery_task_orphaned_total") == {
        frozenset({("task", "tests.sleep"), ("worker", worker_name)}): 1.0
    }
    assert metrics.get("celery_worker_online", worker=worker_name) == 0.0
    assert metrics.get("celery_worker_prefetched_tasks", worker=worker_name) is None
    [row] = exporter.get("/api/tasks", {"uuid": doomed}).json()
    assert row["state"] == "LOST" and row["worker"] == worker_name
    assert exporter.get("/api/tasks", {"state": "lost"}).json() == [row]


def test_a_worker_that_comes_online_is_asked_for_its_queues_at_once(
    redis_url: str, processes: Processes
) -> None:
    # The periodic broadcast is 10 minutes away: only the worker-online event can trigger it.
    exporter = processes.exporter(
        redis_url, *MEMORY_STORE, "--queue-poll-interval", "0.5", "--broadcast-interval", "600"
    )
    processes.worker(redis_url, "latecomer@queues", extra=("-Q", "late"))
    wait_until(
        lambda: exporter.metrics().get("celery_queue_consumers", queue="late") == 1.0,
        timeout=15,
        what="the new worker's queue and its consumer",
    )
    assert exporter.metrics().get("celery_queue_length", queue="late") == 0.0


def test_a_purged_queue_forgets_its_waiting_tasks(broker_url: str, processes: Processes) -> None:
    exporter = processes.exporter(broker_url, *MEMORY_STORE, "--queue", "purged", *FAST_POLL)
    with client(broker_url) as app:
        for i in range(3):
            app.send_task("tests.add", args=(i, i), queue="purged")

    def waiting() -> bool:
        metrics = exporter.metrics()
        return (
            metrics.get("celery_queue_length", queue="purged") == 3.0
            and (metrics.get("celery_queue_oldest_task_age_seconds", queue="purged") or -1) >= 0
        )

    wait_until(waiting, what="3 tasks waiting, the oldest one's age known")
    # No worker will ever receive them: only the broker can tell they are gone.
    with Connection(broker_url) as conn:
        assert conn.default_channel.queue_purge("purged") == 3

    def forgotten() -> bool:
        metrics = exporter.metrics()
        return (
            metrics.get("celery_queue_length", queue="purged") == 0.0
            and metrics.get("celery_queue_oldest_task_age_seconds", queue="purged") is None
        )

    wait_until(forgotten, what="an empty queue and no age for it")
