"""Per task name: the recorded rates, outcomes and latency quantiles, and the alerts on them."""

from __future__ import annotations

from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

from .settings import Settings, duration_seconds, num
from .spec import (
    FAILED,
    QUANTILES,
    SUCCEEDED,
    TASK_LABEL,
    Alert,
    Group,
    Record,
    completed_record,
    expr,
    failure_ratio_record,
    observations_record,
    quantile_record,
    rate_record,
)


def records(s: Settings) -> tuple[Record, ...]:
    window = s.rate_window
    rates = tuple(
        Record(
            rate_record(q.require_label(spec, TASK_LABEL), spec, window),
            q.by("sum", [TASK_LABEL], q.fleet_counter_change(spec, q.NO_FILTER, "rate", window)),
        )
        for spec in metrics.TASK_STATE_COUNTERS.values()
    )
    failed = rate_record(TASK_LABEL, FAILED, window)
    succeeded = rate_record(TASK_LABEL, SUCCEEDED, window)
    completed = completed_record(window)
    outcomes = (
        # A task that only ever failed (or only succeeded) has no series for the other outcome,
        # and plain `+` would drop it; the `or` arms keep such tasks, which matter most.
        Record(completed, expr(f"({succeeded} + {failed})", f"or {succeeded}", f"or {failed}")),
        # Rates over a window, never lifetime counters: a task that used to be fine and now
        # fails every run must show a high ratio. Idle tasks (no completions) get no ratio
        # instead of NaN.
        Record(
            failure_ratio_record(window),
            expr(f"({failed} or {completed} * 0)", "/", f"({completed} > 0)"),
        ),
    )
    latencies: list[Record] = []
    for spec in (metrics.TASK_QUEUE_WAIT, metrics.TASK_RUNTIME):
        q.require_label(spec, TASK_LABEL)
        latencies += [
            Record(
                quantile_record(spec, quantile, window),
                q.quantile(quantile, spec, q.NO_FILTER, [TASK_LABEL], "rate", window),
            )
            for quantile in QUANTILES
        ]
        count = q.histogram_part(spec, "count")
        latencies.append(
            Record(
                observations_record(spec, window),
                q.by("sum", [TASK_LABEL], q.fleet_change(count, spec, q.NO_FILTER, "rate", window)),
            )
        )
    return (*rates, *outcomes, *latencies)


def alerts(s: Settings) -> tuple[Alert, ...]:
    window = s.rate_window
    window_seconds = duration_seconds(window)
    percent = f"{num(s.failure_ratio_threshold * 100)}%"
    wait_p95 = quantile_record(metrics.TASK_QUEUE_WAIT, 0.95, window)
    wait_count = observations_record(metrics.TASK_QUEUE_WAIT, window)
    return (
        Alert(
            "CeleryTaskFailureRatioHigh",
            expr(
                f"{failure_ratio_record(window)} > {num(s.failure_ratio_threshold)}",
                f"and on ({TASK_LABEL})",
                f"{completed_record(window)} * {window_seconds} >= {num(s.failure_min_tasks)}",
            ),
            s.failure_for,
            "warning",
            "Celery task {{ $labels.task }} fails {{ $value | humanizePercentage }} of its runs",
            f"Over the last {window}, {{{{ $value | humanizePercentage }}}} of the finished runs "
            f"of {{{{ $labels.task }}}} failed (threshold {percent}, judged only with at least "
            f"{num(s.failure_min_tasks)} finished runs in the window).",
        ),
        Alert(
            "CeleryTaskQueueWaitHigh",
            expr(
                f"{wait_p95} > {num(s.queue_wait_threshold)}",
                f"and on ({TASK_LABEL})",
                f"{wait_count} * {window_seconds} >= {num(s.queue_wait_min_tasks)}",
            ),
            s.queue_wait_for,
            "warning",
            "Celery task {{ $labels.task }} waits {{ $value | humanizeDuration }} to start (p95)",
            f"Over the last {window}, 5% of the runs of {{{{ $labels.task }}}} waited longer "
            "than {{ $value | humanizeDuration }} between reaching a worker and starting "
            f"(threshold {num(s.queue_wait_threshold)}s): workers are saturated or busy with "
            "other queues.",
        ),
    )


def group(s: Settings) -> Group:
    return Group("tasks", records(s), alerts(s))
