"""The Tasks dashboard: Flower's Tasks tab, aggregated per task name."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common

from celery_events_exporter.events import vocabulary as v
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition import promql as q

from . import history_sql, history_table, recent_tasks
from . import panels as p

TASK_VAR = "task"
_FLT: q.Filter = {m.TASK: f"${TASK_VAR}"}
_BY_TASK = [m.TASK]

NAME = "Name"
RECENT_TASKS_ROW = "Recent tasks"
HISTORY_ROW = "Task history (PostgreSQL)"

# Event type -> the state word an operator knows from Flower, in the lifecycle's order.
STATES: tuple[tuple[str, str], ...] = tuple(
    (event, event.removeprefix("task-").capitalize()) for event in v.TASK_STATE_EVENTS
)
QUANTILES: tuple[tuple[float, str], ...] = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))

_FAILED = m.TASK_STATE_COUNTERS[v.TASK_FAILED]
_SUCCEEDED = m.TASK_STATE_COUNTERS[v.TASK_SUCCEEDED]
_RECEIVED = m.TASK_STATE_COUNTERS[v.TASK_RECEIVED]


def _increase(spec: m.MetricSpec) -> str:
    return q.fleet_counter_change(spec, _FLT, "increase", p.RANGE_WINDOW)


def _increase_by_task(spec: m.MetricSpec) -> str:
    return q.by("sum", _BY_TASK, _increase(spec))


def _rate_by_task(spec: m.MetricSpec) -> str:
    return q.by("sum", _BY_TASK, q.fleet_counter_change(spec, _FLT, "rate", p.RATE_WINDOW))


def _histogram_sum_over_count(spec: m.MetricSpec, fn: str, window: str) -> str:
    def part(name: str) -> str:
        change = q.fleet_change(q.histogram_part(spec, name), spec, _FLT, fn, window)
        return q.by("sum", _BY_TASK, change)

    return q.ratio(part("sum"), part("count"))


def _stats() -> list[stat.Panel]:
    def total(spec: m.MetricSpec) -> str:
        return f"sum({_increase(spec)}) or vector(0)"

    return [
        p.stat_panel(
            "Tasks received (time range)",
            "Tasks workers received over the dashboard's time range (retries count again).",
            total(_RECEIVED),
            "short",
            p.thresholds(p.GREEN),
        ),
        p.stat_panel(
            "Tasks succeeded (time range)",
            "Tasks that ended in SUCCESS over the dashboard's time range.",
            total(_SUCCEEDED),
            "short",
            p.thresholds(p.GREEN),
        ),
        p.stat_panel(
            "Tasks failed (time range)",
            "Tasks that ended in FAILURE over the dashboard's time range.",
            total(_FAILED),
            "short",
            p.thresholds(p.GREEN, (1, p.RED)),
        ),
        p.stat_panel(
            "Failure ratio (time range)",
            "Failed / (failed + succeeded) over the dashboard's time range, for the selected "
            "task names. Empty when no task finished.",
            q.failure_ratio(_FAILED, _SUCCEEDED, _FLT, [], "increase", p.RANGE_WINDOW),
            "percentunit",
            p.failure_ratio_levels(),
            no_value="no finished task",
        ),
    ]


def per_task_columns() -> list[tuple[str, str]]:
    """(column title, instant PromQL) of the per-name table, after the Name column."""
    received = _increase_by_task(_RECEIVED)
    # Every task is received before anything else happens to it, so Received decides which names
    # get a row and the other states read 0 for those names instead of a blank cell.
    columns = [
        (
            state,
            received if spec is _RECEIVED else q.zero_filled(_increase_by_task(spec), received),
        )
        for event, state in STATES
        for spec in [m.TASK_STATE_COUNTERS[event]]
    ]
    columns.append(
        (
            "Failure ratio",
            q.failure_ratio(_FAILED, _SUCCEEDED, _FLT, _BY_TASK, "increase", p.RANGE_WINDOW),
        )
    )
    columns += [
        (
            f"Runtime {label}",
            q.quantile(quantile, m.TASK_RUNTIME, _FLT, _BY_TASK, "increase", p.RANGE_WINDOW),
        )
        for quantile, label in QUANTILES
    ]
    columns.append(
        (
            "Queue wait p95",
            q.quantile(0.95, m.TASK_QUEUE_WAIT, _FLT, _BY_TASK, "increase", p.RANGE_WINDOW),
        )
    )
    return columns


def _per_task_table() -> table.Panel:
    panel = p.merged_table_panel(
        "Tasks by name (time range)",
        "One row per task name over the dashboard's time range: how many tasks reached each "
        "state, the failure ratio, the runtime quantiles (worker-measured) and the p95 wait "
        "between a worker receiving a task and starting it. Flower lists single tasks; "
        "Prometheus keeps aggregates per name. Counts are Prometheus increase() estimates.",
        [(m.TASK, NAME)],
        per_task_columns(),
        sort_by="Received",
        sort_desc=True,
    )
    for _, state in STATES:
        panel = p.override(panel, state, {"decimals": 0})
    panel = p.override(
        panel,
        "Failure ratio",
        {
            "unit": "percentunit",
            "thresholds": p.failure_ratio_levels().build(),
            "custom.cellOptions": common.TableColorTextCellOptions(),
        },
    )
    for column in [f"Runtime {label}" for _, label in QUANTILES] + ["Queue wait p95"]:
        panel = p.override(panel, column, {"unit": "s"})
    return _name_link(panel)


def _name_link(panel: table.Panel) -> table.Panel:
    return p.override(
        panel,
        NAME,
        {
            "links": [
                {
                    "title": "Show only this task",
                    "url": "/d/${__dashboard.uid}?var-task=${__value.raw}&${__url_time_range}"
                    "&${datasource:queryparam}",
                }
            ]
        },
    )


def _slowest_table() -> table.Panel:
    columns = [
        (
            "Runtime p95",
            q.quantile(0.95, m.TASK_RUNTIME, _FLT, _BY_TASK, "increase", p.RANGE_WINDOW),
        ),
        ("Runtime average", _histogram_sum_over_count(m.TASK_RUNTIME, "increase", p.RANGE_WINDOW)),
        (
            "Runtime p99",
            q.quantile(0.99, m.TASK_RUNTIME, _FLT, _BY_TASK, "increase", p.RANGE_WINDOW),
        ),
        (
            "Executions",
            q.by(
                "sum",
                _BY_TASK,
                q.fleet_change(
                    q.histogram_part(m.TASK_RUNTIME, "count"),
                    m.TASK_RUNTIME,
                    _FLT,
                    "increase",
                    p.RANGE_WINDOW,
                ),
            ),
        ),
    ]
    panel = p.merged_table_panel(
        "Slowest tasks (time range)",
        "Task names ordered by p95 runtime over the dashboard's time range: Flower's tip to use "
        "the Runtime column to find tasks that need optimisation. Runtime is what the worker "
        "measured for successful executions.",
        [(m.TASK, NAME)],
        columns,
        sort_by="Runtime p95",
        sort_desc=True,
        unit="s",
        height=9,
    )
    panel = p.override(panel, "Executions", {"unit": "short", "decimals": 0})
    return _name_link(panel)


def _exceptions_table() -> table.Panel:
    spec = m.TASK_EXCEPTIONS
    expr = q.by(
        "sum",
        [m.TASK, m.EXCEPTION],
        q.fleet_counter_change(spec, _FLT, "increase", p.RANGE_WINDOW),
    )
    panel = p.merged_table_panel(
        "Failures by exception class (time range)",
        "Failed tasks per task name and exception class over the dashboard's time range. "
        "Classes past the exporter's --max-exception-classes cap appear as 'other'.",
        [(m.TASK, NAME), (m.EXCEPTION, "Exception")],
        [("Failures", expr)],
        sort_by="Failures",
        sort_desc=True,
        height=8,
        width=8,
    )
    return p.override(panel, "Failures", {"decimals": 0})


def _state_rate_panels() -> list[timeseries.Panel]:
    return [
        p.timeseries_panel(
            f"{state} per second",
            f"Rate of {event} events per task name (tasks per second).",
            [p.query(_rate_by_task(m.TASK_STATE_COUNTERS[event]), "A", "{{task}}")],
            "ops",
            width=6,
        )
        for event, state in STATES
    ]


def _failure_panels() -> list[timeseries.Panel]:
    exceptions = q.by(
        "sum",
        [m.TASK, m.EXCEPTION],
        q.fleet_counter_change(m.TASK_EXCEPTIONS, _FLT, "rate", p.RATE_WINDOW),
    )
    return [
        p.timeseries_panel(
            "Failure ratio per task",
            "Failed / (failed + succeeded) per task name, over a sliding rate window. The red "
            "line is where the CeleryTaskFailureRatioHigh alert fires (over its own window, "
            "with a minimum of finished runs).",
            [
                p.query(
                    q.failure_ratio(_FAILED, _SUCCEEDED, _FLT, _BY_TASK, "rate", p.RATE_WINDOW),
                    "A",
                    "{{task}}",
                )
            ],
            "percentunit",
            colors=p.failure_ratio_levels(),
        ),
        p.timeseries_panel(
            "Failures by exception class",
            "Failures per second by task name and exception class.",
            [p.query(exceptions, "A", "{{task}}: {{exception}}")],
            "ops",
        ),
    ]


def _runtime_panels() -> list[timeseries.Panel]:
    panels = [
        p.timeseries_panel(
            f"Runtime {label} per task",
            f"{label} of the worker-measured runtime per task name, from the "
            "celery_task_runtime_seconds histogram over a sliding rate window.",
            [
                p.query(
                    q.quantile(quantile, m.TASK_RUNTIME, _FLT, _BY_TASK, "rate", p.RATE_WINDOW),
                    "A",
                    "{{task}}",
                )
            ],
            "s",
        )
        for quantile, label in QUANTILES
    ]
    panels.append(
        p.timeseries_panel(
            "Queue wait p95 per task",
            "p95 of the time between a worker receiving a task and starting it (both on the "
            "worker's clock): high values mean tasks wait for a free pool slot.",
            [
                p.query(
                    q.quantile(0.95, m.TASK_QUEUE_WAIT, _FLT, _BY_TASK, "rate", p.RATE_WINDOW),
                    "A",
                    "{{task}}",
                )
            ],
            "s",
            width=12,
        )
    )
    panels.append(
        p.timeseries_panel(
            "Average runtime per task",
            "Mean worker-measured runtime per task name over a sliding rate window.",
            [
                p.query(
                    _histogram_sum_over_count(m.TASK_RUNTIME, "rate", p.RATE_WINDOW),
                    "A",
                    "{{task}}",
                )
            ],
            "s",
            width=12,
        )
    )
    return panels


def build() -> dashboard_builders.Dashboard:
    board = p.dashboard_shell(
        p.TASKS_UID,
        "Celery / Tasks",
        "Flower's Tasks tab rebuilt on celery-events-exporter metrics, per task name.",
        p.WORKERS_UID,
        "Celery / Workers",
    ).with_variable(
        p.regex_textbox(
            TASK_VAR,
            "Task name (regex)",
            "Show task names matching this regex, e.g. blurit\\..* (Flower's search box).",
        )
    )
    board = board.with_variable(history_sql.datasource_variable())
    for variable in recent_tasks.variables():
        board = board.with_variable(variable)
    for panel in _stats():
        board = board.with_panel(panel)
    board = board.with_panel(_per_task_table())
    board = board.with_row(dashboard_builders.Row("Rates by state"))
    for rate_panel in _state_rate_panels():
        board = board.with_panel(rate_panel)
    board = board.with_row(dashboard_builders.Row("Failures"))
    failure_ratio_panel, exceptions_panel = _failure_panels()
    board = board.with_panel(failure_ratio_panel)
    board = board.with_panel(exceptions_panel)
    board = board.with_panel(_exceptions_table())
    board = board.with_row(dashboard_builders.Row("Runtime and queue wait"))
    for runtime_panel in _runtime_panels():
        board = board.with_panel(runtime_panel)
    board = board.with_panel(_slowest_table())
    board = board.with_row(dashboard_builders.Row(HISTORY_ROW))
    board = board.with_panel(history_table.panel())
    board = board.with_row(dashboard_builders.Row(RECENT_TASKS_ROW))
    return board.with_panel(recent_tasks.panel())
