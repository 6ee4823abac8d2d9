"""What the event stream has told us: task counts, runtime histograms and worker liveness.

``State`` (state.py) owns the lock; the ingest thread feeds it decoded events and readers get
copies. Inside: ``counting`` (the tables and the loop that fills them, once per event),
``reference`` (the same counting written plainly, the specification the tests hold the loop
to), ``workers`` (worker records and Celery's liveness rule), ``histogram``, ``snapshot`` (what
readers get) and ``settings``.
"""

from celery_events_exporter.events.vocabulary import MAX_CUSTOM_EVENT_TYPES
from celery_events_exporter.state.counting import MAX_ENDED_NAMES, OTHER, UNKNOWN_TASK, Counts
from celery_events_exporter.state.histogram import Histogram
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import Snapshot, TaskKey, WorkerRow, WorkerView
from celery_events_exporter.state.state import DecodedMessage, State, TaskObserver, TaskTracker
from celery_events_exporter.state.workers import WorkerState

__all__ = [
    "MAX_CUSTOM_EVENT_TYPES",
    "MAX_ENDED_NAMES",
    "OTHER",
    "UNKNOWN_TASK",
    "Counts",
    "DecodedMessage",
    "Histogram",
    "Snapshot",
    "State",
    "StateSettings",
    "TaskKey",
    "TaskObserver",
    "TaskTracker",
    "WorkerRow",
    "WorkerState",
    "WorkerView",
]
