"""What the event stream has told us: task counts, runtime histograms and worker liveness.

``State`` (state.py) owns the lock; the ingest thread feeds it decoded events and readers get
copies. Inside: ``counting`` (the tables and the loop that fills them, once per event),
``ledger`` (one entry per task followed: its name, worker, queue, times and state, and the views
made of it: prefetched tasks, the oldest waiting task per queue, orphaned tasks), ``changes``
and ``feed`` (what subscribers of the state are handed after each batch), ``workers`` (worker
records and Celery's liveness rule), ``histogram``, ``snapshot`` (what readers get) and
``settings``.
"""

from celery_events_exporter.events.vocabulary import MAX_CUSTOM_EVENT_TYPES
from celery_events_exporter.state.changes import TaskChange, TaskChangeSink
from celery_events_exporter.state.counting import MAX_ENDED_NAMES, OTHER, UNKNOWN_TASK, Counts
from celery_events_exporter.state.histogram import Histogram
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import (
    QueueViews,
    Snapshot,
    TaskKey,
    WorkerRow,
    WorkerView,
)
from celery_events_exporter.state.state import DecodedMessage, State
from celery_events_exporter.state.workers import WorkerState

__all__ = [
    "MAX_CUSTOM_EVENT_TYPES",
    "MAX_ENDED_NAMES",
    "OTHER",
    "UNKNOWN_TASK",
    "Counts",
    "DecodedMessage",
    "Histogram",
    "QueueViews",
    "Snapshot",
    "State",
    "StateSettings",
    "TaskChange",
    "TaskChangeSink",
    "TaskKey",
    "WorkerRow",
    "WorkerState",
    "WorkerView",
]
