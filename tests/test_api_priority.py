"""Scrapes first (issue 20): no load on /api/* slows /metrics past 1 s. Against the real
exporter and a real Redis, 10 000 recent tasks with crafted 1 kB payloads that the masker must
read (``--expose-task-payloads``): 16 clients reading ``/api/tasks?limit=10000`` at once get
two answers at a time and 503 with Retry-After for the rest, every scrape meanwhile answers
within 1 s, and a client that goes away has its work dropped."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from celery.events.event import get_exchange
from kombu import Connection, Producer

from tests.conftest import ExporterProcess, Processes, wait_until

TASKS = 10_000
PAYLOAD = "'" + "\\'" * 100  # the quoted-key attack (60 ms for 4 kB with the old masker)


def publish_tasks(redis_url: str) -> None:
    now = time.time()
    with Connection(redis_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        for start in range(0, TASKS, 500):
            events: list[dict[str, Any]] = []
            for i in range(start, start + 500):
                common = {"uuid": f"task-{i:05d}", "hostname": "w1@api", "timestamp": now}
                events.append({"type": "task-received", "name": "t", "args": PAYLOAD, **common})
                events.append({"type": "task-succeeded", "runtime": 0.1, **common})
            producer.publish(
                orjson.dumps(events),
                routing_key="task.multi",
                content_type="application/json",
                content_encoding="utf-8",
            )


@pytest.fixture
def loaded(redis_url: str, processes: Processes) -> Iterator[ExporterProcess]:
    exporter = processes.exporter(redis_url, "--expose-task-payloads")
    publish_tasks(redis_url)
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_succeeded_total", task="t", worker="w1@api")
            == TASKS
        ),
        what=f"{TASKS} tasks counted",
    )
    # The task history (SQLite, the default) has them once its writer's flush window is over.
    wait_until(
        lambda: len(exporter.get("/api/tasks", {"limit": str(TASKS)}).json()) == TASKS,
        what=f"{TASKS} tasks in the history",
    )
    yield exporter


def test_scrapes_stay_fast_while_16_clients_read_the_api(loaded: ExporterProcess) -> None:
    exporter = loaded
    statuses: list[int] = []
    retry_after: set[str | None] = set()
    sizes: list[int] = []
    stop = threading.Event()
    # The 16 send each request together: how often free-running clients overlap depends on
    # how fast the exporter answers against how fast this process reads 10 MB answers.
    together = threading.Barrier(16)

    def reader() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    together.wait(timeout=60)
                except threading.BrokenBarrierError:
                    return  # the test is over
                response = session.get(f"{exporter.url}/api/tasks?limit=10000", timeout=60)
                statuses.append(response.status_code)
                if response.status_code == 503:
                    retry_after.add(response.headers.get("Retry-After"))
                    time.sleep(0.05)
                else:
                    sizes.append(len(response.json()))

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(16)]
    for thread in readers:
        thread.start()
    latencies = []
    try:
        time.sleep(1.0)
        for _ in range(20):
            started = time.monotonic()
            response = exporter.get("/metrics")
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.25)
    finally:
        stop.set()
        together.abort()
        for thread in readers:
            thread.join(60)
    assert max(latencies) < 1.0, f"scrapes took {sorted(latencies)}"
    assert statuses.count(200) >= 2  # the API serves, two at a time
    assert set(sizes) == {TASKS}
    assert retry_after == {"1"}
    refused = exporter.metrics().get("celery_exporter_api_requests_refused_total")
    assert refused == statuses.count(503)


def test_the_work_of_a_client_that_went_away_is_dropped(loaded: ExporterProcess) -> None:
    exporter = loaded
    # One at a time: a third at once would find both API workers busy (and be refused).
    for gone in range(1, 4):
        with socket.create_connection(("127.0.0.1", exporter.port)) as sock:
            sock.sendall(b"GET /api/tasks?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(
            lambda: exporter.metrics().get("celery_exporter_api_requests_abandoned_total") == gone,  # noqa: B023 (used at once)
            timeout=5,  # an answer takes seconds: dropped at once, not built
            what=f"{gone} abandoned requests",
        )
    assert exporter.metrics().get("celery_exporter_api_requests_refused_total") == 0.0
    assert exporter.get("/api/tasks", {"limit": "1"}).status_code == 200
