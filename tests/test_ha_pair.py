"""Two exporters on one broker, scraped by one real Prometheus, count every task once.

Every exporter of a broker receives every event, so an HA pair exports each fleet series twice
(differing in ``instance``). The dashboards and the recording rules fold the copies with
``max without (instance, pod)`` (``celery_events_exporter.exposition.promql``); this runs their very
expressions through Prometheus' HTTP API against two real exporters, a real worker and real
tasks.

The Workers table's columns are counter values since the exporters started: they must read the
exact task counts. ``increase()`` and ``rate()`` extrapolate to the edges of their window, so
the time-range panels and the recording rules read the batch's count within Prometheus'
extrapolation (a few percent here), never twice it; the same expressions without the
de-duplication read twice as much, which proves the pair really doubles every series.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest
import yaml

from grafana import generate
from grafana.dashboards_src import panels, tasks, workers
from tests.conftest import ExporterProcess, Processes, Prometheus, PrometheusFor, client, wait_until

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "prometheus" / "rules"
JOB = "celery-events-exporter"
WORKER = "w1@pair"
# The batch the panels must count; a warm-up of one success and one failure comes first, so
# that every series exists before the window the time-range panels and the rates look at.
BATCH_OK = 4
REGISTERED_TASKS = (
    "tests.add", "tests.fail", "tests.flaky", "tests.flaky_exc", "tests.image", "tests.reject",
    "tests.sleep",
)  # fmt: skip
"""What tests/celery_app.py registers: the worker's greeting creates each one's series at 0."""
BATCH_FAILED = 2
TOTAL_OK = BATCH_OK + 1
TOTAL_FAILED = BATCH_FAILED + 1
# increase()/rate() extrapolate to the window's edges, by up to a scrape interval (250 ms) at
# each end of a window of several seconds; a doubled count is +100 %.
EXTRAPOLATION = 0.25


def _steady(prometheus: Prometheus, expr: str, expected: float, replicas: int) -> float:
    """Wait until every replica's series of ``expr`` read ``expected`` for 3 s of scrapes."""

    def check() -> bool:
        found = prometheus.values(f"min_over_time(({expr})[3s:1s])", time.time(), "instance")
        return len(found) == replicas and set(found.values()) == {expected}

    wait_until(check, timeout=60, interval=0.5, what=f"{expr} steady at {expected}")
    return time.time()


def _last_change(prometheus: Prometheus, at: float) -> float:
    """When any replica's task counter last changed value, from the samples Prometheus stored."""
    last = 0.0
    for series in prometheus.range_samples('{__name__=~"celery_task_.*_total"}[30s]', at):
        for (_, before), (when, after) in itertools.pairwise(series):
            if after != before:
                last = max(last, when)
    return last


def _run(broker_url: str, ok: int, failed: int) -> None:
    with client(broker_url) as app:
        for i in range(ok):
            app.send_task("tests.add", (i, i))
        for i in range(failed):
            app.send_task("tests.fail", (f"boom {i}",))


def _warmed_up(exporter: ExporterProcess) -> bool:
    metrics = exporter.metrics()
    failed = metrics.get("celery_task_failed_total", task="tests.fail", worker=WORKER)
    succeeded = metrics.get("celery_task_succeeded_total", task="tests.add", worker=WORKER)
    return failed == succeeded == 1.0


def _received(task: str) -> str:
    return f'celery_task_received_total{{task="{task}"}}'


def _column(columns: list[tuple[str, str]], title: str, variables: dict[str, str]) -> str:
    [expr] = [expr for name, expr in columns if name == title]
    return generate.substitute(expr, variables)


def test_two_exporters_count_every_task_once(
    redis_url: str, processes: Processes, prometheus_for: PrometheusFor
) -> None:
    pair = [processes.exporter(redis_url), processes.exporter(redis_url)]
    processes.worker(redis_url, WORKER)
    prometheus = prometheus_for(pair)

    _run(redis_url, 1, 1)
    # Both exporters count everything: that is what the queries must fold.
    wait_until(lambda: all(_warmed_up(e) for e in pair), what="the warm-up on both exporters")
    _steady(prometheus, 'celery_task_failed_total{task="tests.fail"}', 1.0, 2)
    _steady(prometheus, 'celery_task_succeeded_total{task="tests.add"}', 1.0, 2)
    # Every series exists at 0 from the worker's greeting on, so the warm-up's steps from 0 to 1
    # are increases too: the window must start after those of the counters the panels sum.
    _steady(prometheus, _received("tests.fail"), 1.0, 2)
    steady_at = _steady(prometheus, _received("tests.add"), 1.0, 2)
    # Inside the 3 s every replica read the warm-up values, and after the last scrape at which
    # any task counter moved (every series exists at 0 from the worker's greeting on, so the
    # warm-up's steps from 0 to 1 are increases that must stay outside the window).
    window_start = max(steady_at - 1.5, _last_change(prometheus, steady_at) + 0.05)
    # Prometheus scrapes every 250 ms: let it store the warm-up values inside the window first.
    time.sleep(max(0.0, window_start + 0.6 - time.time()))

    _run(redis_url, BATCH_OK, BATCH_FAILED)
    _steady(prometheus, 'celery_task_failed_total{task="tests.fail"}', TOTAL_FAILED, 2)
    _steady(prometheus, 'celery_task_succeeded_total{task="tests.add"}', TOTAL_OK, 2)
    at = _steady(prometheus, _received("tests.add"), TOTAL_OK, 2)
    window_ms = math.ceil((at - window_start) * 1000)

    variables = {workers.WORKER_VAR: ".*", tasks.TASK_VAR: ".*"}

    # -- the Workers table: exact totals, once ------------------------------------------------
    columns = workers.table_columns()
    table = {
        title: prometheus.values(_column(columns, title, variables), at, "worker")
        for title in (workers.PROCESSED, workers.FAILED, workers.SUCCEEDED, workers.RETRIED)
    }
    assert table == {
        workers.PROCESSED: {WORKER: TOTAL_OK + TOTAL_FAILED},
        workers.FAILED: {WORKER: TOTAL_FAILED},
        workers.SUCCEEDED: {WORKER: TOTAL_OK},
        workers.RETRIED: {WORKER: 0.0},
    }
    assert prometheus.values(_column(columns, workers.STATUS, variables), at, "worker") == {
        WORKER: 1.0
    }
    # Control: summed without the de-duplication, the pair doubles the count.
    assert prometheus.values("sum by (worker) (celery_task_received_total)", at, "worker") == {
        WORKER: 2 * (TOTAL_OK + TOTAL_FAILED)
    }

    # -- the Tasks dashboard's time-range panels: the batch, once -----------------------------
    def over_window(expr: str) -> str:
        return expr.replace(f"[{generate.MACRO_VALUES['__range']}]", f"[{window_ms}ms]")

    # generate.substitute expands $__range to its fixed value; put the test's window instead.
    def tasks_query(title: str) -> str:
        [expr] = [
            expr
            for uid, panel, expr in generate.all_queries()
            if uid == panels.TASKS_UID and panel == title
        ]
        return over_window(expr)

    batch = BATCH_OK + BATCH_FAILED

    # Every series exists at 0 from the worker's greeting on, so the warm-up's steps from 0 to 1
    # are increases too. The window is meant to start after them, yet on some runs it reads
    # them (an open question, noted in the changelog's Known issues): a window's count is the
    # batch's, or the batch's and the warm-up's, never twice either.
    def within(value: float, count: float, warm_up: float) -> bool:
        return count * (1 - EXTRAPOLATION) <= value <= (count + warm_up) * (1 + EXTRAPOLATION)

    for title, count, warm_up in (
        ("Tasks received (time range)", batch, 2),
        ("Tasks succeeded (time range)", BATCH_OK, 1),
        ("Tasks failed (time range)", BATCH_FAILED, 1),
    ):
        value = prometheus.values(tasks_query(title), at)[""]
        # The control: the same window without the fold reads both replicas.
        metric = tasks_query(title).split("increase(")[1].split("[")[0]
        control = prometheus.values(f"sum(increase({metric}[{window_ms}ms]))", at)[""]
        assert value == pytest.approx(control / 2, rel=EXTRAPOLATION), title
        assert within(value, count, warm_up), (title, value)
    ratio = prometheus.values(tasks_query("Failure ratio (time range)"), at)[""]
    assert ratio == pytest.approx(BATCH_FAILED / batch, abs=0.1)

    per_task = tasks.per_task_columns()
    # The worker's other registered tasks have their series at 0 from its greeting on.
    idle = {name: 0 for name in REGISTERED_TASKS if name not in ("tests.add", "tests.fail")}
    for title, counts in (
        ("Received", {"tests.add": BATCH_OK, "tests.fail": BATCH_FAILED, **idle}),
        ("Failed", {"tests.add": 0, "tests.fail": BATCH_FAILED, **idle}),
        ("Succeeded", {"tests.add": BATCH_OK, "tests.fail": 0, **idle}),
    ):
        found = prometheus.values(over_window(_column(per_task, title, variables)), at, "task")
        assert set(found) == set(counts), title
        for task_name, count in counts.items():
            assert within(found[task_name], count, 1 if count else 0), (title, task_name, found)
    doubled = prometheus.values(f"sum(increase(celery_task_received_total[{window_ms}ms]))", at)[""]
    assert within(doubled, 2 * batch, 2 * 2), doubled

    # -- the recording rules' expressions: the batch's rate, once ------------------------------
    recording = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load((RULES / "celery-recording.rules.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    seconds = 300  # the rules' 5m window holds every sample of this test

    def recorded(name: str, label: str) -> dict[str, float]:
        rates = prometheus.values(recording[name], at, label)
        return {key: value * seconds for key, value in rates.items()}

    expectations = {
        # The rules' 5m window holds the warm-up too, its steps from 0 included.
        ("task:celery_task_received:rate5m", "task"): {
            "tests.add": TOTAL_OK,
            "tests.fail": TOTAL_FAILED,
            **idle,
        },
        ("task:celery_task_succeeded:rate5m", "task"): {
            "tests.add": TOTAL_OK,
            "tests.fail": 0,
            **idle,
        },
        ("task:celery_task_failed:rate5m", "task"): {
            "tests.add": 0,
            "tests.fail": TOTAL_FAILED,
            **idle,
        },
        # celery_worker_tasks_total exists from 0 once the worker is known (before the warm-up):
        # its rates see the warm-up too.
        ("worker:celery_task_received:rate5m", "worker"): {WORKER: TOTAL_OK + TOTAL_FAILED},
        ("worker:celery_task_failed:rate5m", "worker"): {WORKER: TOTAL_FAILED},
        ("worker:celery_task_succeeded:rate5m", "worker"): {WORKER: TOTAL_OK},
    }
    for (name, label), expected in expectations.items():
        assert recorded(name, label) == pytest.approx(expected, rel=EXTRAPOLATION), name
    undeduplicated = prometheus.values(
        "sum by (worker) (rate(celery_task_received_total[5m]))", at, "worker"
    )
    # The 5m window holds the warm-up's steps from 0 too.
    assert undeduplicated[WORKER] * seconds == pytest.approx(
        2 * (TOTAL_OK + TOTAL_FAILED), rel=EXTRAPOLATION
    )
