"""Two exporters on one broker, scraped by one real Prometheus, count every task once.

Every exporter of a broker receives every event, so an HA pair exports each fleet series twice
(differing in ``instance``). The dashboards and the recording rules fold the copies with
``max without (instance, pod)`` (``celery_events_exporter.exposition.promql``); this runs their very
expressions through Prometheus' HTTP API against two real exporters, a real worker and real
tasks.

The Workers table's columns are counter values since the exporters started: they must read the
exact task counts. ``increase()`` and ``rate()`` extrapolate the rise a window holds to the
window's edges, by as much as the samples' spacing allows: so the test reads the samples
Prometheus stored in each window, asserts that on every replica they rise by exactly the batch's
count (no reset, no step of the warm-up's), and that the panels and rules read exactly what
Prometheus' extrapolation makes of those samples, folded once (``tests/promql_oracle.py``). A
fixed tolerance around the batch's count would not do: with few samples in a short window
(scrapes missed on a loaded machine) the extrapolation reaches far past it.
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
from tests import promql_oracle
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
RULES_WINDOW = 300
"""Seconds: the recording rules' 5m window, which holds every sample of this test."""


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


def _scraped_since(prometheus: Prometheus, when: float, instances: list[str]) -> bool:
    """Whether Prometheus stored a scrape of every replica taken after ``when``: one series
    stands for its target's whole scrape, whose samples all carry the scrape's time."""
    scraped = {
        series["metric"]["instance"]
        for series in prometheus.query(f"{_received('tests.add')}[10s]", time.time())
        if any(float(at) > when for at, _ in series["values"])
    }
    return scraped == set(instances)


def _column(columns: list[tuple[str, str]], title: str, variables: dict[str, str]) -> str:
    [expr] = [expr for name, expr in columns if name == title]
    return generate.substitute(expr, variables)


def test_two_exporters_count_every_task_once(
    redis_url: str, processes: Processes, prometheus_for: PrometheusFor
) -> None:
    pair = [processes.exporter(redis_url), processes.exporter(redis_url)]
    processes.worker(redis_url, WORKER)
    prometheus = prometheus_for(pair)
    instances = [f"127.0.0.1:{exporter.port}" for exporter in pair]

    # The worker's greeting creates its tasks' series at 0 on both exporters: stored at 0 before
    # the warm-up, its steps from 0 to 1 are counted rises (a series that first appears at 1 has
    # none).
    for name in ("tests.add", "tests.fail"):
        _steady(prometheus, _received(name), 0.0, 2)
    _run(redis_url, 1, 1)
    # Both exporters count everything: that is what the queries must fold.
    wait_until(lambda: all(_warmed_up(e) for e in pair), what="the warm-up on both exporters")
    _steady(prometheus, 'celery_task_failed_total{task="tests.fail"}', 1.0, 2)
    _steady(prometheus, 'celery_task_succeeded_total{task="tests.add"}', 1.0, 2)
    _steady(prometheus, _received("tests.fail"), 1.0, 2)
    steady_at = _steady(prometheus, _received("tests.add"), 1.0, 2)
    # The time-range window starts inside the 3 s every replica read the warm-up values, and
    # after the last scrape at which any task counter moved: the warm-up's steps stay outside.
    window_start = max(steady_at - 1.5, _last_change(prometheus, steady_at) + 0.05)
    # Let Prometheus store the warm-up values inside the window first (it scrapes every 250 ms):
    # each replica's rise in the window then starts from them.
    wait_until(
        lambda: _scraped_since(prometheus, window_start, instances),
        timeout=10,
        what="a scrape of each replica inside the window",
    )

    _run(redis_url, BATCH_OK, BATCH_FAILED)
    _steady(prometheus, 'celery_task_failed_total{task="tests.fail"}', TOTAL_FAILED, 2)
    _steady(prometheus, 'celery_task_succeeded_total{task="tests.add"}', TOTAL_OK, 2)
    at_ms = round(_steady(prometheus, _received("tests.add"), TOTAL_OK, 2) * 1000)
    at = at_ms / 1000  # the queries' time, to the millisecond
    window_ms = math.ceil((at - window_start) * 1000)
    start_ms = at_ms - window_ms

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

    def stored(selector: str, window: str) -> list[promql_oracle.Series]:
        return promql_oracle.parse(prometheus.query(f"{selector}[{window}]", at))

    def rises(series: list[promql_oracle.Series], label: str) -> dict[tuple[str, str], float]:
        assert all(one.resets() == 0 for one in series), series
        return {(one.labels[label], one.labels["instance"]): one.rise() for one in series}

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

    batch = {
        "received": {"tests.add": BATCH_OK, "tests.fail": BATCH_FAILED},
        "succeeded": {"tests.add": BATCH_OK},
        "failed": {"tests.fail": BATCH_FAILED},
    }
    windowed: dict[str, list[promql_oracle.Series]] = {}
    for state, counts in batch.items():
        metric = f"celery_task_{state}_total"
        windowed[state] = series = stored(metric, f"{window_ms}ms")
        # What the window holds: on each replica, exactly the batch of each registered task.
        assert rises(series, "task") == {
            (name, instance): counts.get(name, 0)
            for name in REGISTERED_TASKS
            for instance in instances
        }, state
        # The panel reads what increase() extrapolates of it on one replica, not their sum...
        title = f"Tasks {state} (time range)"
        expected = promql_oracle.folded_increase(series, start_ms, end_ms=at_ms, by=None)
        assert prometheus.values(tasks_query(title), at) == pytest.approx(expected, rel=1e-9)
        # ...and the same window without the fold reads both replicas.
        both = sum(promql_oracle.increase(one.points, start_ms, at_ms) or 0.0 for one in series)
        control = prometheus.values(f"sum(increase({metric}[{window_ms}ms]))", at)[""]
        assert control == pytest.approx(both, rel=1e-9)
        assert control > 1.5 * expected[""]

    [failed], [succeeded] = (
        promql_oracle.folded_increase(windowed[state], start_ms, at_ms, None).values()
        for state in ("failed", "succeeded")
    )
    ratio = prometheus.values(tasks_query("Failure ratio (time range)"), at)[""]
    assert ratio == pytest.approx(failed / (failed + succeeded), rel=1e-9)

    per_task = tasks.per_task_columns()
    columns_by_state = (("Received", "received"), ("Failed", "failed"), ("Succeeded", "succeeded"))
    for title, state in columns_by_state:
        found = prometheus.values(over_window(_column(per_task, title, variables)), at, "task")
        assert set(found) == set(REGISTERED_TASKS), title
        expected = promql_oracle.folded_increase(windowed[state], start_ms, at_ms, by="task")
        assert found == pytest.approx(expected, rel=1e-9), title

    # -- the recording rules' expressions: every task since the greeting, once -----------------
    recording = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load((RULES / "celery-recording.rules.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    idle = dict.fromkeys(REGISTERED_TASKS, 0)
    # The 5m window holds the whole history: every series from 0, the warm-up's steps included.
    expectations = {
        ("task:celery_task_received:rate5m", "task"): {
            **idle, "tests.add": TOTAL_OK, "tests.fail": TOTAL_FAILED,
        },
        ("task:celery_task_succeeded:rate5m", "task"): {**idle, "tests.add": TOTAL_OK},
        ("task:celery_task_failed:rate5m", "task"): {**idle, "tests.fail": TOTAL_FAILED},
        ("worker:celery_task_received:rate5m", "worker"): {WORKER: TOTAL_OK + TOTAL_FAILED},
        ("worker:celery_task_failed:rate5m", "worker"): {WORKER: TOTAL_FAILED},
        ("worker:celery_task_succeeded:rate5m", "worker"): {WORKER: TOTAL_OK},
    }  # fmt: skip
    rules_start_ms = at_ms - RULES_WINDOW * 1000
    for (name, label), counts in expectations.items():
        selector = recording[name].split("rate(")[1].split("[5m]")[0]
        series = stored(selector, "5m")
        assert rises(series, label) == {
            (key, instance): count for key, count in counts.items() for instance in instances
        }, name
        rates = promql_oracle.folded_increase(series, rules_start_ms, at_ms, by=label)
        expected = {key: value / RULES_WINDOW for key, value in rates.items()}
        assert prometheus.values(recording[name], at, label) == pytest.approx(expected, rel=1e-9)
    undeduplicated = prometheus.values(
        "sum by (worker) (rate(celery_task_received_total[5m]))", at, "worker"
    )
    both = sum(
        promql_oracle.increase(one.points, rules_start_ms, at_ms) or 0.0
        for one in stored("celery_task_received_total", "5m")
    )
    assert undeduplicated == pytest.approx({WORKER: both / RULES_WINDOW}, rel=1e-9)
