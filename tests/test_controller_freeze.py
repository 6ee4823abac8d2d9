"""The controller's broadcasts (enable_events, inspect) through a frozen broker: each fails within
seconds with a log line and a count instead of hanging, SIGTERM still ends the exporter at once,
and after the thaw a worker started without -E gets its task events switched on.

A broadcast in flight when the broker freezes may also end without an error (its last inspect
reply window needs no answer from the broker), and then its close waits up to two timeouts; the
exporter test therefore runs broadcasts of enable_events alone, so that the freeze always meets
the start of one, and the controller test calls every kind of broadcast itself during a freeze.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import kombu.exceptions
import pytest
import redis.exceptions

from celery_events_exporter import control
from celery_events_exporter.app import build_state
from celery_events_exporter.broker_errors import error_reason
from celery_events_exporter.config import Config
from celery_events_exporter.control import CONTROL_TIMEOUT, Controller
from celery_events_exporter.intake.status import BrokerStatus
from testkit.brokers import RabbitNode
from tests.conftest import ExporterProcess, PrivateRedis, Processes, client, wait_until

BROADCAST_INTERVAL = 1.0

FAILURE_BOUND = BROADCAST_INTERVAL + CONTROL_TIMEOUT + 3.0
"""Designed: the next periodic broadcast starts within the interval and its first broker call
(the connection's handshake, or Redis' PING) fails at the controller's timeout; 3 s more for a
loaded machine."""

FAILURES = ("broadcast to workers failed", "greeting new workers failed")

WORKER = "latecomer@controller"


@dataclass
class Freezable:
    url: str
    freeze: Callable[[], None]
    thaw: Callable[[], None]


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[Freezable]:
    """A broker of our own that the test may freeze: a redis-server, or a virtual host on the
    private RabbitMQ node."""
    if request.param == "redis":
        redis: PrivateRedis = request.getfixturevalue("private_redis")
        redis.start()
        yield Freezable(redis.url, redis.freeze, redis.thaw)
        return
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    with node.vhost("cee-controller") as url:
        yield Freezable(url, node.freeze, node.thaw)


def log_lines(exporter: ExporterProcess, *messages: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in exporter.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") in messages]


@pytest.mark.integration
def test_broadcasts_through_a_frozen_broker_fail_in_seconds_and_resume(
    broker: Freezable, processes: Processes
) -> None:
    interval = (
        "--broadcast-interval", str(BROADCAST_INTERVAL),
        "--no-inspect-workers",  # broadcasts of enable_events alone: milliseconds each
        "--queue-poll-interval", "0",  # (no inspect active_queues either)
    )  # fmt: skip
    exporter = processes.exporter(broker.url, *interval)
    leaving = processes.exporter(broker.url, *interval)  # SIGTERMed during the freeze
    metrics = exporter.metrics()
    assert metrics.by_label("celery_exporter_broadcast_errors_total", "reason") == {
        "timeout": 0.0,
        "connection": 0.0,
        "auth": 0.0,
        "tls": 0.0,
        "other": 0.0,
    }

    broker.freeze()
    frozen_at = time.monotonic()
    try:
        (failure, *_) = wait_until(
            lambda: log_lines(exporter, *FAILURES),
            timeout=30,
            interval=0.05,
            what="a broadcast to fail against the frozen broker",
        )
        failed_after = time.monotonic() - frozen_at
        assert failure["reason"] == "timeout", failure
        errors = exporter.metrics().by_label("celery_exporter_broadcast_errors_total", "reason")
        assert errors["timeout"] >= 1.0
        assert errors["connection"] == errors["auth"] == errors["other"] == 0.0

        sigterm_at = time.monotonic()
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.proc.wait(10) == 0
        exited_after = time.monotonic() - sigterm_at
        assert "exporter stopped" in leaving.log()
    finally:
        broker.thaw()
    print(
        f"broadcast failed {failed_after:.2f} s into the freeze; SIGTERM during the freeze "
        f"exited in {exited_after:.2f} s"
    )
    assert failed_after < FAILURE_BOUND
    assert exited_after < 2.0  # the 0.5 s shutdown grace, then the process leaves its threads

    wait_until(
        lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
        timeout=30,
        what="the exporter to reconnect after the thaw",
    )
    # Every failure was logged once and counted once.
    failures = log_lines(exporter, *FAILURES)
    errors = exporter.metrics().by_label("celery_exporter_broadcast_errors_total", "reason")
    assert sum(errors.values()) == len(failures)
    assert {line["reason"] for line in failures} == {"timeout"}

    # The controller goes on: a worker started now without -E is greeted, its task events on.
    processes.worker(broker.url, WORKER, events=False)

    def greeted() -> bool:
        lines = log_lines(exporter, "task events switched on in new workers")
        return any(line["workers"] == WORKER and line["answered"] == WORKER for line in lines)

    wait_until(greeted, what="the new worker greeted, its task events switched on")
    with client(broker.url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i))

    def succeeded() -> float | None:
        return exporter.metrics().get(
            "celery_task_succeeded_total", task="tests.add", worker=WORKER
        )

    wait_until(lambda: succeeded() == 3.0, timeout=30, what="3 task events of the new worker")
    assert sum(
        exporter.metrics().by_label("celery_exporter_broadcast_errors_total", "reason").values()
    ) == len(failures)  # no failure after the thaw
    assert exporter.stop() == 0


@pytest.mark.integration
def test_every_kind_of_broadcast_fails_at_the_timeout_during_a_freeze(
    broker: Freezable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller itself, on a real broker: a periodic broadcast with every inspect and a
    greeting, each started during a freeze, end within the timeout of their first call."""
    # No worker answers here: each inspect waits out its reply window, five per broadcast.
    monkeypatch.setattr(control, "INSPECT_TIMEOUT", 0.2)
    status = BrokerStatus()
    controller = Controller(
        broker.url,
        {},
        status,
        build_state(Config()),
        enable_events=True,
        inspect_workers=True,
        interval=30.0,
        on_active_queues=lambda replies: None,
    )
    controller.broadcast(wake_up=True)  # the broker answers: nothing fails
    assert status.broadcast_errors == {
        "timeout": 0,
        "connection": 0,
        "auth": 0,
        "tls": 0,
        "other": 0,
    }

    durations: dict[str, float] = {}
    # A connection established before the freeze, as a broadcast's is when the freeze comes
    # in the middle of it: its publish is not retried until the broker answers again.
    conn = controller.app.connection_for_write()
    conn.ensure_connection(max_retries=1)
    broker.freeze()
    try:
        started = time.monotonic()
        # As the transport raises it: py-amqp's socket.timeout, redis-py's TimeoutError, or
        # either wrapped in kombu's OperationalError.
        timeouts = (TimeoutError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)
        with pytest.raises(timeouts) as e:
            controller.app.control.inspect(timeout=1.0, connection=conn).stats()
        assert error_reason(e.value) == "timeout"
        durations["inspect on an open connection"] = time.monotonic() - started
        conn.collect()
        started = time.monotonic()
        controller.broadcast(wake_up=True)
        durations["broadcast"] = time.monotonic() - started
        started = time.monotonic()
        controller.greet(["someone@host"], threading.Event())
        durations["greeting"] = time.monotonic() - started
    finally:
        broker.thaw()
    print("during the freeze: " + ", ".join(f"{k} {v:.2f} s" for k, v in durations.items()))
    assert status.broadcast_errors == {
        "timeout": 2,
        "connection": 0,
        "auth": 0,
        "tls": 0,
        "other": 0,
    }
    for what, took in durations.items():
        # One timeout, then the connection is dropped without waiting for the broker.
        assert CONTROL_TIMEOUT - 0.1 < took < CONTROL_TIMEOUT + 1.5, what

    controller.broadcast(wake_up=True)
    controller.greet(["someone@host"], threading.Event())
    assert status.broadcast_errors["timeout"] == 2  # after the thaw both work again
