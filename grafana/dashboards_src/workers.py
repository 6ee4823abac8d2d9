"""The Workers dashboard: Flower's Dashboard tab, one table row per worker."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common, dashboard

from celery_events_exporter.config import Config
from celery_events_exporter.events import vocabulary as v
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition import promql as q

from . import history_sql
from . import panels as p

WORKER_VAR = "worker"
_FLT: q.Filter = {m.WORKER: f"${WORKER_VAR}"}
_BY_WORKER = [m.WORKER]

# Flower's Workers columns, in its order. Flower prints the three load averages in one cell
# ("0.19, 0.08, 0.08"); Grafana's documented transformations cannot join numbers into one text
# cell, so the three figures sit in adjacent columns (see grafana/README.md).
WORKER_NAME = "Worker Name"
STATUS = "Status"
ACTIVE = "Active"
PROCESSED = "Processed"
FAILED = "Failed"
SUCCEEDED = "Succeeded"
RETRIED = "Retried"
LOAD_1 = "Load Average (1 min)"
LOAD_5 = "Load Average (5 min)"
LOAD_15 = "Load Average (15 min)"
# After Flower's columns: what Flower shows in its worker page, not in the table.
PREFETCHED = "Prefetched"
OFFLINE_SINCE = "Offline since"

# Overload is active / concurrency (the pool size the exporter asks with inspect stats): yellow
# from 80 % of the pool busy, red when every slot is taken and new tasks wait.
POOL_BUSY = 0.8
POOL_FULL = 1.0

TABLE_TITLE = "Workers"


def _online() -> str:
    return _gauge_by_worker(m.WORKER_ONLINE)


def _gauge_by_worker(spec: m.MetricSpec) -> str:
    return q.by("max", _BY_WORKER, q.fleet_gauge(spec, _FLT))


def _state_filter(event: str) -> q.Filter:
    return {**_FLT, m.STATE: m.TASK_STATE_WORDS[event]}


def _counter_total_by_worker(event: str) -> str:
    """A task state's count per worker, from celery_worker_tasks_total: the task counters
    lose their worker label with --no-worker-label, this family keeps it in both modes."""
    summed = q.by("sum", _BY_WORKER, q.fleet_total(m.WORKER_TASKS, _state_filter(event)))
    return q.zero_filled(summed, _online())


def _worker_change(event: str, fn: str, window: str) -> str:
    return q.fleet_counter_change(m.WORKER_TASKS, _state_filter(event), fn, window)


def table_columns() -> list[tuple[str, str]]:
    """(column title, instant PromQL) after the Worker Name column, in Flower's order."""
    return [
        (STATUS, _online()),
        (ACTIVE, _gauge_by_worker(m.WORKER_ACTIVE_TASKS)),
        (PROCESSED, _counter_total_by_worker(v.TASK_RECEIVED)),
        (FAILED, _counter_total_by_worker(v.TASK_FAILED)),
        (SUCCEEDED, _counter_total_by_worker(v.TASK_SUCCEEDED)),
        (RETRIED, _counter_total_by_worker(v.TASK_RETRIED)),
        (LOAD_1, _gauge_by_worker(m.WORKER_LOAD1)),
        (LOAD_5, _gauge_by_worker(m.WORKER_LOAD5)),
        (LOAD_15, _gauge_by_worker(m.WORKER_LOAD15)),
        (PREFETCHED, _gauge_by_worker(m.WORKER_PREFETCHED_TASKS)),
        (OFFLINE_SINCE, _offline_since()),
    ]


def _offline_since() -> str:
    """When an offline worker was last heard (its last heartbeat, in ms for Grafana's time
    units); no value while it is online."""
    heard = q.by("max", _BY_WORKER, f"1000 * {q.fleet_gauge(m.WORKER_LAST_HEARTBEAT, _FLT)}")
    return f"{heard} and on ({m.WORKER}) ({_online()} == 0)"


def purge_note() -> str:
    """How long an offline worker stays listed: the exporter's purge delays (their defaults)."""
    defaults = Config()
    return (
        "An offline worker stays listed, with the time it was last heard under Offline since, "
        "until the exporter drops its series: "
        f"{defaults.purge_stopped_worker_after:g} s after a clean stop "
        "(--purge-stopped-worker-after), "
        f"{defaults.purge_offline_worker_after:g} s after it fell silent "
        "(--purge-offline-worker-after), by default."
    )


def _status_mappings() -> list[dashboard.ValueMapping]:
    return [
        dashboard.ValueMap(
            options={
                "1": dashboard.ValueMappingResult(text="Online", color=p.GREEN, index=0),
                "0": dashboard.ValueMappingResult(text="Offline", color=p.RED, index=1),
            }
        )
    ]


def _pool_levels() -> dashboard_builders.ThresholdsConfig:
    return p.thresholds(p.GREEN, (POOL_BUSY, p.YELLOW), (POOL_FULL, p.RED))


def _utilisation() -> str:
    """Active tasks over pool size, per worker: 1 means every pool slot is busy."""
    return q.ratio(_gauge_by_worker(m.WORKER_ACTIVE_TASKS), _gauge_by_worker(m.WORKER_CONCURRENCY))


def _workers_table() -> table.Panel:
    panel = p.merged_table_panel(
        TABLE_TITLE,
        "One row per Celery worker, as on Flower's Dashboard tab. Status comes from heartbeats "
        "(Celery's rule: online while one arrived within 2 x its interval). Processed counts "
        "tasks received, Failed/Succeeded/Retried count task events, all since the exporter "
        "started. Load Average is the worker host's 1/5/15-minute load. How full each worker's "
        "pool is (Active / concurrency) is charted below the table. Filter with the Worker "
        "variable (regex); a worker's name opens its worker page. " + purge_note(),
        [(m.WORKER, WORKER_NAME)],
        table_columns(),
        sort_by=WORKER_NAME,
        sort_desc=False,
        height=10,
    )
    panel = p.override(
        panel,
        STATUS,
        {
            "mappings": _status_mappings(),
            "custom.cellOptions": common.TableColorTextCellOptions(),
            "unit": "none",
        },
    )
    for load in (LOAD_1, LOAD_5, LOAD_15):
        panel = p.override(panel, load, {"decimals": 2, "unit": "none"})
    panel = p.override(panel, OFFLINE_SINCE, {"unit": "dateTimeAsIso"})
    return p.override(
        panel,
        WORKER_NAME,
        {
            "links": [
                {
                    "title": "Show only this worker",
                    "url": "/d/${__dashboard.uid}?var-worker=${__value.raw}&${__url_time_range}"
                    "&${datasource:queryparam}",
                },
                history_sql.worker_page_link(p.DATASOURCE_VAR, carry_history=False),
            ]
        },
    )


def _stats() -> list[stat.Panel]:
    online = q.fleet_gauge(m.WORKER_ONLINE, _FLT)
    active = q.fleet_gauge(m.WORKER_ACTIVE_TASKS, _FLT)
    failure_ratio = q.outcome_ratio(
        _worker_change(v.TASK_FAILED, "increase", p.RANGE_WINDOW),
        _worker_change(v.TASK_SUCCEEDED, "increase", p.RANGE_WINDOW),
        [],
    )
    return [
        p.stat_panel(
            "Workers online",
            "Workers whose heartbeats arrive (celery_worker_online = 1).",
            f"count({online} == 1) or vector(0)",
            "short",
            p.thresholds(p.RED, (1, p.GREEN)),
            width=4,
        ),
        p.stat_panel(
            "Workers offline",
            "Workers the exporter has seen that stopped sending heartbeats or said goodbye "
            "(celery_worker_online = 0).",
            f"count({online} == 0) or vector(0)",
            "short",
            p.thresholds(p.GREEN, (1, p.RED)),
            width=4,
        ),
        p.stat_panel(
            "Tasks active",
            "Tasks executing right now on the selected workers, from their last heartbeats.",
            f"sum({active}) or vector(0)",
            "short",
            p.thresholds(p.GREEN),
            width=5,
        ),
        p.stat_panel(
            "Busiest pool",
            "The fullest worker pool among the selected workers: its active tasks over its "
            "concurrency. At 100 % new tasks wait for a free slot.",
            f"max({_utilisation()})",
            "percentunit",
            _pool_levels(),
            no_value="pool size unknown",
            width=5,
        ),
        p.stat_panel(
            "Failure ratio (time range)",
            "Failed / (failed + succeeded) tasks on the selected workers over the dashboard's "
            "time range. Empty when no task finished.",
            failure_ratio,
            "percentunit",
            p.failure_ratio_levels(),
            no_value="no finished task",
        ),
    ]


def _trends() -> list[timeseries.Panel]:
    active = _gauge_by_worker(m.WORKER_ACTIVE_TASKS)
    rate_targets = []
    for ref, event in enumerate((v.TASK_RECEIVED, v.TASK_SUCCEEDED, v.TASK_FAILED, v.TASK_RETRIED)):
        state = event.removeprefix("task-")
        expr = q.by("sum", _BY_WORKER, _worker_change(event, "rate", p.RATE_WINDOW))
        rate_targets.append(p.query(expr, p.ref_letter(ref), "{{worker}} " + state))
    load_targets = [
        p.query(_gauge_by_worker(spec), p.ref_letter(ref), "{{worker}} " + window)
        for ref, (spec, window) in enumerate(
            ((m.WORKER_LOAD1, "1m"), (m.WORKER_LOAD5, "5m"), (m.WORKER_LOAD15, "15m"))
        )
    ]
    return [
        p.timeseries_panel(
            "Active tasks per worker",
            "Tasks each worker is executing (heartbeat 'active').",
            [p.query(active, "A", "{{worker}}")],
            "short",
            width=12,
        ),
        p.timeseries_panel(
            "Pool utilisation per worker",
            "Active tasks over the worker's concurrency (celery_worker_concurrency, from inspect "
            "stats). The dashed lines mark 80 % and 100 %: a pool that stays full is overloaded.",
            [p.query(_utilisation(), "A", "{{worker}}")],
            "percentunit",
            width=12,
            colors=_pool_levels(),
        ),
        p.timeseries_panel(
            "Task rate by state per worker",
            "Tasks per second each worker received, finished successfully, failed or retried.",
            rate_targets,
            "ops",
            width=12,
        ),
        p.timeseries_panel(
            "Load average per worker",
            "1, 5 and 15-minute load average of each worker's host, from its heartbeats.",
            load_targets,
            "none",
            width=12,
        ),
        p.timeseries_panel(
            "Prefetched tasks per worker",
            "Tasks each worker received and has not started yet (reserved): they wait behind "
            "its running tasks while other workers may be idle.",
            [p.query(_gauge_by_worker(m.WORKER_PREFETCHED_TASKS), "A", "{{worker}}")],
            "short",
            width=12,
        ),
        p.timeseries_panel(
            "Tasks orphaned per worker",
            "Started tasks lost with a worker that went offline without a goodbye (SIGKILL, "
            "OOM, a lost node), per task, over the rate window; the Tasks view lists them as "
            "LOST.",
            [
                p.query(
                    q.by(
                        "sum",
                        [m.TASK, m.WORKER],
                        q.fleet_counter_change(m.TASK_ORPHANED, _FLT, "increase", p.RATE_WINDOW),
                    ),
                    "A",
                    "{{worker}} {{task}}",
                )
            ],
            "short",
            width=12,
        ),
    ]


def build() -> dashboard_builders.Dashboard:
    board = p.dashboard_shell(
        p.WORKERS_UID,
        "Celery / Workers",
        "Flower's Dashboard tab rebuilt on celery-events-exporter metrics.",
        p.TASKS_UID,
        "Celery / Tasks",
    ).with_variable(
        p.regex_textbox(
            WORKER_VAR,
            "Worker (regex)",
            "Show workers whose full name matches this regex, e.g. celery@web.* (Flower's "
            "search box).",
        )
    )
    for panel in _stats():
        board = board.with_panel(panel)
    board = board.with_panel(_workers_table())
    board = board.with_row(dashboard_builders.Row("Per-worker trends"))
    for trend in _trends():
        board = board.with_panel(trend)
    return board
