"""Workers run ``--without-heartbeat`` against the real exporter (issue 20): their task events
made series under the worker cap that no purge reached (50 such hostnames kept 2 713 series for
good and filled ``--max-workers 50``; a real worker started later got no gauges). A worker that
sends no heartbeat is purged after its last task event plus the purge delay."""

from __future__ import annotations

import time

from celery_events_exporter.events.vocabulary import WORKER_EVENTS
from tests.conftest import Metrics, Processes, client, wait_until

PURGE_AFTER = 4.0


def test_workers_without_heartbeats_are_purged_and_give_their_place_back(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(
        redis_url,
        "--max-workers",
        "2",
        "--purge-offline-worker-after",
        str(PURGE_AFTER),
        "--broadcast-interval",
        "1",
    )
    silent = ["quiet1@purge", "quiet2@purge"]
    for index, name in enumerate(silent):
        processes.worker(
            redis_url, name, concurrency=1, extra=("--without-heartbeat", "-Q", f"q{index}")
        )
    with client(redis_url) as app:
        for index in range(2):
            app.send_task("tests.add", (1, 2), queue=f"q{index}")

    def succeeded() -> dict[str, float]:
        metrics = exporter.metrics("celery_task_succeeded_total")
        return metrics.by_label("celery_task_succeeded_total", "worker", task="tests.add")

    wait_until(lambda: succeeded() == {name: 1.0 for name in silent}, what="both tasks counted")
    last_event = time.monotonic()
    # The cap is full: a worker with heartbeats started now is past it, its gauges not exported.
    # Only it sends worker events (the others run without heartbeats: no worker-online
    # either), and each one it sends is folded: the overflow counts exactly its events.
    processes.worker(redis_url, "beating@purge", concurrency=1, extra=("-Q", "q9"))

    def worker_events(metrics: Metrics) -> float:
        by_type = metrics.by_label("celery_exporter_events_total", "type")
        return sum(by_type.get(kind, 0.0) for kind in WORKER_EVENTS)

    wait_until(
        lambda: worker_events(exporter.metrics("celery_exporter_events")) >= 2,
        what="the beating worker's worker-online and first heartbeat",
    )
    metrics = exporter.metrics()  # one page: the counts of one moment
    assert metrics.by_label("celery_worker_online", "worker") == {}
    overflow = metrics.get("celery_exporter_label_overflow_total", label="worker", reason="cap")
    assert overflow == worker_events(metrics)
    assert metrics.get("celery_exporter_events_total", type="worker-online") == 1.0
    assert succeeded() == {name: 1.0 for name in silent}  # not purged before the delay

    # After their last event plus the delay, they go, every series with them, and the worker
    # with heartbeats takes a place: its gauges appear.
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker="beating@purge") == 1.0,
        timeout=PURGE_AFTER + 15,
        what="the beating worker's gauges",
    )
    assert time.monotonic() - last_event >= PURGE_AFTER
    page = exporter.get("/metrics").text
    assert "quiet1@purge" not in page and "quiet2@purge" not in page
    workers = exporter.get("/api/workers").json()
    assert [row["worker"] for row in workers] == ["beating@purge"]
