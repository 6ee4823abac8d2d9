"""worker_details: Flower's worker page from inspect, bounded, without secrets; a real worker
answers it, and the off switch turns it off."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from celery_events_exporter.worker_details import MAX_ITEMS, MAX_TEXT, parse
from tests.conftest import Processes, client, wait_until

WORKER = "w1@details"

STATS = {
    "pool": {
        "implementation": "celery.concurrency.prefork:TaskPool",
        "max-concurrency": 2,
        "processes": [101, 102],
        "timeouts": [0, 0],
    },
    "prefetch_count": 8,
    "rusage": {"utime": 1.5, "stime": 0.25, "maxrss": 51200},
    "broker": {"transport": "redis", "hostname": "10.0.0.1", "userid": "celery",
               "password": "s3cret", "transport_options": {"token": "s3cret"}},
    "total": {"tests.add": 3},
}  # fmt: skip


@pytest.mark.unit
def test_stats_become_numbers_and_names_only() -> None:
    details = parse(WORKER, 1000.0, STATS)
    assert (details.pool, details.pool_processes, details.max_concurrency) == ("prefork", 2, 2)
    assert (details.prefetch_count, details.user_cpu_seconds, details.system_cpu_seconds) == (
        8, 1.5, 0.25,
    )  # fmt: skip
    assert details.max_rss_bytes == 51200 * 1024
    assert details.transport == "redis"
    served = repr(details.as_json())
    assert "s3cret" not in served and "10.0.0.1" not in served and "userid" not in served


@pytest.mark.unit
def test_lists_keep_uuids_and_names_bounded() -> None:
    reserved = [{"id": f"u{i}", "name": "tests.add", "args": "('secret',)"} for i in range(150)]
    request = {"id": "s1", "name": "tests.add", "kwargs": "{'token': 'x'}"}
    scheduled = [{"eta": "2026-12-06T16:00:00+00:00", "priority": 6, "request": request}]
    details = parse(
        WORKER,
        1000.0,
        STATS,
        queues=[{"name": "celery", "exchange": {"name": "celery"}}, {"name": "x" * (MAX_TEXT + 1)}],
        registered=["tests.add", "tests.fail [rate_limit=10/m]", 7],
        reserved=reserved,
        scheduled=scheduled,
        revoked=["r1", None],
    )
    assert details.queues == ("celery",)
    assert details.registered == ("tests.add", "tests.fail")
    assert len(details.reserved) == MAX_ITEMS
    assert details.reserved[0] == {"uuid": "u0", "name": "tests.add"}
    assert details.scheduled == ({"uuid": "s1", "name": "tests.add",
                                  "eta": "2026-12-06T16:00:00+00:00"},)  # fmt: skip
    assert details.revoked == ("r1",)
    assert details.left_out == {"queues": 1, "registered": 1, "reserved": 50, "revoked": 1}
    assert "secret" not in repr(details.as_json()) and "token" not in repr(details.as_json())


@pytest.mark.unit
@pytest.mark.parametrize(
    "reply", [None, [], "text", {"pool": "x", "rusage": [1], "prefetch_count": -1}]
)
def test_odd_replies_give_empty_details(reply: Any) -> None:
    details = parse(WORKER, 1000.0, reply, queues="x", registered={"a": 1})
    assert (details.pool, details.pool_processes, details.prefetch_count) == (None, None, None)
    assert (details.queues, details.registered, details.left_out) == ((), (), {})


def _details(exporter: Any) -> dict[str, Any] | None:
    response = exporter.get(f"/api/workers/{WORKER}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] | None = response.json()["details"]
    return found


@pytest.mark.integration
def test_a_real_worker_answers_the_worker_page(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, "--worker-details-interval", "1")
    worker = processes.worker(redis_url, WORKER, concurrency=2)
    waiting = str(uuid.uuid4())
    with client(redis_url) as app:
        app.send_task("tests.add", (1, 2), task_id=waiting, countdown=60)
        revoked = str(uuid.uuid4())
        app.control.revoke(revoked)

    def polled() -> dict[str, Any] | None:
        found = _details(exporter)
        return found if found and found["scheduled"] and revoked in found["revoked"] else None

    details = wait_until(polled, timeout=30, what="the worker's details polled")
    assert details is not None
    assert (details["pool"], details["pool_processes"], details["max_concurrency"]) == (
        "prefork", 2, 2,
    )  # fmt: skip
    # tests.celery_app's prefetch multiplier is 1: the worker may hold 2; the ETA task it holds
    # raises it by one while it waits (Celery's rule for scheduled tasks).
    assert details["prefetch_count"] in (2, 3)
    assert details["queues"] == ["celery"]
    assert {"tests.add", "tests.fail", "tests.flaky"} <= set(details["registered"])
    assert [s["uuid"] for s in details["scheduled"]] == [waiting]
    assert details["transport"] == "redis"
    assert details["user_cpu_seconds"] > 0 and details["max_rss_bytes"] > 1_000_000
    metrics = exporter.metrics()
    assert metrics.get("celery_worker_pool_processes", worker=WORKER) == 2.0
    assert metrics.get("celery_worker_prefetch_count", worker=WORKER) == details["prefetch_count"]
    assert (metrics.get("celery_worker_cpu_user_seconds", worker=WORKER) or 0) > 0
    assert exporter.get("/api/workers/nobody@nowhere").status_code == 404
    # Offline workers are not polled: their details and gauges go.
    worker.stop()
    wait_until(
        lambda: (
            _details(exporter) is None
            and exporter.metrics().get("celery_worker_pool_processes", worker=WORKER) is None
        ),
        timeout=15,
        what="the stopped worker's details dropped",
    )


@pytest.mark.integration
def test_the_off_switch(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, "--worker-details-interval", "0")
    processes.worker(redis_url, WORKER)
    wait_until(lambda: exporter.metrics().get("celery_worker_online", worker=WORKER) == 1.0)
    time.sleep(2)
    assert _details(exporter) is None
    assert exporter.metrics().get("celery_worker_pool_processes", worker=WORKER) is None
