"""The benchmark's publisher against the real exporter at a tiny size: every event it sends is
counted exactly once, on the series it belongs to (correctness of the fast paths, not speed)."""

from __future__ import annotations

import requests

from bench.consumers import parse_counts
from bench.publisher import BrokerPublisher, make_fleet, prepare_burst
from tests.conftest import Processes, wait_until


def test_bench_publisher_burst_is_counted_exactly(processes: Processes, broker_url: str) -> None:
    exporter = processes.exporter(broker_url)
    fleet = make_fleet(broker_url, workers=3, names=4, fail_every=5)
    publisher = BrokerPublisher(broker_url)
    try:
        publisher.send(prepare_burst(fleet, tasks=200))
    finally:
        publisher.close()
    expected = fleet.expected
    assert expected.events_by_type["task-failed"] == 40
    assert expected.total == 200 * 3 + 3 * 2

    def all_counted() -> bool:
        by_type, _, _ = parse_counts(requests_text(exporter.url))
        return sum(by_type.values()) >= expected.total

    wait_until(all_counted, timeout=30, what="every published event counted")
    by_type, tasks, _ = parse_counts(requests_text(exporter.url))
    assert by_type == {t: float(n) for t, n in expected.events_by_type.items()}
    assert tasks == {key: float(n) for key, n in expected.tasks.items()}
    metrics = exporter.metrics()
    assert metrics.series("celery_exporter_events_rejected_total") == {}
    assert metrics.get("celery_exporter_intake_backlog_messages") == 0.0
    assert len(metrics.series("celery_worker_online")) == 3


def requests_text(url: str) -> str:
    response = requests.get(f"{url}/metrics", timeout=5)
    response.raise_for_status()
    return response.text
