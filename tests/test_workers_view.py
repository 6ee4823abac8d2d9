"""The Workers dashboard's table, through a real Prometheus, in both label modes.

With ``--no-worker-label`` the task counters lose their worker label, so a table that summed them
by worker got a blank-named row with the totals and 0 on every real worker. The table reads
``celery_worker_tasks_total{worker, state}`` instead, which the exporter keeps per worker in both
modes: the same rows and the same numbers either way.
"""

from __future__ import annotations

import time

import pytest

from celery_events_exporter.exposition import catalogue as m
from grafana import generate
from grafana.dashboards_src import workers
from tests.conftest import Processes, PrometheusFor, client, wait_until

W1, W2 = "w1@view", "w2@view"
# w1 runs 3 adds and 1 failure; w2 runs 2 adds and a task that is retried once, then succeeds
# (a retry is received again: 4 received on each).
EXPECTED = {
    workers.PROCESSED: {W1: 4.0, W2: 4.0},
    workers.FAILED: {W1: 1.0, W2: 0.0},
    workers.SUCCEEDED: {W1: 3.0, W2: 3.0},
    workers.RETRIED: {W1: 0.0, W2: 1.0},
    workers.STATUS: {W1: 1.0, W2: 1.0},
}
PER_WORKER = {
    W1: {"received": 4, "started": 4, "succeeded": 3, "failed": 1},
    W2: {"received": 4, "started": 4, "succeeded": 3, "retried": 1},
}


def _expected_states(host: str) -> dict[str, float]:
    counts = PER_WORKER[host]
    return {state: float(counts.get(state, 0)) for state in m.TASK_STATE_WORDS.values()}


@pytest.mark.parametrize("worker_label", [True, False], ids=["worker-label", "no-worker-label"])
def test_workers_table_is_right_in_both_label_modes(
    redis_url: str, processes: Processes, prometheus_for: PrometheusFor, worker_label: bool
) -> None:
    exporter = processes.exporter(redis_url, *([] if worker_label else ["--no-worker-label"]))
    processes.worker(redis_url, W1, extra=("-Q", "q1"))
    processes.worker(redis_url, W2, extra=("-Q", "q2"))
    prometheus = prometheus_for([exporter])

    with client(redis_url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i), queue="q1")
        app.send_task("tests.fail", ("boom",), queue="q1")
        for i in range(2):
            app.send_task("tests.add", (i, 1), queue="q2")
        app.send_task("tests.flaky", (1,), queue="q2")

    def per_worker() -> dict[str, dict[str, float]]:
        metrics = exporter.metrics()
        return {
            host: {
                state: value
                for state, value in metrics.by_label(
                    m.WORKER_TASKS.sample_names[0], m.STATE, worker=host
                ).items()
            }
            for host in (W1, W2)
        }

    # Every state of both workers, from 0, in either mode.
    wait_until(
        lambda: per_worker() == {host: _expected_states(host) for host in (W1, W2)},
        timeout=30,
        what="celery_worker_tasks_total of both workers",
    )
    metrics = exporter.metrics()
    received = metrics.series(m.TASK_STATE_COUNTERS["task-received"].sample_names[0])
    if worker_label:
        assert {dict(labels)["worker"] for labels in received} == {W1, W2}
    else:
        assert all("worker" not in dict(labels) for labels in received)

    columns = dict(workers.table_columns())
    variables = {workers.WORKER_VAR: ".*"}

    def table(at: float) -> dict[str, dict[str, float]]:
        return {
            title: prometheus.values(generate.substitute(columns[title], variables), at, "worker")
            for title in EXPECTED
        }

    wait_until(
        lambda: table(time.time()) == EXPECTED,
        timeout=30,
        interval=0.5,
        what="the Workers table in Prometheus",
    )
    at = time.time()
    # One row per real worker, no blank-named row, exact counts: every column.
    assert table(at) == EXPECTED
    for title, expr in columns.items():
        rows = prometheus.values(generate.substitute(expr, variables), at, "worker")
        assert set(rows) <= {W1, W2}, title
    # The Worker variable filters on the real worker names in both modes.
    only_w2 = generate.substitute(columns[workers.PROCESSED], {workers.WORKER_VAR: "w2@.*"})
    assert prometheus.values(only_w2, at, "worker") == {W2: 4.0}

    # The per-worker trend and the per-worker recording rules name real workers only.
    [(_, trend, trend_expr)] = [
        query
        for query in generate.all_queries()
        if query[1] == "Task rate by state per worker" and "received" in query[2]
    ]
    assert set(prometheus.values(trend_expr, at, "worker")) == {W1, W2}, trend
    recorded = "worker:celery_task_received:rate5m"
    wait_until(
        lambda: set(prometheus.values(recorded, time.time(), "worker")) == {W1, W2},
        timeout=30,
        interval=0.5,
        what=f"{recorded} for both workers",
    )
