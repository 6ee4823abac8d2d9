"""A worker greeted before it listens for broadcasts is greeted again.

A starting worker sends worker-online before its control consumer listens, so the greeting the
exporter sends at once can reach nobody. Stopping a real worker (SIGSTOP) right before the
exporter hears of it makes that window as long as the test needs: the first greeting goes
unanswered, and the next one, after SIGCONT, switches its task events on without waiting for
the periodic broadcast (ten minutes away here).
"""

from __future__ import annotations

import json
import os
import signal
import time

import orjson
import pytest
from celery.events.event import get_exchange
from kombu import Connection, Producer

from tests.conftest import ExporterProcess, Processes, client, wait_until

WORKER = "sleeper@greetings"
GREETED = "task events switched on in new workers"


def greetings(exporter: ExporterProcess) -> list[str]:
    """The ``answered`` field of each greeting of ``WORKER``, in order."""
    lines = [json.loads(line) for line in exporter.log().splitlines() if line.startswith("{")]
    return [
        str(line["answered"])
        for line in lines
        if line.get("msg") == GREETED and line.get("workers") == WORKER
    ]


def announce(broker_url: str, hostname: str) -> None:
    """Publish a worker-online for ``hostname``, as its Heart bootstep does at start."""
    with Connection(broker_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        producer.publish(
            orjson.dumps({"type": "worker-online", "hostname": hostname, "timestamp": time.time()}),
            routing_key="worker.online",
            content_type="application/json",
            content_encoding="utf-8",
        )


@pytest.mark.integration
def test_a_worker_deaf_to_its_first_greeting_gets_its_task_events_from_the_next(
    broker_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(broker_url, "--broadcast-interval", "600")
    # No -E, and no heartbeats: the exporter hears of it only from the announcement below.
    worker = processes.worker(
        broker_url, WORKER, events=False, concurrency=1, extra=("--without-heartbeat",)
    )
    with client(broker_url) as app:
        wait_until(
            lambda: app.control.ping(destination=[WORKER], timeout=0.5),
            what="the worker to answer a ping",
        )
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        try:
            announce(broker_url, WORKER)
            wait_until(lambda: greetings(exporter) == [""], what="the unanswered greeting")
        finally:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        wait_until(
            lambda: greetings(exporter)[-1:] == [WORKER],
            timeout=30,
            what="a later greeting answered",
        )
        assert greetings(exporter)[0] == ""
        app.send_task("tests.add", args=(2, 3))
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_succeeded_total", task="tests.add", worker=WORKER)
            == 1.0
        ),
        what="the task counted: its events were switched on",
    )
