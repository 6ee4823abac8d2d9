"""Cardinality caps and purging at scale, against a real Redis and the real exporter process:
distinct task names and workers past their caps count as "other" with the overflow counted, long
values are cut, and purging thousands of offline workers neither stalls a scrape nor leaves a
series behind (issue 11)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from celery.events.event import get_exchange
from kombu import Connection, Producer

from tests.conftest import ExporterProcess, Metrics, Processes, wait_until

QUIET = ("--no-enable-events", "--no-inspect-workers", "--queue-poll-interval", "0")
"""No broadcasts and no queue polling: the test's events are all the exporter hears."""
OVERFLOW = "celery_exporter_label_overflow_total"


@pytest.fixture
def publish(redis_url: str) -> Iterator[Any]:
    """Publish a list of events as one message on Celery's event exchange (as task.multi)."""
    with Connection(redis_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        lock = threading.Lock()  # one channel, shared with a heartbeat thread

        def send(events: list[dict[str, Any]]) -> None:
            with lock:
                producer.publish(
                    orjson.dumps(events),
                    routing_key="task.multi",
                    content_type="application/json",
                    content_encoding="utf-8",
                )

        yield send


def in_batches(send: Any, events: list[dict[str, Any]], size: int = 24) -> None:
    for first in range(0, len(events), size):
        send(events[first : first + size])


def heartbeat(host: str, freq: float) -> dict[str, Any]:
    now = time.time()
    return {
        "type": "worker-heartbeat",
        "hostname": host,
        "timestamp": now,
        "freq": freq,
        "active": 0,
        "processed": 0,
        "loadavg": [0.1, 0.1, 0.1],
    }


def task(kind: str, uuid: str, host: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": f"task-{kind}",
        "uuid": uuid,
        "hostname": host,
        "timestamp": time.time(),
        **fields,
    }


def events_counted(exporter: ExporterProcess, kind: str) -> float:
    counted = exporter.metrics("celery_exporter_events_total")
    return counted.get("celery_exporter_events_total", type=kind) or 0.0


def test_names_and_workers_past_their_caps_count_as_other(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    exporter = processes.exporter(
        redis_url,
        *QUIET,
        "--max-task-names", "20",
        "--max-workers", "3",
        "--max-label-length", "64",
    )  # fmt: skip
    long_host = "w9@" + "h" * 10_000
    hosts = ["w1@h", "w2@h", "w3@h", "w4@h", long_host]
    in_batches(publish, [heartbeat(host, 60.0) for host in hosts])
    wait_until(lambda: events_counted(exporter, "worker-heartbeat") == 5, what="heartbeats")
    # 500 distinct names, two runs each, spread over the five workers.
    events = []
    for i in range(1000):
        uuid, host, name = f"u{i}", hosts[i % 5], f"tasks.n{i % 500}"
        events += [task("received", uuid, host, name=name), task("failed", uuid, host)]
    in_batches(publish, events)
    wait_until(lambda: events_counted(exporter, "task-failed") == 1000, what="every task counted")

    metrics = exporter.metrics()
    received = metrics.series("celery_task_received_total")
    names = {dict(labels)["task"] for labels in received}
    assert len(names) == 21 and "other" in names  # 20 admitted + "other"
    assert sum(received.values()) == 1000
    by_worker: dict[str, float] = {}
    for labels, value in received.items():
        worker = dict(labels)["worker"]
        by_worker[worker] = by_worker.get(worker, 0) + value
    assert by_worker == {"w1@h": 200, "w2@h": 200, "w3@h": 200, "other": 400}
    # Worker gauges only for the three admitted workers.
    assert set(metrics.by_label("celery_worker_online", "worker")) == {"w1@h", "w2@h", "w3@h"}
    assert metrics.get("celery_worker_tasks_total", worker="other", state="failed") == 400
    # Names 0-19 each ran twice (one of the 1000 runs of a name in 500): 40 runs admitted, 960
    # received and 960 failed under "other".
    assert metrics.get("celery_task_failed_total", task="other", worker="w1@h") == 192
    assert metrics.get(OVERFLOW, label="task", reason="cap") == 2 * 960
    # w4 and the long host: two heartbeats plus 2 x 400 task events.
    assert metrics.get(OVERFLOW, label="worker", reason="cap") == 802
    # The long hostname is cut with each of its 401 events (a heartbeat, 200 tasks' two), then
    # folded.
    assert metrics.get(OVERFLOW, label="worker", reason="length") == 401
    samples = [line for line in exporter.get("/metrics").text.splitlines() if line[:1] != "#"]
    assert max(map(len, samples)) < 250


def test_names_of_a_purged_deploy_give_their_places_to_the_next_deploys(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    exporter = processes.exporter(
        redis_url, *QUIET, "--max-task-names", "2", "--purge-stopped-worker-after", "1"
    )

    def deploy(host: str, names: dict[str, str]) -> None:
        """A worker running each task name once, failing with its exception class."""
        events = [heartbeat(host, 60.0)]
        for name, exception in names.items():
            uuid = f"{host}-{name}"
            events += [
                task("sent", uuid, "client@h", name=name, queue="celery"),
                task("received", uuid, host, name=name),
                task("failed", uuid, host, exception=f"{exception}('x')"),
            ]
        in_batches(publish, events)

    deploy("v1@h", {"tasks.old_a": "OldAError", "tasks.old_b": "OldBError"})
    wait_until(lambda: events_counted(exporter, "task-failed") == 2, what="the first deploy")
    in_batches(publish, [{"type": "worker-offline", "hostname": "v1@h"}])
    wait_until(
        lambda: not exporter.metrics().series("celery_task_received_total"),
        what="the first deploy purged",
    )
    deploy("v2@h", {"tasks.new_a": "NewAError", "tasks.new_b": "NewBError"})
    wait_until(lambda: events_counted(exporter, "task-failed") == 4, what="the second deploy")

    metrics = exporter.metrics()
    assert metrics.by_label("celery_task_received_total", "task") == {
        "tasks.new_a": 1.0,
        "tasks.new_b": 1.0,
    }
    assert metrics.by_label("celery_task_sent_total", "task") == {
        "tasks.new_a": 1.0,
        "tasks.new_b": 1.0,
    }
    assert metrics.by_label("celery_task_exceptions_total", "exception") == {
        "NewAError": 1.0,
        "NewBError": 1.0,
    }
    assert metrics.get(OVERFLOW, label="task", reason="cap") == 0


def test_scrapes_during_the_purge_of_thousands_of_workers_are_answered_and_exact(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    fleet, alive = 5000, 10
    exporter = processes.exporter(
        redis_url, *QUIET, "--purge-stopped-worker-after", "1", "--max-workers", "10000"
    )
    gone = [f"w{i}@fleet" for i in range(fleet)]
    staying = [f"s{i}@fleet" for i in range(alive)]
    # Heartbeats with freq 60: online for two minutes, however slowly the machine counts.
    events = [heartbeat(host, 60.0) for host in gone + staying]
    for i, host in enumerate(gone + staying):
        for name in ("tasks.a", "tasks.b"):
            uuid = f"{name}-{i}"
            events += [task("received", uuid, host, name=name), task("failed", uuid, host)]
    # Four tasks prefetched by each worker of the fleet: 20 000 in flight when it stops (a pass
    # over them per goodbye held the ingest thread, and a scrape, for 3 s).
    prefetch = 4
    for i, host in enumerate(gone):
        events += [
            task("received", f"tasks.c-{i}-{k}", host, name="tasks.c") for k in range(prefetch)
        ]
    in_batches(publish, events)
    total = fleet + alive
    wait_until(
        lambda: events_counted(exporter, "task-received") == 2 * total + prefetch * fleet,
        timeout=60,
        what="the fleet's events counted",
    )
    metrics = exporter.metrics("celery_worker_online", "celery_worker_prefetched_tasks")
    assert len(metrics.series("celery_worker_online")) == total
    prefetched = metrics.by_label("celery_worker_prefetched_tasks", "worker")
    assert prefetched == {**dict.fromkeys(gone, prefetch), **dict.fromkeys(staying, 0.0)}

    # The fleet stops cleanly: purged a second after its goodbyes, while it is scraped (how long
    # those scrapes take is the benchmark's: python -m bench.run --only purge).
    goodbyes = [{"type": "worker-offline", "hostname": host} for host in gone]
    in_batches(publish, goodbyes)

    answers: list[int | str] = []  # every scrape's status, or what it raised

    def purged() -> Metrics | None:
        try:
            response = exporter.get("/metrics")
        except requests.RequestException as exc:
            answers.append(repr(exc))
            return None
        answers.append(response.status_code)
        if response.status_code != 200:
            return None
        online = Metrics.parse(response.text, "celery_worker_online")
        return (
            Metrics.parse(response.text)
            if len(online.series("celery_worker_online")) == alive
            else None
        )

    after = wait_until(purged, timeout=60, interval=0.2, what="the fleet purged")
    assert set(answers) == {200}, answers

    # Exactly the staying workers' series are left.
    assert after is not None
    metrics = after
    assert metrics.by_label("celery_worker_online", "worker") == dict.fromkeys(staying, 1.0)
    assert metrics.by_label("celery_worker_prefetched_tasks", "worker") == dict.fromkeys(
        staying, 0.0
    )
    for family in ("celery_task_received_total", "celery_task_failed_total"):
        assert metrics.by_label(family, "worker").keys() == set(staying)
        series = metrics.series(family)
        assert {(dict(k)["task"], dict(k)["worker"]) for k in series} == {
            (name, host) for name in ("tasks.a", "tasks.b") for host in staying
        }
        assert all(value == 1 for value in series.values())
    # Started: created at 0 with each pair's first event, and purged with the rest.
    assert len(metrics.series("celery_task_started_total")) == 2 * alive
    assert len(metrics.series("celery_worker_tasks_total")) == alive * 7
