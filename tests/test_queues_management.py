"""RabbitMQ's management API: unacked counts and queue discovery, from a private RabbitMQ node with
the management plugin (the machine's shared node has it off)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kombu import Connection, Exchange, Producer, Queue

from celery_events_exporter.queues.management import ManagementApi, ManagementError
from testkit.brokers import RABBITMQ_MANAGEMENT, RabbitNode
from tests.conftest import Processes, client, private_rabbit_node, wait_until

pytestmark = pytest.mark.integration

MONITOR_USER = "monitor"
MONITOR_PASSWORD = "s3cret-monitor-pw"


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator[RabbitNode]:
    """A RabbitMQ node of our own with the management plugin, and a user with the monitoring
    tag only, as the docs tell operators to create."""
    with private_rabbit_node(plugins=(RABBITMQ_MANAGEMENT,)) as rabbit:

        def up() -> bool:
            return requests.get(
                f"{rabbit.management_url}/api/overview", auth=("guest", "guest"), timeout=2
            ).ok

        wait_until(up, timeout=30, interval=0.5, what="the management API of the private node")
        rabbit.ctl("add_user", MONITOR_USER, MONITOR_PASSWORD)
        rabbit.ctl("set_user_tags", MONITOR_USER, "monitoring")
        rabbit.ctl("set_permissions", "-p", "/", MONITOR_USER, "", "", ".*")
        yield rabbit


def test_unacked_messages_and_queues_found_through_the_management_api(
    private_rabbit: RabbitNode, processes: Processes, tmp_path: Path
) -> None:
    credentials = tmp_path / "management-credentials"
    credentials.write_text(f"{MONITOR_USER}:{MONITOR_PASSWORD}\n")
    exporter = processes.exporter(
        private_rabbit.url,
        "--queue", "work",
        "--rabbitmq-management-url", private_rabbit.management_url,
        "--rabbitmq-management-credentials-file", str(credentials),
        "--queue-poll-interval", "0.5",
        "--broadcast-interval", "1",
    )  # fmt: skip
    command_line = Path(f"/proc/{exporter.proc.pid}/cmdline").read_bytes()
    assert MONITOR_PASSWORD.encode() not in command_line

    # A queue no flag, worker or task-sent event names: only the management API lists it.
    with Connection(private_rabbit.url) as conn:
        elsewhere = Queue("elsewhere", Exchange("elsewhere"), routing_key="elsewhere")
        producer = Producer(conn.default_channel)
        for i in range(2):
            producer.publish({"n": i}, exchange=elsewhere.exchange, routing_key="elsewhere",
                             declare=[elsewhere])  # fmt: skip

    worker = "acker@queues"
    processes.worker(
        private_rabbit.url,
        worker,
        concurrency=1,
        extra=("-Q", "work"),
        env={"TEST_PREFETCH_MULTIPLIER": "2"},
    )
    with client(private_rabbit.url) as app:
        for _ in range(6):
            app.send_task("tests.sleep", args=(5.0,), queue="work")

    seen: list[object] = []

    def settled() -> bool:
        metrics = exporter.metrics()
        values = {
            "ready": metrics.get("celery_queue_length", queue="work"),
            "unacked": metrics.get("celery_queue_unacked_messages", queue="work"),
            "prefetched": metrics.get("celery_worker_prefetched_tasks", worker=worker),
            "elsewhere": metrics.get("celery_queue_length", queue="elsewhere"),
            "done": sum(metrics.series("celery_task_succeeded_total", worker=worker).values()),
        }
        seen[:] = [values]
        ready = values["ready"]
        # Prefetch count 2 (one process x multiplier 2): two prefetched messages delivered
        # and not acknowledged, the running task's acknowledged when it started (early ack),
        # the rest ready.
        return (
            ready is not None
            and ready >= 1
            and ready + 2 + 1 + values["done"] == 6  # type: ignore[operator]
            and values["unacked"] == 2.0
            and values["prefetched"] == 2.0
            and values["elsewhere"] == 2.0
        )

    try:
        wait_until(settled, what="one running, two prefetched and unacked, the rest ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}") from None
    metrics = exporter.metrics()
    assert metrics.get("celery_queue_consumers", queue="work") == 1.0
    assert metrics.series("celery_exporter_queue_poll_errors_total") == {}


def test_a_refused_management_call_is_a_clear_error(private_rabbit: RabbitNode) -> None:
    api = ManagementApi(private_rabbit.management_url, "/", (MONITOR_USER, "wrong"), timeout=5)
    with pytest.raises(ManagementError, match="401"):
        api.queues()
    listed = ManagementApi(
        private_rabbit.management_url, "/", (MONITOR_USER, MONITOR_PASSWORD), timeout=5
    ).queues()
    assert isinstance(listed, dict)
