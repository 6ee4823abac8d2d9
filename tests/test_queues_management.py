"""RabbitMQ's management API: unacked counts and queue discovery, from a private RabbitMQ node with
the management plugin (the machine's shared node has it off)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from kombu import Connection, Exchange, Producer, Queue

from exporter.queues.management import ManagementApi, ManagementError
from tests.conftest import Processes, client, free_port, require_tool, wait_until

pytestmark = pytest.mark.integration

MONITOR_USER = "monitor"
MONITOR_PASSWORD = "s3cret-monitor-pw"


@dataclass
class PrivateRabbit:
    node: str
    amqp_port: int
    management_port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}//"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [require_tool("rabbitmqctl"), "-n", self.node, *args],
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of our own, with the management plugin, on free ports; its folder is
    outside pytest's (which only root may enter), as the server runs as the rabbitmq user."""
    server = require_tool("rabbitmq-server")
    folder = Path(tempfile.mkdtemp(prefix="cee-rabbit-"))
    rabbit = PrivateRabbit(f"cee-mgmt-{uuid.uuid4().hex[:8]}@localhost", free_port(), free_port())
    (folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (folder / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{rabbit.amqp_port}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {rabbit.management_port}\n"
    )
    if os.geteuid() == 0:  # Debian's script runs the server as the rabbitmq user
        shutil.chown(folder, "rabbitmq", "rabbitmq")
        for path in folder.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": rabbit.node,
        "RABBITMQ_NODE_PORT": str(rabbit.amqp_port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "ERL_CRASH_DUMP": str(folder / "erl_crash.dump"),
    }
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [server], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited:\n{Path(log.name).read_text()}")
            return requests.get(
                f"{rabbit.management_url}/api/overview", auth=("guest", "guest"), timeout=2
            ).ok

        wait_until(up, timeout=90, interval=0.5, what="a private RabbitMQ with management")
        rabbit.ctl("add_user", MONITOR_USER, MONITOR_PASSWORD)
        rabbit.ctl("set_user_tags", MONITOR_USER, "monitoring")
        rabbit.ctl("set_permissions", "-p", "/", MONITOR_USER, "", "", ".*")
        yield rabbit
    finally:
        subprocess.run(
            [require_tool("rabbitmqctl"), "-n", rabbit.node, "stop"], capture_output=True
        )
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_unacked_messages_and_queues_found_through_the_management_api(
    private_rabbit: PrivateRabbit, processes: Processes, tmp_path: Path
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


def test_a_refused_management_call_is_a_clear_error(private_rabbit: PrivateRabbit) -> None:
    api = ManagementApi(private_rabbit.management_url, "/", (MONITOR_USER, "wrong"), timeout=5)
    with pytest.raises(ManagementError, match="401"):
        api.queues()
    listed = ManagementApi(
        private_rabbit.management_url, "/", (MONITOR_USER, MONITOR_PASSWORD), timeout=5
    ).queues()
    assert isinstance(listed, dict)
