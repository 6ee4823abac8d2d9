"""Queue depths from real brokers: kombu's Redis layout (global_keyprefix, priority steps), RabbitMQ
passive declares (plain and x-max-priority queues), real workers draining them, a stalled broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import redis
from kombu import Queue

from tests.conftest import PrivateRedis, Processes, client, require_tool, wait_until

REDIS_OPTIONS: dict[str, Any] = {
    "global_keyprefix": "acme:",
    "sep": ":",
    "priority_steps": [0, 2, 4, 6, 8],
    "queue_order_strategy": "priority",
}
FAST_POLL = ("--queue-poll-interval", "0.5", "--broadcast-interval", "1")


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
        redis_url, *option_flags(REDIS_OPTIONS), "--queue", "jobs", *FAST_POLL
    )
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
    # Redis counts no consumers: the online workers that consume the queue do.
    wait_until(
        lambda: (
            exporter.metrics().by_label("celery_queue_consumers", "queue")
            == {"jobs": 1.0, "reports": 1.0}
        ),
        what="the worker counted as the queues' consumer",
    )


def test_queues_past_the_cap_are_counted_not_watched(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, "--queue", "named", "--max-queues", "2", *FAST_POLL)
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
        amqp_url, "--queue", "plain", "--queue", "prio", "--queue", "ghost", *FAST_POLL
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
    assert private_redis.proc is not None
    exporter = processes.exporter(private_redis.url, "--queue", "waiting", *FAST_POLL)
    with client(private_redis.url) as app:
        for i in range(3):
            app.send_task("tests.add", args=(i, i), queue="waiting")
    wait_until(
        lambda: exporter.metrics().get("celery_queue_length", queue="waiting") == 3.0,
        what="3 tasks waiting",
    )

    os.kill(private_redis.proc.pid, signal.SIGSTOP)
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
        os.kill(private_redis.proc.pid, signal.SIGCONT)

    wait_until(
        lambda: (exporter.metrics().get("celery_exporter_queue_readings_age_seconds") or 99) < 1.5,
        what="fresh readings once the broker answers again",
    )
    assert exporter.metrics().get("celery_queue_length", queue="waiting") == 3.0
