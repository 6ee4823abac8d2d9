"""The Queues dashboard: Flower's Broker tab (one table row per queue), then how the queues move."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import stat, table, timeseries

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition import promql as q

from . import panels as p

QUEUE_VAR = "queue"
_FLT: q.Filter = {m.QUEUE: f"${QUEUE_VAR}"}
_BY_QUEUE = [m.QUEUE]

# Flower's Broker columns, in its order, then what Flower cannot tell.
NAME = "Name"
MESSAGES = "Messages"
UNACKED = "Unacked"
READY = "Ready"
CONSUMERS = "Consumers"
OLDEST = "Oldest waiting"

TABLE_TITLE = "Broker"

UNACKED_NO_VALUE = "none on Redis; RabbitMQ: needs the management API"
UNACKED_ONLY_WITH_MANAGEMENT = (
    "Empty on Redis, always: kombu keeps every queue's unacknowledged deliveries in one "
    "'unacked' hash, not per queue, so no per-queue count exists. Empty on RabbitMQ too unless "
    "the exporter runs with --rabbitmq-management-url: AMQP's passive queue.declare counts "
    "ready messages only, and the unacked count comes from the management API "
    "(docs/queues.md)."
)
"""Why the unacked figures can have no data, said where they are shown."""


def _by_queue(spec: m.MetricSpec) -> str:
    return q.by("max", _BY_QUEUE, q.fleet_gauge(spec, _FLT))


def _ready() -> str:
    return _by_queue(m.QUEUE_LENGTH)


def _unacked() -> str:
    return _by_queue(m.QUEUE_UNACKED)


def _messages() -> str:
    """Ready plus unacked, as RabbitMQ's "messages"; just ready where unacked is unknown (Redis,
    or RabbitMQ without the management API)."""
    ready = q.fleet_gauge(m.QUEUE_LENGTH, _FLT)
    unacked = q.fleet_gauge(m.QUEUE_UNACKED, _FLT)
    return f"{q.by('max', _BY_QUEUE, f'{ready} + {unacked}')} or {_ready()}"


def table_columns() -> list[tuple[str, str]]:
    """(column title, instant PromQL) after the Name column, in Flower's order."""
    return [
        (MESSAGES, _messages()),
        (UNACKED, _unacked()),
        (READY, _ready()),
        (CONSUMERS, _by_queue(m.QUEUE_CONSUMERS)),
        (OLDEST, _by_queue(m.QUEUE_OLDEST_TASK_AGE)),
    ]


def _broker_table() -> table.Panel:
    panel = p.merged_table_panel(
        TABLE_TITLE,
        "One row per broker queue, as on Flower's Broker tab, from the exporter's polls. Ready "
        "is what waits for a worker (Redis: every priority list of the queue); Unacked is what "
        "workers hold and have not acknowledged (empty on Redis, and on RabbitMQ without "
        "--rabbitmq-management-url: see the Unacked messages panel); Messages is both. "
        "Consumers: RabbitMQ's count, or on Redis the online workers that consume the queue. "
        "Oldest waiting: how long the oldest task sent to the queue has waited for a worker "
        "(needs task-sent events; empty when none is known to wait). Filter with the Queue "
        "variable (regex) or the column filters.",
        [(m.QUEUE, NAME)],
        table_columns(),
        sort_by=MESSAGES,
        sort_desc=True,
        height=10,
    )
    return p.override(panel, OLDEST, {"unit": "s", "decimals": 0})


def _stats() -> list[stat.Panel]:
    ready = q.fleet_gauge(m.QUEUE_LENGTH, _FLT)
    consumers = q.fleet_gauge(m.QUEUE_CONSUMERS, _FLT)
    return [
        p.stat_panel(
            "Messages waiting",
            "Messages ready in the selected queues, summed (celery_queue_length).",
            f"sum({ready}) or vector(0)",
            "short",
            p.thresholds(p.GREEN),
        ),
        p.stat_panel(
            "Queues nobody consumes",
            "Selected queues where messages wait and no consumer reads them: those tasks do not "
            "run (the CeleryQueueNoConsumer alert).",
            f"count({ready} > 0 and on ({m.QUEUE}, job) {consumers} == 0) or vector(0)",
            "short",
            p.thresholds(p.GREEN, (1, p.RED)),
        ),
        p.stat_panel(
            "Oldest waiting task",
            "The longest any task sent to the selected queues has waited for a worker, from "
            "task-sent events (celery_queue_oldest_task_age_seconds).",
            f"max({q.fleet_gauge(m.QUEUE_OLDEST_TASK_AGE, _FLT)})",
            "s",
            p.oldest_waiting_levels(),
            no_value="nothing known to wait",
        ),
        p.stat_panel(
            "Unacked messages",
            "Messages workers hold and have not acknowledged in the selected queues (prefetched, "
            f"or running with acks_late). {UNACKED_ONLY_WITH_MANAGEMENT}",
            f"sum({q.fleet_gauge(m.QUEUE_UNACKED, _FLT)})",
            "short",
            p.thresholds(p.GREEN),
            no_value=UNACKED_NO_VALUE,
        ),
    ]


def _trends() -> list[timeseries.Panel]:
    sent = q.by("sum", _BY_QUEUE, q.fleet_counter_change(m.TASK_SENT, _FLT, "rate", p.RATE_WINDOW))
    slope = q.by("sum", _BY_QUEUE, q.fleet_gauge_slope(m.QUEUE_LENGTH, _FLT, p.RATE_WINDOW))
    return [
        p.timeseries_panel(
            "Queue length",
            "Messages ready in each queue, as polled (celery_queue_length).",
            [p.query(_ready(), "A", "{{queue}}")],
            "short",
            width=12,
        ),
        p.timeseries_panel(
            "Oldest waiting task per queue",
            "How long the oldest task sent to each queue has waited for a worker; a line that "
            "keeps rising is a stuck queue. The red line is where the CeleryQueueOldestTaskOld "
            "alert fires.",
            [p.query(_by_queue(m.QUEUE_OLDEST_TASK_AGE), "A", "{{queue}}")],
            "s",
            width=12,
            colors=p.oldest_waiting_levels(),
        ),
        p.timeseries_panel(
            "In and out per queue",
            "In: tasks sent to the queue per second (task-sent events, from clients with "
            "task_send_sent_event = True). Out: messages taken from it per second, the sent rate "
            "minus how fast the length grows. Out above in drains the queue; in above out "
            "builds a backlog.",
            [
                p.query(sent, "A", "{{queue}} in (sent)"),
                p.query(f"{sent} - {slope}", "B", "{{queue}} out (taken)"),
            ],
            "ops",
            width=24,
        ),
    ]


def build() -> dashboard_builders.Dashboard:
    board = p.dashboard_shell(
        p.QUEUES_UID,
        "Celery / Queues",
        "Flower's Broker tab rebuilt on celery-events-exporter metrics: what waits in each broker "
        "queue, what workers hold, who consumes it, and for how long the oldest task has waited.",
        p.WORKERS_UID,
        "Celery / Workers",
    ).with_variable(
        p.regex_textbox(
            QUEUE_VAR,
            "Queue (regex)",
            "Show queues whose name matches this regex, e.g. celery|reports.* (a search box).",
        )
    )
    for panel in _stats():
        board = board.with_panel(panel)
    board = board.with_panel(_broker_table())
    board = board.with_row(dashboard_builders.Row("Over time"))
    for trend in _trends():
        board = board.with_panel(trend)
    return board
