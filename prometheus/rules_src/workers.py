"""Per worker: the recorded task rates, and the alerts on liveness and lost or uncounted tasks."""

from __future__ import annotations

from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

from .settings import Settings, up
from .spec import WORKER_LABEL, Alert, Group, Record, expr, rate_record


def records(s: Settings) -> tuple[Record, ...]:
    # From celery_worker_tasks_total, which keeps the worker label with --no-worker-label too
    # (the task counters then lose it); the records keep their names.
    per_worker = metrics.WORKER_TASKS
    q.require_label(per_worker, WORKER_LABEL)
    state_label = q.require_label(per_worker, metrics.STATE)
    return tuple(
        Record(
            rate_record(WORKER_LABEL, spec, s.rate_window),
            q.by(
                "sum",
                [WORKER_LABEL],
                q.fleet_counter_change(
                    per_worker,
                    {state_label: metrics.TASK_STATE_WORDS[event_type]},
                    "rate",
                    s.rate_window,
                ),
            ),
        )
        for event_type, spec in metrics.TASK_STATE_COUNTERS.items()
    )


def alerts(s: Settings) -> tuple[Alert, ...]:
    online = q.gauge(metrics.WORKER_ONLINE)
    connected = q.gauge(metrics.EXPORTER_BROKER_CONNECTED)
    uncounted = q.gauge(metrics.WORKER_UNCOUNTED_TASKS)
    orphaned = q.counter(metrics.TASK_ORPHANED)
    orphaned_by = f"job, {q.require_label(metrics.TASK_ORPHANED, metrics.TASK)}, {WORKER_LABEL}"
    orphaned_change = q.fleet_counter_change(
        metrics.TASK_ORPHANED, q.NO_FILTER, "increase", s.orphaned_window
    )
    return (
        Alert(
            "CeleryWorkerOffline",
            # Offline only when no exporter of the job sees the worker online: the replicas'
            # maximum, so one replica that lost the broker (and with it the heartbeats) does not
            # page while another still hears the worker. With every exporter off the broker no
            # heartbeat can arrive at all; that is CeleryBrokerDisconnected's alert.
            # A worker that said goodbye (worker-offline: a planned stop, a deploy, a scale-in)
            # is not an outage: only the vanished page.
            expr(
                f"{q.fleet_gauge(metrics.WORKER_ONLINE)} == 0",
                f"unless on (job, {WORKER_LABEL})",
                f"{q.fleet_gauge(metrics.WORKER_SHUTDOWN_CLEAN)} == 1",
                "unless on (job)",
                f"max by (job) ({connected}) == 0",
            ),
            s.worker_offline_for,
            "warning",
            "Celery worker {{ $labels.worker }} is offline",
            "No heartbeat from {{ $labels.worker }} has reached any exporter of job "
            f"{{{{ $labels.job }}}} for {s.worker_offline_for}, and it sent no worker-offline: "
            "it was killed, crashed, or lost its broker connection.",
        ),
        Alert(
            "CeleryWorkerTasksUncounted",
            # Above 0 for a while and still growing: the worker runs tasks whose events do not
            # arrive (a difference that stopped growing is history, not an ongoing loss).
            # Folded first, then taken over time (subqueries): one series per worker.
            expr(
                f"delta(({q.one_replica(uncounted)})[{s.uncounted_window}:]) > 0",
                "and",
                f"min_over_time(({q.one_replica(uncounted)})[{s.uncounted_for}:]) > 0",
            ),
            s.uncounted_for,
            "warning",
            "Celery worker {{ $labels.worker }} runs tasks the exporter does not count",
            'About {{ $value | printf "%.0f" }} more tasks in the last '
            f"{s.uncounted_window} were started by {{{{ $labels.worker }}}} (its heartbeats' "
            "processed count) than task-started events reached the exporter: its task events "
            "are off or lost, and every task metric undercounts it.",
        ),
        Alert(
            "CeleryNoWorkerOnline",
            # Also true when the exporter is up but has never seen a worker (no series at all).
            expr(
                f"max by (job) ({up(s)}) == 1",
                "unless on (job)",
                f"max by (job) ({q.one_replica(online)}) == 1",
                "unless on (job)",
                f"max by (job) ({connected}) == 0",
            ),
            s.no_worker_for,
            "critical",
            "No Celery worker is online",
            "The exporter of job {{ $labels.job }} is up and hears the broker, but no worker has "
            f"sent a heartbeat for {s.no_worker_for}: no task is being executed.",
        ),
        Alert(
            "CeleryTasksOrphaned",
            # A task's first orphan creates its series at 1, which increase() cannot see: the
            # `unless offset` arm catches series that appeared within the window.
            expr(
                f"sum by ({orphaned_by}) ({orphaned_change}) > 0",
                "or",
                f"sum by ({orphaned_by}) (",
                f"  {q.one_replica(orphaned)}",
                f"  unless {q.one_replica(f'{orphaned} offset {s.orphaned_window}')}",
                ") > 0",
            ),
            "0s",
            "warning",
            "Celery worker {{ $labels.worker }} lost started {{ $labels.task }} tasks",
            '{{ $value | printf "%.0f" }} started run(s) of {{ $labels.task }} never finished: '
            "{{ $labels.worker }} went offline without a goodbye in the last "
            f"{s.orphaned_window} (killed, out of memory, or its node was lost).",
        ),
    )


def group(s: Settings) -> Group:
    return Group("workers", records(s), alerts(s))
