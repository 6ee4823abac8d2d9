"""The worker page, ``Celery / Worker``: one worker, Flower's worker view on the metrics.

Variable ``worker`` (the worker's hostname; the Workers table's and the task tables' worker
cells link here). Status and heartbeats over time, active/processed/failed trends, load and
pool use from Prometheus; its latest tasks from the durable history.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import dashboard

from celery_events_exporter.events import vocabulary as v
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition import promql as q

from . import history_sql as h
from . import history_table
from . import panels as p
from .workers import POOL_BUSY, POOL_FULL

TITLE = "Celery / Worker"
WORKER_VAR = h.WORKER_PAGE_VAR
# The variable holds one hostname; its regex format escapes the dots of a hostname.
_FLT: q.Filter = {m.WORKER: f"${{{WORKER_VAR}:regex}}"}
RECENT_TASKS_TITLE = "Latest tasks of this worker"


def _gauge(spec: m.MetricSpec) -> str:
    return q.by("max", [m.WORKER], q.fleet_gauge(spec, _FLT))


def status_expr() -> str:
    """1 while the worker is online, 0 once offline."""
    return _gauge(m.WORKER_ONLINE)


def _pool_use() -> str:
    return q.ratio(_gauge(m.WORKER_ACTIVE_TASKS), _gauge(m.WORKER_CONCURRENCY))


def _heartbeat_age() -> str:
    return f"time() - {_gauge(m.WORKER_LAST_HEARTBEAT)}"


def _state_rate(event: str) -> str:
    flt = {**_FLT, m.STATE: m.TASK_STATE_WORDS[event]}
    return q.by(
        "sum", [m.WORKER], q.fleet_counter_change(m.WORKER_TASKS, flt, "rate", p.RATE_WINDOW)
    )


def _stats() -> list[stat.Panel]:
    status = p.stat_panel(
        "Status",
        "Online while its heartbeats arrive (Celery's rule: within 2 x the heartbeat "
        "interval); Offline after a goodbye (worker-offline) or silence.",
        _gauge(m.WORKER_ONLINE),
        "none",
        p.thresholds(p.RED, (1, p.GREEN)),
        no_value="unknown",
        width=4,
    ).mappings(
        [
            dashboard.ValueMap(
                options={
                    "0": dashboard.ValueMappingResult(text="Offline", color=p.RED, index=0),
                    "1": dashboard.ValueMappingResult(text="Online", color=p.GREEN, index=1),
                }
            )
        ]
    )
    return [
        status,
        p.stat_panel(
            "Since last heartbeat",
            "Seconds since the exporter received the worker's last heartbeat (every 2 s by "
            "default).",
            _heartbeat_age(),
            "s",
            p.thresholds(p.GREEN, (10, p.YELLOW), (60, p.RED)),
            no_value="never",
            width=5,
        ),
        p.stat_panel(
            "Active",
            "Tasks the worker is executing, from its last heartbeat.",
            _gauge(m.WORKER_ACTIVE_TASKS),
            "short",
            p.thresholds(p.GREEN),
            width=5,
        ),
        p.stat_panel(
            "Concurrency",
            "Processes or threads of its pool (max-concurrency, from inspect stats).",
            _gauge(m.WORKER_CONCURRENCY),
            "short",
            p.thresholds(p.GREEN),
            no_value="unknown",
            width=5,
        ),
        p.stat_panel(
            "Pool use",
            "Active tasks / concurrency: yellow from 80 %, red when every slot is busy.",
            _pool_use(),
            "percentunit",
            p.thresholds(p.GREEN, (POOL_BUSY, p.YELLOW), (POOL_FULL, p.RED)),
            no_value="unknown",
            width=5,
        ),
    ]


def _trends() -> list[timeseries.Panel]:
    return [
        p.timeseries_panel(
            "Online",
            "1 while the worker's heartbeats arrive, 0 once it is offline.",
            [p.query(_gauge(m.WORKER_ONLINE), "A", "online")],
            "none",
        ),
        p.timeseries_panel(
            "Heartbeats",
            "Seconds since the last heartbeat, and the interval the worker announces (freq): "
            "the age stays below twice the interval while the worker is online.",
            [
                p.query(_heartbeat_age(), "A", "since last heartbeat"),
                p.query(_gauge(m.WORKER_HEARTBEAT_INTERVAL), "B", "heartbeat interval"),
            ],
            "s",
        ),
        p.timeseries_panel(
            "Active, prefetched and pool",
            "Tasks executing, tasks received and not started (prefetched), and the pool size.",
            [
                p.query(_gauge(m.WORKER_ACTIVE_TASKS), "A", "active"),
                p.query(_gauge(m.WORKER_PREFETCHED_TASKS), "B", "prefetched"),
                p.query(_gauge(m.WORKER_CONCURRENCY), "C", "concurrency"),
            ],
            "short",
        ),
        p.timeseries_panel(
            "Processed (since the worker started)",
            "Tasks the worker accepted since it started, retries included, from its "
            "heartbeats (Flower's worker page); it restarts from 0 with the worker.",
            [
                p.query(
                    q.by("max", [m.WORKER], q.fleet_total(m.WORKER_PROCESSED, _FLT)),
                    "A",
                    "processed",
                )
            ],
            "short",
        ),
        p.timeseries_panel(
            "Tasks by state",
            "Task events per second from this worker: received (Flower's Processed), "
            "succeeded, failed, retried.",
            [
                p.query(_state_rate(event), p.ref_letter(i), m.TASK_STATE_WORDS[event])
                for i, event in enumerate(
                    (v.TASK_RECEIVED, v.TASK_SUCCEEDED, v.TASK_FAILED, v.TASK_RETRIED)
                )
            ],
            "ops",
        ),
        p.timeseries_panel(
            "Load average",
            "The worker host's load averages, from its heartbeats.",
            [
                p.query(_gauge(spec), p.ref_letter(i), label)
                for i, (spec, label) in enumerate(
                    (
                        (m.WORKER_LOAD1, "1 min"),
                        (m.WORKER_LOAD5, "5 min"),
                        (m.WORKER_LOAD15, "15 min"),
                    )
                )
            ],
            "short",
        ),
        p.timeseries_panel(
            "Pool use",
            "Active tasks / concurrency over time.",
            [p.query(_pool_use(), "A", "pool use")],
            "percentunit",
            colors=p.thresholds(p.GREEN, (POOL_BUSY, p.YELLOW), (POOL_FULL, p.RED)),
        ),
    ]


DETAILS_NOTE = (
    "From inspect, asked of online workers every --worker-details-interval (60 s by default; "
    "0 turns it off, and these panels stay empty)."
)


def _details_stats() -> list[stat.Panel]:
    return [
        p.stat_panel(
            "Pool processes",
            "Processes (or threads) the pool runs now. " + DETAILS_NOTE,
            _gauge(m.WORKER_POOL_PROCESSES),
            "short",
            p.thresholds(p.GREEN),
            no_value="unknown",
            width=6,
        ),
        p.stat_panel(
            "Prefetch count",
            "Messages the worker may hold unacknowledged (prefetch multiplier x concurrency, "
            "plus one per ETA task it holds). " + DETAILS_NOTE,
            _gauge(m.WORKER_PREFETCH_COUNT),
            "short",
            p.thresholds(p.GREEN),
            no_value="unknown",
            width=6,
        ),
        p.stat_panel(
            "Peak memory (main process)",
            "getrusage's maxrss of the worker's main process. " + DETAILS_NOTE,
            _gauge(m.WORKER_MAX_RSS_BYTES),
            "bytes",
            p.thresholds(p.GREEN),
            no_value="unknown",
            width=6,
        ),
        p.stat_panel(
            "Queues consumed",
            "How many queues the worker consumes (their names in the table below). " + DETAILS_NOTE,
            f"count({_gauge_by_queue()})",
            "short",
            p.thresholds(p.RED, (1, p.GREEN)),
            no_value="unknown",
            width=6,
        ),
    ]


def _gauge_by_queue() -> str:
    return q.by("max", [m.WORKER, m.QUEUE], q.fleet_gauge(m.WORKER_CONSUMED_QUEUE, _FLT))


def _cpu_panel() -> timeseries.Panel:
    return p.timeseries_panel(
        "CPU (main process)",
        "CPU seconds per second of the worker's main process, user and system (the slope of "
        "getrusage's utime and stime; pool children are not included). " + DETAILS_NOTE,
        [
            p.query(
                q.by("max", [m.WORKER], q.fleet_gauge_slope(spec, _FLT, p.RATE_WINDOW)),
                p.ref_letter(i),
                label,
            )
            for i, (spec, label) in enumerate(
                ((m.WORKER_CPU_USER_SECONDS, "user"), (m.WORKER_CPU_SYSTEM_SECONDS, "system"))
            )
        ],
        "percentunit",
        width=16,
    )


def _queues_table() -> table.Panel:
    return p.merged_table_panel(
        "Queues consumed",
        "The queues this worker consumes, from inspect active_queues (at most 20). "
        "Registered, reserved, scheduled and revoked tasks are listed by the exporter's "
        "/api/workers/<name>. " + DETAILS_NOTE,
        [(m.QUEUE, "Queue")],
        [("Consumed", _gauge_by_queue())],
        sort_by="Queue",
        sort_desc=False,
        height=8,
        width=8,
    )


def _recent_tasks() -> table.Panel:
    built = (
        table.Panel()
        .title(RECENT_TASKS_TITLE)
        .description(
            f"The worker's tasks from the durable history ({h.TABLE} on PostgreSQL), newest "
            f"first seen first, in the time range, at most {h.LIMIT}. A UUID opens its task "
            "page."
        )
        .datasource(h.DATASOURCE)
        .with_target(h.SqlQuery("A", h.worker_tasks_sql(WORKER_VAR)))
        .unit("short")
        .height(10)
        .span(24)
    )
    return history_table.style_task_columns(built)


def worker_variable() -> dashboard_builders.TextBoxVariable:
    return (
        dashboard_builders.TextBoxVariable(WORKER_VAR)
        .label("Worker")
        .description(
            "The worker's full hostname, e.g. celery@web-1 (the Workers table links here)."
        )
        .default_value("")
        .current(dashboard.VariableOption(selected=True, text="", value=""))
    )


def build() -> dashboard_builders.Dashboard:
    board = (
        p.dashboard_shell(
            h.WORKER_PAGE_UID,
            TITLE,
            "One Celery worker: Flower's worker page on celery-events-exporter metrics.",
            p.WORKERS_UID,
            "Celery / Workers",
        )
        .with_variable(h.datasource_variable())
        .with_variable(worker_variable())
    )
    for panel in _stats():
        board = board.with_panel(panel)
    for trend in _trends():
        board = board.with_panel(trend)
    board = board.with_row(dashboard_builders.Row("Pool, prefetch, resources and queues"))
    for panel in _details_stats():
        board = board.with_panel(panel)
    board = board.with_panel(_cpu_panel())
    board = board.with_panel(_queues_table())
    board = board.with_row(dashboard_builders.Row("Tasks"))
    return board.with_panel(_recent_tasks())
