"""Every tunable of the rules: thresholds, windows, ``for:`` durations, the selector.

``prometheus/generate_rules.py`` turns each field into a command-line option; the field defaults
make the committed rule files. The dashboards colour their panels at the same thresholds
(``DEFAULTS``), so a panel turns red where the alert fires.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from celery_events_exporter.exposition import promql as q

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

    selector: str = field(
        default="",
        metadata=_help(
            "Label matchers added to every exporter series the rules read, e.g. "
            "'cluster=\"eu\"' or 'job=\"celery-events-exporter\"' (the monitoring-mixins "
            "convention); empty reads them wherever Prometheus has them, as the dashboards do."
        ),
    )
    job: str = field(
        default="celery-events-exporter",
        metadata=_help(
            "Prometheus scrape job of the exporter (as in prometheus.yml), for the one series "
            "that is not the exporter's: up (CeleryExporterDown, CeleryNoWorkerOnline). "
            "Unused when the selector constrains job itself."
        ),
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
        q.parse_selector(self.selector)
        if not self.job or any(char in self.job for char in '"\\\n'):
            raise ValueError(f"job must be a plain label value: {self.job!r}")
        if self.failure_ratio_threshold >= 1:
            raise ValueError("failure_ratio_threshold is a fraction below 1")


DEFAULTS = Settings()
"""The settings of the committed rule files (and of the dashboards' alert thresholds)."""


def num(value: float) -> str:
    """A threshold as PromQL and humans read it: 10 not 10.0, 0.1 not 0.1000000001."""
    return f"{value:g}"


def up(settings: Settings) -> str:
    """Prometheus' ``up`` of the exporter's targets.

    ``up`` exists for every target Prometheus scrapes: unlike the exporter's own series it needs
    the scrape job to mean "the exporter". ``--job`` names it, unless the selector (which
    ``render`` adds to ``up`` as to every series) constrains ``job`` itself.
    """
    if "job" in q.selector_labels(settings.selector):
        return q.UP
    return f'{q.UP}{{job="{settings.job}"}}'
