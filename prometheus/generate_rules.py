"""Generate the Prometheus recording and alerting rules for celery-events-exporter.

Every threshold is a command-line option, so a deployment tunes them here and regenerates, rather
than hand-editing YAML that would drift from this source. Metric names come from the exporter's
catalogue (``celery_events_exporter.exposition.catalogue``): renaming a metric there breaks
generation (or the
rule tests), not a rule in production.

    python prometheus/generate_rules.py                      # rewrite prometheus/rules/*.yml
    python prometheus/generate_rules.py --failure-ratio-threshold 0.2 --output-dir /tmp/rules
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celery_events_exporter.events import vocabulary
from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

RECORDING_FILE = "celery-recording.rules.yml"
ALERTS_FILE = "celery-alerts.rules.yml"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "rules"

_DURATION = re.compile(r"^(?:[0-9]+[ywdhms])+$")
_DURATION_PART = re.compile(r"([0-9]+)([ywdhms])")
_UNIT_SECONDS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def duration_seconds(text: str) -> int:
    """Seconds in a Prometheus duration such as ``5m`` or ``1h30m`` (milliseconds unsupported)."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a Prometheus duration like 30s, 5m or 1h30m: {text!r}")
    seconds = sum(int(count) * _UNIT_SECONDS[unit] for count, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    """Every tunable of the rules; the field defaults produce the committed rule files."""

    job: str = field(
        default="celery-events-exporter",
        metadata=_help("Prometheus scrape job name of the exporter (as in prometheus.yml)."),
    )
    rate_window: str = field(
        default="5m",
        metadata=_help(
            "Range of the recorded per-task rates, failure ratio and latency quantiles; "
            "the failure-ratio and queue-wait alerts judge this window."
        ),
    )
    failure_ratio_threshold: float = field(
        default=0.1,
        metadata=_help(
            "CeleryTaskFailureRatioHigh fires when failed / (succeeded + failed) of a task over "
            "the rate window exceeds this fraction (0.1 = 10%%)."
        ),
    )
    failure_min_tasks: float = field(
        default=10,
        metadata=_help(
            "Minimum traffic guard: CeleryTaskFailureRatioHigh needs at least this many finished "
            "(succeeded + failed) runs of the task within the rate window."
        ),
    )
    failure_for: str = field(
        default="5m",
        metadata=_help("How long the failure ratio must stay high before the alert fires."),
    )
    worker_offline_for: str = field(
        default="2m",
        metadata=_help("How long celery_worker_online must stay 0 before CeleryWorkerOffline."),
    )
    uncounted_window: str = field(
        default="15m",
        metadata=_help(
            "Window in which celery_worker_uncounted_tasks must have grown for "
            "CeleryWorkerTasksUncounted."
        ),
    )
    uncounted_for: str = field(
        default="5m",
        metadata=_help(
            "How long a worker's uncounted tasks must stay above 0 (and growing within the "
            "window) before CeleryWorkerTasksUncounted fires."
        ),
    )
    no_worker_for: str = field(
        default="2m",
        metadata=_help("How long no worker may be online before CeleryNoWorkerOnline fires."),
    )
    exporter_down_for: str = field(
        default="2m",
        metadata=_help("How long the exporter may be unscraped before CeleryExporterDown."),
    )
    broker_disconnected_for: str = field(
        default="1m",
        metadata=_help("How long the exporter may be off the broker before the alert fires."),
    )
    rejected_window: str = field(
        default="10m",
        metadata=_help("Window in which CeleryEventsRejected counts rejected events."),
    )
    silent_workers_for: str = field(
        default="5m",
        metadata=_help(
            "How long workers may answer broadcasts unheard before CeleryWorkersSilent."
        ),
    )
    dropped_window: str = field(
        default="10m",
        metadata=_help(
            "Window in which CeleryExporterDroppingEvents counts dropped messages and "
            "CeleryExporterConnectionLost lost connections."
        ),
    )
    label_overflow_window: str = field(
        default="10m",
        metadata=_help(
            "Window in which CeleryExporterLabelOverflow counts label values folded or cut."
        ),
    )
    rejected_threshold: float = field(
        default=0,
        metadata=_help(
            "CeleryEventsRejected fires when more than this many events were rejected, per "
            "reason, within the rejected-events window (0: any rejected event)."
        ),
    )
    intake_lag_threshold: float = field(
        default=5,
        metadata=_help(
            "CeleryExporterFallingBehind fires when celery_exporter_intake_lag_seconds exceeds "
            "this many seconds (RabbitMQ drops events older than 5 s by default)."
        ),
    )
    intake_lag_for: str = field(
        default="2m",
        metadata=_help("How long the intake lag must stay high before the alert fires."),
    )
    queue_wait_threshold: float = field(
        default=60,
        metadata=_help(
            "CeleryTaskQueueWaitHigh fires when a task's p95 queue wait (received to started) "
            "over the rate window exceeds this many seconds."
        ),
    )
    queue_wait_min_tasks: float = field(
        default=5,
        metadata=_help(
            "Minimum traffic guard: CeleryTaskQueueWaitHigh needs at least this many started "
            "runs of the task within the rate window."
        ),
    )
    queue_wait_for: str = field(
        default="10m",
        metadata=_help("How long the p95 queue wait must stay high before the alert fires."),
    )
    queue_backlog_threshold: float = field(
        default=1000,
        metadata=_help(
            "CeleryQueueBacklogHigh fires when more than this many messages wait in one queue "
            "(celery_queue_length)."
        ),
    )
    queue_backlog_for: str = field(
        default="10m",
        metadata=_help("How long a queue's backlog must stay high before the alert fires."),
    )
    queue_no_consumer_for: str = field(
        default="5m",
        metadata=_help(
            "How long messages may wait in a queue that nothing consumes before "
            "CeleryQueueNoConsumer fires."
        ),
    )
    queue_oldest_task_threshold: float = field(
        default=600,
        metadata=_help(
            "CeleryQueueOldestTaskOld fires when the oldest task waiting in a queue "
            "(celery_queue_oldest_task_age_seconds) has waited longer than this many seconds."
        ),
    )
    queue_oldest_task_for: str = field(
        default="2m",
        metadata=_help("How long the oldest waiting task must stay too old before the alert."),
    )
    orphaned_window: str = field(
        default="15m",
        metadata=_help("Window in which CeleryTasksOrphaned counts orphaned tasks."),
    )
    runbook_base_url: str = field(
        default=(
            "https://github.com/celery-events-exporter/celery-events-exporter/blob/main/docs/"
            "runbook.md"
        ),
        metadata=_help("Runbook document; each alert links to #<lowercase alert name> in it."),
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith(("_window", "_for")):
                duration_seconds(value)
            elif isinstance(value, float | int) and value < 0:
                raise ValueError(f"{item.name} must not be negative: {value}")
        if not self.job or any(char in self.job for char in '"\\\n'):
            raise ValueError(f"job must be a plain label value: {self.job!r}")
        if self.failure_ratio_threshold >= 1:
            raise ValueError("failure_ratio_threshold is a fraction below 1")


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


@dataclass(frozen=True)
class AlertRule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def _num(value: float) -> str:
    """A threshold as PromQL and humans read it: 10 not 10.0, 0.1 not 0.1000000001."""
    return f"{value:g}"


def _expr(*lines: str) -> str:
    """A PromQL expression written one clause per line, as the rule files show it."""
    return "\n".join(lines)


FAILED = metrics.TASK_STATE_COUNTERS[vocabulary.TASK_FAILED]
SUCCEEDED = metrics.TASK_STATE_COUNTERS[vocabulary.TASK_SUCCEEDED]
TASK_LABEL = q.require_label(FAILED, metrics.TASK)
WORKER_LABEL = q.require_label(metrics.WORKER_ONLINE, metrics.WORKER)
QUANTILES = (0.5, 0.95, 0.99)


def rate_record(level: str, spec: metrics.MetricSpec, window: str) -> str:
    """``level:family:rate<window>``; the ``_total`` suffix goes, as Prometheus' naming advises."""
    return f"{level}:{spec.name}:rate{window}"


def completed_record(window: str) -> str:
    return f"{TASK_LABEL}:celery_task_completed:rate{window}"


def failure_ratio_record(window: str) -> str:
    return f"{TASK_LABEL}:celery_task_failure_ratio:rate{window}"


def quantile_record(spec: metrics.MetricSpec, quantile: float, window: str) -> str:
    return f"{TASK_LABEL}:{spec.name}:p{round(quantile * 100)}_rate{window}"


def observations_record(spec: metrics.MetricSpec, window: str) -> str:
    return f"{TASK_LABEL}:{q.histogram_part(spec, 'count')}:rate{window}"


def recording_rules(settings: Settings) -> list[RecordingRule]:
    window = settings.rate_window
    rules: list[RecordingRule] = []
    for spec in metrics.TASK_STATE_COUNTERS.values():
        q.require_label(spec, TASK_LABEL)
        rules.append(
            RecordingRule(
                rate_record(TASK_LABEL, spec, window),
                q.by(
                    "sum", [TASK_LABEL], q.fleet_counter_change(spec, q.NO_FILTER, "rate", window)
                ),
            )
        )
    # Per worker from celery_worker_tasks_total, which keeps the worker label with
    # --no-worker-label too (the task counters then lose it); the records keep their names.
    per_worker = metrics.WORKER_TASKS
    q.require_label(per_worker, WORKER_LABEL)
    state_label = q.require_label(per_worker, metrics.STATE)
    for event_type, spec in metrics.TASK_STATE_COUNTERS.items():
        state = {state_label: metrics.TASK_STATE_WORDS[event_type]}
        rules.append(
            RecordingRule(
                rate_record(WORKER_LABEL, spec, window),
                q.by(
                    "sum", [WORKER_LABEL], q.fleet_counter_change(per_worker, state, "rate", window)
                ),
            )
        )

    failed = rate_record(TASK_LABEL, FAILED, window)
    succeeded = rate_record(TASK_LABEL, SUCCEEDED, window)
    # A task that only ever failed (or only succeeded) has no series for the other outcome, and
    # plain `+` would drop it; the `or` arms keep such tasks, which matter most.
    rules.append(
        RecordingRule(
            completed_record(window),
            _expr(f"({succeeded} + {failed})", f"or {succeeded}", f"or {failed}"),
        )
    )
    completed = completed_record(window)
    # Rates over a window, never lifetime counters: a task that used to be fine and now fails
    # every run must show a high ratio. Idle tasks (no completions) get no ratio instead of NaN.
    rules.append(
        RecordingRule(
            failure_ratio_record(window),
            _expr(f"({failed} or {completed} * 0)", "/", f"({completed} > 0)"),
        )
    )

    for spec in (metrics.TASK_QUEUE_WAIT, metrics.TASK_RUNTIME):
        q.require_label(spec, TASK_LABEL)
        for quantile in QUANTILES:
            rules.append(
                RecordingRule(
                    quantile_record(spec, quantile, window),
                    q.quantile(quantile, spec, q.NO_FILTER, [TASK_LABEL], "rate", window),
                )
            )
        rules.append(
            RecordingRule(
                observations_record(spec, window),
                q.by(
                    "sum",
                    [TASK_LABEL],
                    q.fleet_change(
                        q.histogram_part(spec, "count"), spec, q.NO_FILTER, "rate", window
                    ),
                ),
            )
        )
    return rules


def alert_rules(settings: Settings) -> list[AlertRule]:
    s = settings
    window = s.rate_window
    window_seconds = duration_seconds(window)
    job = f'job="{s.job}"'
    online = q.gauge(metrics.WORKER_ONLINE)
    connected = q.gauge(metrics.EXPORTER_BROKER_CONNECTED)
    rejected = q.counter(metrics.EXPORTER_EVENTS_REJECTED)
    reason = q.require_label(metrics.EXPORTER_EVENTS_REJECTED, "reason")
    lag = q.gauge(metrics.EXPORTER_INTAKE_LAG)
    dropped = q.counter(metrics.EXPORTER_EVENTS_DROPPED)
    silent = q.gauge(metrics.EXPORTER_SILENT_WORKERS)
    lost_connections = q.counter(metrics.EXPORTER_BROKER_CONNECTIONS_LOST)
    uncounted = q.gauge(metrics.WORKER_UNCOUNTED_TASKS)
    drop_reason = q.require_label(metrics.EXPORTER_EVENTS_DROPPED, "reason")
    history_dropped = q.counter(metrics.EXPORTER_TASK_HISTORY_DROPPED)
    history_reason = q.require_label(metrics.EXPORTER_TASK_HISTORY_DROPPED, "reason")
    overflow = q.counter(metrics.EXPORTER_LABEL_OVERFLOW)
    overflow_by = ", ".join(
        q.require_label(metrics.EXPORTER_LABEL_OVERFLOW, label) for label in ("label", "reason")
    )
    queue_label = q.require_label(metrics.QUEUE_LENGTH, metrics.QUEUE)
    length = q.fleet_gauge(metrics.QUEUE_LENGTH)
    consumers = q.fleet_gauge(metrics.QUEUE_CONSUMERS)
    oldest = q.fleet_gauge(metrics.QUEUE_OLDEST_TASK_AGE)
    orphaned = q.counter(metrics.TASK_ORPHANED)
    orphaned_by = f"job, {q.require_label(metrics.TASK_ORPHANED, metrics.TASK)}, {WORKER_LABEL}"
    orphaned_change = q.fleet_counter_change(
        metrics.TASK_ORPHANED, q.NO_FILTER, "increase", s.orphaned_window
    )
    wait_p95 = quantile_record(metrics.TASK_QUEUE_WAIT, 0.95, window)
    wait_count = observations_record(metrics.TASK_QUEUE_WAIT, window)
    percent = f"{_num(s.failure_ratio_threshold * 100)}%"

    return [
        AlertRule(
            "CeleryTaskFailureRatioHigh",
            _expr(
                f"{failure_ratio_record(window)} > {_num(s.failure_ratio_threshold)}",
                f"and on ({TASK_LABEL})",
                f"{completed_record(window)} * {window_seconds} >= {_num(s.failure_min_tasks)}",
            ),
            s.failure_for,
            "warning",
            "Celery task {{ $labels.task }} fails {{ $value | humanizePercentage }} of its runs",
            f"Over the last {window}, {{{{ $value | humanizePercentage }}}} of the finished runs "
            f"of {{{{ $labels.task }}}} failed (threshold {percent}, judged only with at least "
            f"{_num(s.failure_min_tasks)} finished runs in the window).",
        ),
        AlertRule(
            "CeleryWorkerOffline",
            # Offline only when no exporter of the job sees the worker online: the replicas'
            # maximum, so one replica that lost the broker (and with it the heartbeats) does not
            # page while another still hears the worker. With every exporter off the broker no
            # heartbeat can arrive at all; that is CeleryBrokerDisconnected's alert.
            # A worker that said goodbye (worker-offline: a planned stop, a deploy, a scale-in)
            # is not an outage: only the vanished page.
            _expr(
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
        AlertRule(
            "CeleryWorkerTasksUncounted",
            # Above 0 for a while and still growing: the worker runs tasks whose events do not
            # arrive (a difference that stopped growing is history, not an ongoing loss).
            # Folded first, then taken over time (subqueries): one series per worker.
            _expr(
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
        AlertRule(
            "CeleryNoWorkerOnline",
            # Also true when the exporter is up but has never seen a worker (no series at all).
            _expr(
                f"max by (job) (up{{{job}}}) == 1",
                "unless on (job)",
                f"max by (job) ({q.one_replica(f'{online}{{{job}}}')}) == 1",
                "unless on (job)",
                f"max by (job) ({connected}{{{job}}}) == 0",
            ),
            s.no_worker_for,
            "critical",
            "No Celery worker is online",
            "The exporter of job {{ $labels.job }} is up and hears the broker, but no worker has "
            f"sent a heartbeat for {s.no_worker_for}: no task is being executed.",
        ),
        AlertRule(
            "CeleryExporterDown",
            _expr(f"up{{{job}}} == 0", "or", f"absent(up{{{job}}})"),
            s.exporter_down_for,
            "critical",
            "Celery events exporter is down",
            "{{ if $labels.instance }}Prometheus has failed to scrape {{ $labels.instance }} "
            "(job {{ $labels.job }}){{ else }}Prometheus has no target for job {{ $labels.job }}"
            f"{{{{ end }}}} for {s.exporter_down_for}: Celery metrics are stale and every other "
            "Celery alert is blind.",
        ),
        AlertRule(
            "CeleryBrokerDisconnected",
            f"{connected} == 0",
            s.broker_disconnected_for,
            "critical",
            "Celery events exporter {{ $labels.instance }} is disconnected from the broker",
            f"The exporter has not been consuming events for {s.broker_disconnected_for}: no "
            "task is counted and worker liveness is unknown.",
        ),
        AlertRule(
            "CeleryEventsRejected",
            # increase() cannot see the first sample of a series, and the exporter may create a
            # reason's series only at its first rejection: the `unless offset` arm catches
            # series that appeared within the window.
            _expr(
                f"sum by (job, instance, {reason}) (increase({rejected}[{s.rejected_window}]))"
                f" > {_num(s.rejected_threshold)}",
                "or",
                f"sum by (job, instance, {reason}) (",
                f"  {rejected}",
                f"  unless {rejected} offset {s.rejected_window}",
                f") > {_num(s.rejected_threshold)}",
            ),
            "0s",
            "warning",
            "Celery events exporter {{ $labels.instance }} rejects events ({{ $labels.reason }})",
            '{{ $value | printf "%.0f" }} messages or events were rejected for reason '
            f"{{{{ $labels.reason }}}} in the last {s.rejected_window}: they are missing from "
            "every Celery metric.",
        ),
        AlertRule(
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
        AlertRule(
            "CeleryWorkersSilent",
            f"{silent} > 0",
            s.silent_workers_for,
            "warning",
            "Celery workers answer exporter {{ $labels.instance }} but send it no events",
            '{{ $value | printf "%.0f" }} workers answer the exporter\'s inspect broadcasts, yet '
            f"for {s.silent_workers_for} none of their events (heartbeats included) reached it: "
            "they publish to another event exchange than the exporter reads, and go uncounted.",
        ),
        AlertRule(
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
        AlertRule(
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
        AlertRule(
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
        AlertRule(
            "CeleryExporterFallingBehind",
            f"{lag} > {_num(s.intake_lag_threshold)}",
            s.intake_lag_for,
            "warning",
            "Celery events exporter {{ $labels.instance }} is falling behind the event stream",
            "The oldest event message waiting in the exporter is "
            "{{ $value | humanizeDuration }} old (threshold "
            f"{_num(s.intake_lag_threshold)}s): metrics lag reality, and the broker may drop "
            "events the exporter reads too late.",
        ),
        AlertRule(
            "CeleryTaskQueueWaitHigh",
            _expr(
                f"{wait_p95} > {_num(s.queue_wait_threshold)}",
                f"and on ({TASK_LABEL})",
                f"{wait_count} * {window_seconds} >= {_num(s.queue_wait_min_tasks)}",
            ),
            s.queue_wait_for,
            "warning",
            "Celery task {{ $labels.task }} waits {{ $value | humanizeDuration }} to start (p95)",
            f"Over the last {window}, 5% of the runs of {{{{ $labels.task }}}} waited longer "
            "than {{ $value | humanizeDuration }} between reaching a worker and starting "
            f"(threshold {_num(s.queue_wait_threshold)}s): workers are saturated or busy with "
            "other queues.",
        ),
        AlertRule(
            "CeleryQueueBacklogHigh",
            f"{length} > {_num(s.queue_backlog_threshold)}",
            s.queue_backlog_for,
            "warning",
            "{{ $value }} messages wait in Celery queue {{ $labels.queue }}",
            f"More than {_num(s.queue_backlog_threshold)} messages have waited in queue "
            f"{{{{ $labels.queue }}}} for {s.queue_backlog_for}: tasks arrive faster than the "
            "workers consume them.",
        ),
        AlertRule(
            "CeleryQueueNoConsumer",
            _expr(f"{length} > 0", f"and on (job, {queue_label})", f"{consumers} == 0"),
            s.queue_no_consumer_for,
            "critical",
            "Nothing consumes Celery queue {{ $labels.queue }}, where messages wait",
            f"Messages have waited in queue {{{{ $labels.queue }}}} for {s.queue_no_consumer_for} "
            "while no consumer (no online worker) reads it: those tasks will not run.",
        ),
        AlertRule(
            "CeleryQueueOldestTaskOld",
            f"{oldest} > {_num(s.queue_oldest_task_threshold)}",
            s.queue_oldest_task_for,
            "warning",
            "The oldest task in Celery queue {{ $labels.queue }} has waited "
            "{{ $value | humanizeDuration }}",
            "A task sent to queue {{ $labels.queue }} has waited {{ $value | humanizeDuration }} "
            f"for a worker (threshold {_num(s.queue_oldest_task_threshold)}s): the queue is "
            "stuck or its workers are too few.",
        ),
        AlertRule(
            "CeleryTasksOrphaned",
            # A task's first orphan creates its series at 1, which increase() cannot see: the
            # `unless offset` arm catches series that appeared within the window.
            _expr(
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
    ]


# Folded annotation lines split template actions like "{{ $labels.task\n }}": valid, but unreadable.
_NO_FOLDING = 10_000


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line expressions, so the committed files read like PromQL."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _setting(value: object) -> str:
    # Defaults are ints where the command line gives floats; both must render alike.
    return _num(value) if isinstance(value, float | int) else str(value)


def _header(settings: Settings) -> str:
    lines = [
        "# Generated by prometheus/generate_rules.py: change its options and rerun it,",
        "# do not edit this file. Settings:",
    ]
    lines += [f"#   {item.name} = {_setting(getattr(settings, item.name))}" for item in _fields()]
    return "\n".join(lines) + "\n"


def _dump(settings: Settings, groups: list[dict[str, Any]]) -> str:
    body = yaml.dump(
        {"groups": groups}, Dumper=_Dumper, sort_keys=False, width=_NO_FOLDING, allow_unicode=True
    )
    return _header(settings) + body


def render(settings: Settings) -> dict[str, str]:
    """File name -> content of both rule files."""
    recording = [{"record": r.record, "expr": r.expr} for r in recording_rules(settings)]
    alerts = [
        {
            "alert": a.alert,
            "expr": a.expr,
            "for": a.for_,
            "labels": {"severity": a.severity},
            "annotations": {
                "summary": a.summary,
                "description": a.description,
                "runbook_url": f"{settings.runbook_base_url}#{a.alert.lower()}",
            },
        }
        for a in alert_rules(settings)
    ]
    return {
        RECORDING_FILE: _dump(
            settings, [{"name": "celery-events-exporter.recording", "rules": recording}]
        ),
        ALERTS_FILE: _dump(settings, [{"name": "celery-events-exporter.alerts", "rules": alerts}]),
    }


def _fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(Settings)
    for item in _fields():
        kind = hints[item.name]
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=float if kind is float else str,
            default=item.default,
            help=item.metadata["help"],
        )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="Directory that receives the two rule files.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings(**{item.name: getattr(args, item.name) for item in _fields()})
    except ValueError as error:
        parser.error(str(error))
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, content in render(settings).items():
        (output_dir / name).write_text(content, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
