"""Task names and queues that arrive only in task-sent events, against the real exporter, a real
Redis and a real worker (issue 20): any broker client may publish task-sent events, and a client
sends no heartbeat, so such values had no owner a purge reached. Five crafted names and queues
at caps of 5 stayed admitted for good before, and a real task received later counted as
task="other". Now their series go the purge delay after their last task-sent, unless a worker
holds the name, and their places are free again."""

from __future__ import annotations

import time

import pytest

from testkit.events import publish_sent
from tests.conftest import Processes, client, wait_until

PURGE_AFTER = 4.0
CAP = 5


@pytest.mark.parametrize("worker_label", ["--worker-label", "--no-worker-label"])
def test_sent_only_names_and_queues_give_their_places_back(
    redis_url: str, processes: Processes, worker_label: str
) -> None:
    exporter = processes.exporter(
        redis_url,
        worker_label,
        "--max-task-names",
        str(CAP),
        "--max-queues",
        str(CAP),
        "--purge-offline-worker-after",
        str(PURGE_AFTER),
        "--max-registered-tasks",
        "0",  # the worker's registered names would take places too
    )
    crafted = [(f"crafted.t{i}", f"cq{i}") for i in range(CAP + 1)]
    publish_sent(redis_url, crafted)
    published = time.monotonic()

    def sent() -> dict[tuple[str, str], float]:
        series = exporter.metrics("celery_task_sent_total").series("celery_task_sent_total")
        return {
            (dict(labels)["task"], dict(labels)["queue"]): value for labels, value in series.items()
        }

    # Five of each admitted, the sixth folded into (other, other): both caps full.
    expected = {pair: 1.0 for pair in crafted[:CAP]} | {("other", "other"): 1.0}
    wait_until(lambda: sent() == expected, what="the crafted task-sent series")
    assert time.monotonic() - published < PURGE_AFTER  # seen before the delay ran out

    def overflow() -> dict[str, float]:
        metrics = exporter.metrics("celery_exporter_label_overflow")
        return metrics.by_label("celery_exporter_label_overflow_total", "label", reason="cap")

    assert overflow() == {"task": 1.0, "worker": 0.0, "queue": 1.0, "exception": 0.0}

    # No worker holds their names: they go the delay after their last task-sent.
    wait_until(lambda: sent() == {}, timeout=PURGE_AFTER + 10, what="the crafted series purged")
    assert time.monotonic() - published >= PURGE_AFTER

    # A real task seen later is counted under its own name and queue.
    processes.worker(redis_url, "real@sent", concurrency=1, extra=("-Q", "real"))
    with client(redis_url) as app:
        app.send_task("tests.add", (1, 2), queue="real")

    def succeeded() -> dict[str, float]:
        metrics = exporter.metrics("celery_task_succeeded_total")
        return metrics.by_label("celery_task_succeeded_total", "task")

    wait_until(lambda: succeeded() == {"tests.add": 1.0}, what="the real task counted")
    assert sent() == {("tests.add", "real"): 1.0}
    assert overflow() == {"task": 1.0, "worker": 0.0, "queue": 1.0, "exception": 0.0}
    # The name is held by the worker now: its task-sent series outlives the delay.
    time.sleep(PURGE_AFTER + 2.0)
    assert sent() == {("tests.add", "real"): 1.0}
