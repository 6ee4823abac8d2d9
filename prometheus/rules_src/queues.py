"""Per broker queue: backlog, no consumer, the oldest waiting task."""

from __future__ import annotations

from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

from .settings import Settings, num
from .spec import Alert, Group, expr


def alerts(s: Settings) -> tuple[Alert, ...]:
    queue_label = q.require_label(metrics.QUEUE_LENGTH, metrics.QUEUE)
    length = q.fleet_gauge(metrics.QUEUE_LENGTH)
    consumers = q.fleet_gauge(metrics.QUEUE_CONSUMERS)
    oldest = q.fleet_gauge(metrics.QUEUE_OLDEST_TASK_AGE)
    return (
        Alert(
            "CeleryQueueBacklogHigh",
            f"{length} > {num(s.queue_backlog_threshold)}",
            s.queue_backlog_for,
            "warning",
            "{{ $value }} messages wait in Celery queue {{ $labels.queue }}",
            f"More than {num(s.queue_backlog_threshold)} messages have waited in queue "
            f"{{{{ $labels.queue }}}} for {s.queue_backlog_for}: tasks arrive faster than the "
            "workers consume them.",
        ),
        Alert(
            "CeleryQueueNoConsumer",
            expr(f"{length} > 0", f"and on (job, {queue_label})", f"{consumers} == 0"),
            s.queue_no_consumer_for,
            "critical",
            "Nothing consumes Celery queue {{ $labels.queue }}, where messages wait",
            f"Messages have waited in queue {{{{ $labels.queue }}}} for {s.queue_no_consumer_for} "
            "while no consumer (no online worker) reads it: those tasks will not run.",
        ),
        Alert(
            "CeleryQueueOldestTaskOld",
            f"{oldest} > {num(s.queue_oldest_task_threshold)}",
            s.queue_oldest_task_for,
            "warning",
            "The oldest task in Celery queue {{ $labels.queue }} has waited "
            "{{ $value | humanizeDuration }}",
            "A task sent to queue {{ $labels.queue }} has waited {{ $value | humanizeDuration }} "
            f"for a worker (threshold {num(s.queue_oldest_task_threshold)}s): the queue is "
            "stuck or its workers are too few.",
        ),
    )


def group(s: Settings) -> Group:
    return Group("queues", alerts=alerts(s))
