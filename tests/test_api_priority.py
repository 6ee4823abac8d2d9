"""Scrapes first (issue 20): no load on /api/* slows /metrics past 1 s. Against the real
exporter and a real Redis, 10 000 recent tasks whose args are the issue's crafted 4 kB field of
escaped quotes, which the masker must read (``--expose-task-payloads``; the old masker took
60 ms a field, 100 rows in 24.9 s): a page of 100 answers within a second, 16 clients
reading ``/api/tasks?limit=10000`` at once get two answers at a time and 503 with Retry-After
for the rest, every scrape meanwhile answers within 1 s, and a client that goes away has its
work dropped."""

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

from celery_events_exporter.tasks.redact import ELLIPSIS
from tests.conftest import ExporterProcess, Processes, own_redis_url, wait_until

# The module's tests share one exporter (``loaded``, a dozen seconds to set up) and name no
# broker fixture of their own, which would mark them integration tests: the marker does.
pytestmark = pytest.mark.integration

TASKS = 10_000
PAYLOAD = "'" + "\\'" * 2048  # the quoted-key attack: 4 097 characters, kept to 4 096 bytes
PAGE = 100
MAX_PAYLOAD_LENGTH = 1024
"""--max-payload-length's default: the characters of args served."""


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


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """One exporter holding the 10 000 tasks, shared by the module's tests: each reads its
    counters as deltas over its own run, since an earlier test's requests count there too."""
    with own_redis_url() as redis_url:
        processes = Processes(tmp_path_factory.mktemp("api-priority"))
        try:
            yield _loaded(redis_url, processes)
        finally:
            processes.stop_all()


def _loaded(redis_url: str, processes: Processes) -> ExporterProcess:
    # 10 000 tasks of 4 kB args arrive at once: room for all of them in the history's buffer
    # (its default drops a burst past 64 MiB of events, counted, rather than slow counting).
    exporter = processes.exporter(
        redis_url, "--expose-task-payloads", "--tasks.buffer-bytes", "1GiB"
    )
    publish_tasks(redis_url)
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_succeeded_total", task="t", worker="w1@api")
            == TASKS
        ),
        what=f"{TASKS} tasks counted",
    )
    # The task history (SQLite, the default) has them once its writer's flush window is over:
    # asked for the last one (a page of all 10 000 masked takes seconds), then counted once.
    last = f"task-{TASKS - 1:05d}"
    wait_until(
        lambda: (
            [row["state"] for row in exporter.get("/api/tasks", {"uuid": last}).json()]
            == ["SUCCESS"]
        ),
        timeout=60,
        what=f"{TASKS} tasks in the history",
    )
    # A page holds 16 MiB of JSON at most (web.api.MAX_ANSWER_BYTES): fewer than 10 000 such
    # rows; X-Next-Page goes on, and the pages hold every task once.
    seen: list[str] = []
    params = {"limit": str(TASKS)}
    while True:
        page = requests.get(f"{exporter.url}/api/tasks", params, timeout=120)
        seen += [row["uuid"] for row in page.json()]
        if "X-Next-Page" not in page.headers:
            break
        params = {"limit": str(TASKS), "after": page.headers["X-Next-Page"]}
    assert sorted(seen) == [f"task-{i:05d}" for i in range(TASKS)]
    return exporter


REFUSED = "celery_exporter_api_requests_refused_total"
ABANDONED = "celery_exporter_api_requests_abandoned_total"


def counter(exporter: ExporterProcess, name: str) -> float:
    """The value of an unlabelled counter, which the exporter serves from its start (at 0)."""
    value = exporter.metrics().get(name)
    assert value is not None, f"{name} is not served"
    return value


def test_scrapes_stay_fast_while_16_clients_read_the_api(loaded: ExporterProcess) -> None:
    exporter = loaded
    refused_before = counter(exporter, REFUSED)
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
                    # Counted, not parsed: parsing 16 MB answers in 16 threads of this
                    # process would hold its GIL and delay its own timing of the scrapes.
                    sizes.append(response.content.count(b'{"uuid":'))

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
    first_page = len(exporter.get("/api/tasks", {"limit": str(TASKS)}).json())
    assert first_page < TASKS  # cut by the answer's byte bound
    assert set(sizes) == {first_page}
    assert retry_after == {"1"}
    assert counter(exporter, REFUSED) - refused_before == statuses.count(503)


def test_the_work_of_a_client_that_went_away_is_dropped(loaded: ExporterProcess) -> None:
    exporter = loaded
    abandoned, refused = counter(exporter, ABANDONED), counter(exporter, REFUSED)
    # One at a time: a third at once would find both API workers busy (and be refused).
    for gone in range(1, 4):
        with socket.create_connection(("127.0.0.1", exporter.port)) as sock:
            sock.sendall(b"GET /api/tasks?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(
            lambda: counter(exporter, ABANDONED) == abandoned + gone,  # noqa: B023 (used at once)
            timeout=5,  # an answer takes seconds: dropped at once, not built
            what=f"{gone} abandoned requests",
        )
    assert counter(exporter, REFUSED) == refused
    assert exporter.get("/api/tasks", {"limit": "1"}).status_code == 200


def test_a_page_of_crafted_payloads_is_masked_within_a_second(loaded: ExporterProcess) -> None:
    """Masking is linear in its input (docs/limits.md: about 1 ms for such a 4 kB field): a
    page of 100 of them is well within a second, where the quadratic masker took 24.9 s."""
    exporter = loaded
    for _ in range(3):  # not a lucky one
        started = time.monotonic()
        response = exporter.get("/api/tasks", {"limit": str(PAGE)})
        took = time.monotonic() - started
        assert response.status_code == 200
        assert took < 1.0, f"a page of {PAGE} crafted rows took {took:.2f} s"
    rows = response.json()
    assert len(rows) == PAGE
    # Nothing in it looks like a key: served as it was kept, cut to --max-payload-length.
    assert {row["args"] for row in rows} == {PAYLOAD[:MAX_PAYLOAD_LENGTH] + ELLIPSIS}
