"""The rules as data: one frozen record per recording or alert rule, gathered in groups by
concern, and the series names the groups share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from celery_events_exporter.events import vocabulary
from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.exposition import promql as q

Severity = Literal["warning", "critical"]


@dataclass(frozen=True)
class Record:
    """A recording rule: the series ``name`` holds the value of ``expr``."""

    name: str
    expr: str


@dataclass(frozen=True)
class Alert:
    """An alert rule; it links to the runbook's section ``#<runbook_anchor>``."""

    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str

    @property
    def runbook_anchor(self) -> str:
        """The fragment GitHub gives the runbook's ``## <name>`` heading."""
        return self.name.lower()


@dataclass(frozen=True)
class Group:
    """The rules of one concern (workers, tasks, queues, the exporter itself): its records go
    to the recording file as group ``celery-<concern>.rules``, its alerts to the alerts file as
    ``celery-<concern>.alerts``."""

    concern: str
    records: tuple[Record, ...] = ()
    alerts: tuple[Alert, ...] = ()

    @property
    def recording_name(self) -> str:
        return f"celery-{self.concern}.rules"

    @property
    def alerts_name(self) -> str:
        return f"celery-{self.concern}.alerts"


def expr(*lines: str) -> str:
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
