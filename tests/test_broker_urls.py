"""Broker URLs as Celery takes them: failover lists and Redis Sentinel, for counting, the queue
poller and the controller, every password masked; and a TLS mismatch named as one.

Against real servers: private redis-servers (one down, one with a password), a real Sentinel
pair (``redis-server --sentinel``) watching a master and its replica, and a real failover. The
workers use the very same URL and transport options (Celery's worker takes both forms).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_events_exporter.broker_options import (
    check_broker,
    connection_attempts,
    mask_url,
    parse_broker_url,
    split_broker_urls,
)
from testkit.brokers import RedisSentinel
from testkit.ports import free_port
from tests.conftest import ExporterProcess, PrivateRedis, Processes, client, wait_until

# -- masking and checks (pure logic) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pwA@h1/0;redis://:pwB@h2/0", "redis://:**@h1/0;redis://:**@h2/0"),
        (
            "sentinel://:s1@h:26379;sentinel://u:s2@h:26380",
            "sentinel://:**@h:26379;sentinel://u:**@h:26380",
        ),
        ("amqp://guest:pw1@h1//;guest:pw2@h2//", "amqp://guest:**@h1//;guest:**@h2//"),
        ("amqp://g:p@ss@h//", "amqp://g:**@h//"),  # an unescaped @ in a password: masked whole
        ("redis://h/0?password=x&db=1", "redis://h/0?password=**&db=1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:a@h/0,redis://:b@h2/0", "redis://:**@h/0,redis://:**@h2/0"),
        (
            "OperationalError: cannot reach amqp://u:secret@host:5672// (refused)",
            "OperationalError: cannot reach amqp://u:**@host:5672// (refused)",
        ),
    ],
)
def test_every_password_of_a_list_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_failover_list_is_split_as_kombu_splits_it() -> None:
    value = "redis://:a@h1:6379/0; redis://:b@h2:6379/0"
    assert parse_broker_url(value) == value
    assert split_broker_urls(value) == ["redis://:a@h1:6379/0", "redis://:b@h2:6379/0"]


def test_a_comma_separated_list_is_refused_with_the_fix_and_no_password() -> None:
    with pytest.raises(ValueError) as refused:
        parse_broker_url("redis://:a@h1/0,redis://:b@h2/0")
    message = str(refused.value)
    assert "separate failover URLs with ';'" in message
    assert ":a@" not in message and ":b@" not in message


def test_a_sentinel_list_parses_and_needs_master_name() -> None:
    url = "sentinel://:pw@h:26379;sentinel://:pw@h:26380"
    assert parse_broker_url(url) == url
    check_broker(url, {"master_name": "mymaster"})
    with pytest.raises(ValueError, match="needs the transport option master_name") as refused:
        check_broker(url, {})
    assert ":pw@" not in str(refused.value)


@pytest.mark.parametrize(("urls", "retries"), [(1, 1), (2, 1), (3, 2), (4, 3)])
def test_every_url_of_a_list_is_tried_at_each_attempt(urls: int, retries: int) -> None:
    from kombu import Connection

    url = ";".join(f"redis://h{i}:6379/0" for i in range(urls))
    assert connection_attempts(Connection(url)) == retries


# -- a failover list whose first broker is down ---------------------------------------------------

WORKER = "celery@urls"


def succeeded(exporter: ExporterProcess, task: str = "tests.add") -> float | None:
    return exporter.metrics("celery_task_succeeded").get(
        "celery_task_succeeded_total", task=task, worker=WORKER
    )


def test_counting_poller_and_controller_go_past_dead_first_urls(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    private_redis.password = "pw-live"
    private_redis.start()
    # Nothing listens on the first two: the third is reached at every (re)connection.
    dead = ";".join(f"redis://:pw-dead@127.0.0.1:{free_port()}/0" for _ in range(2))
    url = f"{dead};{private_redis.url}"
    exporter = processes.exporter(
        url, "--queue", "parked", "--queue-poll-interval", "0.5", "--broadcast-interval", "1"
    )
    # Without -E: task events flow only once the controller's enable_events reached the worker.
    processes.worker(url, WORKER, events=False)
    with client(url) as app:
        wait_until(lambda: succeeded(exporter) is not None, timeout=30, what="task series")
        for i in range(5):
            app.send_task("tests.add", (i, i))
        for i in range(2):
            app.send_task("tests.add", (i, i), queue="parked")  # no worker consumes it
    wait_until(lambda: succeeded(exporter) == 5.0, timeout=30, what="5 successes counted")
    wait_until(
        lambda: (
            exporter.metrics("celery_queue_length").by_label("celery_queue_length", "queue")
            == {"celery": 0.0, "parked": 2.0}
        ),
        what="the poller's exact queue lengths",
    )
    time.sleep(1.0)  # nothing more arrives: the count is exact, not at least
    assert succeeded(exporter) == 5.0
    log = exporter.log()
    assert "pw-live" not in log and "pw-dead" not in log
    assert f"redis://:**@127.0.0.1:{private_redis.port}/0" in log  # the whole list, masked


# -- Redis Sentinel and a real failover -----------------------------------------------------------

MASTER_PASSWORD = "pw-master"
SENTINEL_PASSWORD = "pw-sentinel"
MASTER_NAME = "mymaster"


class SentinelSetup:
    """A master, its replica and two sentinels watching them, all private."""

    def __init__(self, folder: Path) -> None:
        (folder / "master").mkdir()
        (folder / "replica").mkdir()
        self.master = PrivateRedis(folder / "master", password=MASTER_PASSWORD)
        self.master.start()
        self.replica = PrivateRedis(
            folder / "replica", password=MASTER_PASSWORD, replica_of=self.master.port
        )
        self.replica.start()
        self.sentinels = [
            RedisSentinel(
                folder,
                self.master.port,
                master_name=MASTER_NAME,
                quorum=1,
                password=SENTINEL_PASSWORD,
                auth_pass=MASTER_PASSWORD,
            )
            for _ in range(2)
        ]
        for sentinel in self.sentinels:
            sentinel.start()

    @property
    def url(self) -> str:
        return ";".join(sentinel.url(MASTER_PASSWORD) for sentinel in self.sentinels)

    options: dict[str, Any] = {  # noqa: RUF012 (read only)
        "master_name": MASTER_NAME,
        "sentinel_kwargs": {"password": SENTINEL_PASSWORD},
    }

    def ready(self) -> bool:
        """Replication is up and each sentinel knows the other and the replica."""
        with redis.Redis(port=self.replica.port, password=MASTER_PASSWORD) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            with sentinel.client() as client_:
                if len(client_.sentinel_sentinels(MASTER_NAME)) != 1:
                    return False
                if len(client_.sentinel_slaves(MASTER_NAME)) != 1:
                    return False
        return True

    def stop(self) -> None:
        servers: list[RedisSentinel | PrivateRedis] = [*self.sentinels, self.master, self.replica]
        for server in servers:
            server.stop()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    try:
        wait_until(setup.ready, timeout=30, what="replication and both sentinels ready")
        yield setup
    finally:
        setup.stop()


def parked(exporter: ExporterProcess) -> float | None:
    return exporter.metrics("celery_queue_length").get("celery_queue_length", queue="parked")


def option_flags(options: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in options.items():
        flags += ["--broker-transport-option", f"{key}:={json.dumps(value)}"]
    return flags


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "failover"),
    [("fast", "master-killed"), ("kombu", "master-killed"), ("fast", "sentinel-failover")],
)
def test_sentinel_counting_follows_a_failover_with_exact_counts(
    sentinel_setup: SentinelSetup, processes: Processes, path: str, failover: str
) -> None:
    """``master-killed``: the master dies and the sentinels promote its replica.
    ``sentinel-failover``: ``SENTINEL FAILOVER`` swaps them while both stay up (Sentinel then
    kills the demoted master's clients, pub/sub ones included)."""
    setup = sentinel_setup
    options = dict(setup.options)
    exporter_options = {**options, **({"exporter_fast_path": False} if path == "kombu" else {})}
    exporter = processes.exporter(
        setup.url,
        *option_flags(exporter_options),
        *("--broadcast-interval", "1", "--queue", "parked", "--queue-poll-interval", "0.5"),
    )
    worker_env = {"TEST_BROKER_TRANSPORT_OPTIONS": json.dumps(options)}
    processes.worker(setup.url, WORKER, events=False, env=worker_env)
    with client(setup.url, broker_transport_options=options) as app:
        wait_until(lambda: succeeded(exporter) is not None, timeout=30, what="task series")
        for i in range(3):
            app.send_task("tests.add", (i, i))
        app.send_task("tests.add", (0, 0), queue="parked")
        wait_until(lambda: succeeded(exporter) == 3.0, timeout=30, what="3 before the failover")
        wait_until(lambda: parked(exporter) == 1.0, what="the poller through the sentinels")

        old_master = setup.master.port
        killed_at = time.monotonic()
        if failover == "master-killed":  # the sentinels agree and promote the replica
            setup.master.stop()
        else:
            with setup.sentinels[0].client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_until(
            lambda: all(s.master_port() == setup.replica.port for s in setup.sentinels),
            timeout=60,
            what="the sentinels to promote the replica",
        )
        assert old_master != setup.replica.port
        promoted = time.monotonic() - killed_at
        wait_until(
            lambda: (
                exporter.metrics().get("celery_exporter_broker_connections_lost_total") == 1.0
                and exporter.metrics().get("celery_exporter_broker_connected") == 1.0
            ),
            timeout=60,
            what="the exporter reconnected through the sentinels",
        )
        print(
            f"{path} path, {failover}: replica promoted after {promoted:.1f} s, exporter "
            f"connected again after {time.monotonic() - killed_at:.1f} s"
        )
        # The worker's own event connection is back once its heartbeats reach the new master.
        seen = time.time()
        wait_until(
            lambda: (
                (
                    exporter.metrics("celery_worker_last_heartbeat_timestamp_seconds").get(
                        "celery_worker_last_heartbeat_timestamp_seconds", worker=WORKER
                    )
                    or 0
                )
                > seen
            ),
            timeout=60,
            what="a heartbeat of the worker through the new master",
        )
        for i in range(4):
            app.send_task("tests.add", (i, i))
        app.send_task("tests.add", (0, 0), queue="parked")
        wait_until(lambda: succeeded(exporter) == 7.0, timeout=60, what="4 after the failover")
        # The poller reads the new master: the replicated message and the new one.
        wait_until(lambda: parked(exporter) == 2.0, timeout=30, what="the poller after it")
    time.sleep(1.0)
    assert succeeded(exporter) == 7.0
    log = exporter.log()
    assert MASTER_PASSWORD not in log and SENTINEL_PASSWORD not in log
    assert "broker connection lost" in log
    if path == "fast":  # the reader's own words for a server that closed the connection
        assert "or a Sentinel failover demoted or stopped this server" in log
