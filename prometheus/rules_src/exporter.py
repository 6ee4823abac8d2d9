"""The exporter itself: scraped, on the broker, keeping up, losing nothing it should count."""

from __future__ import annotations

from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

from .settings import Settings, num, up
from .spec import Alert, Group, expr


def alerts(s: Settings) -> tuple[Alert, ...]:
    exporter_up = up(s)
    connected = q.gauge(metrics.EXPORTER_BROKER_CONNECTED)
    rejected = q.counter(metrics.EXPORTER_EVENTS_REJECTED)
    reason = q.require_label(metrics.EXPORTER_EVENTS_REJECTED, "reason")
    lag = q.gauge(metrics.EXPORTER_INTAKE_LAG)
    dropped = q.counter(metrics.EXPORTER_EVENTS_DROPPED)
    drop_reason = q.require_label(metrics.EXPORTER_EVENTS_DROPPED, "reason")
    silent = q.gauge(metrics.EXPORTER_SILENT_WORKERS)
    lost_connections = q.counter(metrics.EXPORTER_BROKER_CONNECTIONS_LOST)
    overflow = q.counter(metrics.EXPORTER_LABEL_OVERFLOW)
    history_dropped = q.counter(metrics.EXPORTER_TASK_HISTORY_DROPPED)
    history_reason = q.require_label(metrics.EXPORTER_TASK_HISTORY_DROPPED, "reason")
    overflow_by = ", ".join(
        q.require_label(metrics.EXPORTER_LABEL_OVERFLOW, label) for label in ("label", "reason")
    )
    return (
        Alert(
            "CeleryExporterDown",
            expr(f"{exporter_up} == 0", "or", f"absent({exporter_up})"),
            s.exporter_down_for,
            "critical",
            "Celery events exporter is down",
            "{{ if $labels.instance }}Prometheus has failed to scrape {{ $labels.instance }} "
            "(job {{ $labels.job }}){{ else }}Prometheus has no target for job {{ $labels.job }}"
            f"{{{{ end }}}} for {s.exporter_down_for}: Celery metrics are stale and every other "
            "Celery alert is blind.",
        ),
        Alert(
            "CeleryBrokerDisconnected",
            f"{connected} == 0",
            s.broker_disconnected_for,
            "critical",
            "Celery events exporter {{ $labels.instance }} is disconnected from the broker",
            f"The exporter has not been consuming events for {s.broker_disconnected_for}: no "
            "task is counted and worker liveness is unknown.",
        ),
        Alert(
            "CeleryEventsRejected",
            # increase() cannot see the first sample of a series, and the exporter may create a
            # reason's series only at its first rejection: the `unless offset` arm catches
            # series that appeared within the window.
            expr(
                f"sum by (job, instance, {reason}) (increase({rejected}[{s.rejected_window}]))"
                f" > {num(s.rejected_threshold)}",
                "or",
                f"sum by (job, instance, {reason}) (",
                f"  {rejected}",
                f"  unless {rejected} offset {s.rejected_window}",
                f") > {num(s.rejected_threshold)}",
            ),
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} rejects events ({{ $labels.reason }})",
            '{{ $value | printf "%.0f" }} messages or events were rejected for reason '
            f"{{{{ $labels.reason }}}} in the last {s.rejected_window}: they are missing from "
            "every Celery metric.",
        ),
        Alert(
            "CeleryExporterConnectionLost",
            # Exported at 0 from the start: increase() sees the first loss.
            f"sum by (job, instance) (increase({lost_connections}[{s.dropped_window}])) > 0",
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} lost its broker connection",
            '{{ $value | printf "%.0f" }} established broker connections were lost in the last '
            f"{s.dropped_window}: events published until each reconnection are missing from every "
            "Celery metric.",
        ),
        Alert(
            "CeleryWorkersSilent",
            f"{silent} > 0",
            s.silent_workers_for,
            "warning",
            "Celery workers answer exporter {{ $labels.instance }} but send it no events",
            '{{ $value | printf "%.0f" }} workers answer the exporter\'s inspect broadcasts, yet '
            f"for {s.silent_workers_for} none of their events (heartbeats included) reached it: "
            "they publish to another event exchange than the exporter reads, and go uncounted.",
        ),
        Alert(
            "CeleryExporterDroppingEvents",
            # The exporter exports each reason at 0 from its start: increase() sees the first.
            f"sum by (job, instance, {drop_reason}) (increase({dropped}[{s.dropped_window}])) > 0",
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} drops events ({{ $labels.reason }})",
            '{{ $value | printf "%.0f" }} broker messages (up to 24 events each) were dropped '
            f"unread for reason {{{{ $labels.reason }}}} in the last {s.dropped_window}: "
            "the event stream outran the exporter and they are missing from every Celery metric.",
        ),
        Alert(
            "CeleryTaskHistoryDropping",
            # The exporter exports each reason at 0 from its start: increase() sees the first.
            f"sum by (job, instance, {history_reason}) "
            f"(increase({history_dropped}[{s.dropped_window}])) > 0",
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} drops task history "
            "({{ $labels.reason }})",
            '{{ $value | printf "%.0f" }} task events or rows never reached the task history '
            f"database for reason {{{{ $labels.reason }}}} in the last {s.dropped_window}: "
            "the database is down, slow or refusing; the metrics are unaffected.",
        ),
        Alert(
            "CeleryExporterLabelOverflow",
            # Every (label, reason) is exported at 0 from the start: increase() sees the first.
            f"sum by (job, instance, {overflow_by}) "
            f"(increase({overflow}[{s.label_overflow_window}])) > 0",
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} folds or cuts {{ $labels.label }} "
            "label values ({{ $labels.reason }})",
            '{{ $value | printf "%.0f" }} events in the last '
            f"{s.label_overflow_window} had a {{{{ $labels.label }}}} value past a cap "
            '(reason "cap": counted as "other") or too long (reason "length": cut): those '
            "series are merged or renamed; raise the cap or shorten the values.",
        ),
        Alert(
            "CeleryExporterFallingBehind",
            f"{lag} > {num(s.intake_lag_threshold)}",
            s.intake_lag_for,
            "warning",
            "Celery events exporter {{ $labels.instance }} is falling behind the event stream",
            "The oldest event message waiting in the exporter is "
            "{{ $value | humanizeDuration }} old (threshold "
            f"{num(s.intake_lag_threshold)}s): metrics lag reality, and the broker may drop "
            "events the exporter reads too late.",
        ),
    )


def group(s: Settings) -> Group:
    return Group("exporter", alerts=alerts(s))
