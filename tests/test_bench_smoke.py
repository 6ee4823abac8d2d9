"""The benchmark's publisher against the real exporter at a tiny size: every event it sends is
counted exactly once, on the series it belongs to (correctness of the fast paths, not speed)."""

from __future__ import annotations

import pytest
import requests

from bench.consumers import parse_counts
from bench.ingest import main as ingest_main
from bench.publisher import BrokerPublisher, make_fleet, prepare_burst
from bench.run import Row, purge, ratios
from tests.conftest import Processes, wait_until

pytestmark = pytest.mark.integration


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


def test_ratios_pair_the_consumers_of_each_round() -> None:
    rows = [
        Row("redis-throughput", "redis", "bare", 300, rate=100.0, cpu_per_100k=1.0, round=1),
        Row("redis-throughput", "redis", "exporter", 300, rate=300.0, cpu_per_100k=0.5, round=1,
            counted_s=1.0),
        Row("redis-throughput", "redis", "exporter", 300, rate=150.0, cpu_per_100k=0.4, round=2,
            counted_s=1.5),
        Row("redis-throughput", "redis", "bare", 300, rate=50.0, cpu_per_100k=2.0, round=2),
        Row("redis-throughput", "redis", "exporter", 300, rate=400.0, cpu_per_100k=0.5, round=3),
        Row("redis-throughput", "redis", "bare", 300, rate=100.0, cpu_per_100k=1.0, round=3),
        Row("render-50k-series", "redis", "exporter", 36, rate=9.0, cpu_per_100k=0.5),
    ]  # fmt: skip
    # The counting rate (every event counted, the history still being written) of the rounds
    # that have one: 300 events in 1.0 s against 100/s, in 1.5 s against 50/s.
    assert ratios(rows).splitlines()[2:] == [
        "| redis-throughput | 3 | 3.00 [3.00-4.00] | 3.50 [3.00-4.00] | 2.00 [2.00-5.00] |"
    ]


def test_ingest_bench_counts_the_fleets_events(capsys: pytest.CaptureFixture[str]) -> None:
    """The bench times the state's counting only if it counted every event the fleet sent, by
    type (it exits 1 otherwise)."""
    assert ingest_main(["--tasks", "200", "--workers", "2", "--names", "2", "--repeat", "1"]) == 0
    assert capsys.readouterr().out.startswith("600 task events in 30 messages, each counted: ")


def test_purge_scenario_counts_the_fleet_then_sees_it_purged() -> None:
    row = purge(50)
    assert (row.scenario, row.task_events, row.lost) == ("purge-50-workers", 300, 0)
    assert row.render_ms is not None and row.render_ms > 0
    assert " scrapes until all 50 workers were purged, the slowest " in row.notes[-1]
