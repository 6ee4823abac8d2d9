"""The app's event settings: an app that sets Celery's ``event_exchange`` is counted exactly
when the exporter is told the same, on Redis and RabbitMQ; the event queue is declared as
Celery 5.7 declares it (exclusive, for RabbitMQ 4.3), on both AMQP intake paths."""

from __future__ import annotations

import ast
import subprocess

import pytest

from celery_events_exporter.control import SilentWorkers
from tests.conftest import Metrics, Processes, client, free_port, require_tool, wait_until

EXCHANGE = "myapp.events"
WORKER = "custom@exchange"
TASKS = 4
FAST_BROADCASTS = ("--broadcast-interval", "1")


def _succeeded(metrics: Metrics) -> float | None:
    return metrics.get("celery_task_succeeded_total", task="tests.add", worker=WORKER)


def test_a_custom_event_exchange_is_counted_exactly(broker_url: str, processes: Processes) -> None:
    exporter = processes.exporter(broker_url, "--event-exchange", EXCHANGE, *FAST_BROADCASTS)
    default = processes.exporter(broker_url, *FAST_BROADCASTS)  # still bound to celeryev
    processes.worker(broker_url, WORKER, env={"TEST_EVENT_EXCHANGE": EXCHANGE})
    with client(broker_url, event_exchange=EXCHANGE) as app:
        for i in range(TASKS):
            app.send_task("tests.add", (i, i))
    wait_until(lambda: _succeeded(exporter.metrics()) == TASKS, what=f"{TASKS} successes")
    metrics = exporter.metrics()
    for state in ("sent", "received", "started", "succeeded"):
        by_task = metrics.by_label(f"celery_task_{state}_total", "task")
        assert by_task == {"tests.add": TASKS}, state
    assert metrics.get("celery_worker_online", worker=WORKER) == 1.0
    # The exporter left on the default exchange saw none of it, and says so: the worker answers
    # its inspect broadcasts, but none of its events arrive.
    wait_until(
        lambda: default.metrics().get("celery_exporter_silent_workers") == 1.0,
        what="the default-exchange exporter to report the worker silent",
    )
    assert default.metrics().series("celery_exporter_events_total") == {}
    assert default.metrics().get("celery_worker_online", worker=WORKER) is None
    assert "none of their events arrive" in default.log()
    assert WORKER in default.log()
    # The one on the app's exchange hears the same worker through as many broadcasts.
    assert exporter.metrics().get("celery_exporter_silent_workers") == 0.0
    assert "none of their events arrive" not in exporter.log()


def test_a_worker_that_answers_but_is_never_heard_becomes_silent() -> None:
    silent = SilentWorkers()
    assert not silent.update({"a@h", "b@h"}, heard={"a@h"})  # b may just be late: once
    assert silent.update({"a@h", "b@h"}, heard={"a@h"})
    assert silent.silent == ["b@h"]
    assert not silent.update({"a@h", "b@h"}, heard={"a@h"})
    assert silent.update({"a@h", "b@h"}, heard={"a@h", "b@h"})  # heard at last
    assert silent.silent == []
    silent.update({"c@h"}, heard=set())
    silent.update({"c@h"}, heard=set())
    assert silent.update(set(), heard=set())  # gone: no longer reported
    assert silent.silent == []


def _queues(vhost: str) -> list[list[str]]:
    out = subprocess.run(
        [require_tool("rabbitmqctl"), "-q", "list_queues", "-p", vhost, "--no-table-headers",
         "name", "durable", "exclusive", "auto_delete", "arguments"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def _arguments(text: str) -> dict[str, int]:
    """rabbitmqctl's ``[{"x-expires",60000},{"x-message-ttl",5000}]`` as a dict."""
    pairs = ast.literal_eval(text.replace("{", "(").replace("}", ")"))
    return dict(pairs)


@pytest.mark.parametrize("fast_path", [True, False], ids=["amqp-fast-path", "kombu-path"])
def test_rabbitmq_event_queue_is_declared_as_celery_declares_it(
    amqp_url: str, processes: Processes, fast_path: bool
) -> None:
    vhost = amqp_url.rsplit("/", 1)[1]
    args = ["--event-queue-prefix", "myappev", "--event-queue-ttl", "7", "--event-queue-expires",
            "90", "--event-exchange", EXCHANGE]  # fmt: skip
    if not fast_path:
        args += ["--broker-transport-option", "exporter_fast_path=false"]
    exporter = processes.exporter(amqp_url, *args)
    rows = wait_until(
        lambda: [r for r in _queues(vhost) if r[0].startswith("myappev.")],
        what="the exporter's event queue",
    )
    assert len(rows) == 1, rows
    name, durable, exclusive, auto_delete, arguments = rows[0]
    assert name.startswith("myappev.celery-events-exporter.")
    assert (durable, exclusive, auto_delete) == ("false", "true", "true")
    assert _arguments(arguments) == {"x-message-ttl": 7000, "x-expires": 90000}
    bindings = subprocess.run(
        [require_tool("rabbitmqctl"), "-q", "list_bindings", "-p", vhost, "--no-table-headers",
         "source_name", "destination_name", "routing_key"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert f"{EXCHANGE}\t{name}\t#" in bindings.splitlines()
    assert exporter.stop() == 0


def test_default_event_queue_has_celerys_defaults(amqp_url: str, processes: Processes) -> None:
    vhost = amqp_url.rsplit("/", 1)[1]
    processes.exporter(amqp_url)
    rows = wait_until(
        lambda: [r for r in _queues(vhost) if r[0].startswith("celeryev.")],
        what="the exporter's event queue",
    )
    name, durable, exclusive, auto_delete, arguments = rows[0]
    assert name.startswith("celeryev.celery-events-exporter.")
    assert (durable, exclusive, auto_delete) == ("false", "true", "true")
    assert _arguments(arguments) == {"x-message-ttl": 5000, "x-expires": 60000}


def test_event_settings_from_the_environment(amqp_url: str, processes: Processes) -> None:
    vhost = amqp_url.rsplit("/", 1)[1]
    processes.spawn(
        [
            require_tool("celery-events-exporter"),
            "--web.listen-address",
            f"127.0.0.1:{free_port()}",
        ],
        "env-exporter.log",
        env={
            "CELERY_EXPORTER_BROKER_URL": amqp_url,
            "CELERY_EXPORTER_EVENT_EXCHANGE": "envapp.ev",
            "CELERY_EXPORTER_EVENT_QUEUE_PREFIX": "envapp",
            "CELERY_EXPORTER_EVENT_QUEUE_TTL": "3",
            "CELERY_EXPORTER_EVENT_QUEUE_EXPIRES": "30",
        },
    )
    rows = wait_until(
        lambda: [r for r in _queues(vhost) if r[0].startswith("envapp.")],
        what="the exporter's event queue",
    )
    assert _arguments(rows[0][4]) == {"x-message-ttl": 3000, "x-expires": 30000}
    out = subprocess.run(
        [require_tool("rabbitmqctl"), "-q", "list_exchanges", "-p", vhost, "--no-table-headers",
         "name", "type"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "envapp.ev\ttopic" in out.splitlines()
