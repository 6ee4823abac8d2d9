"""The Celery event vocabulary: event type names, task states and their lifecycle order.

Everything that names a Celery event or a task state takes it from here: the state's counting,
the recent-task store, the metric catalogue (one counter per task state event) and the tests.
Names are Celery 5's (``celery.events.state``, ``celery.states``).
"""

from __future__ import annotations

TASK_SENT = "task-sent"
"""Sent by the client that published the task (only with ``task_send_sent_event``)."""
TASK_RECEIVED = "task-received"
TASK_STARTED = "task-started"
TASK_SUCCEEDED = "task-succeeded"
TASK_FAILED = "task-failed"
TASK_RETRIED = "task-retried"
TASK_REJECTED = "task-rejected"
TASK_REVOKED = "task-revoked"

TASK_ORPHANED = "task-orphaned"
"""Made by the exporter itself (the state's ledger sweep) for its subscribers when a task
started on a worker that vanished without a goodbye; never sent by Celery."""

WORKER_ONLINE = "worker-online"
WORKER_HEARTBEAT = "worker-heartbeat"
WORKER_OFFLINE = "worker-offline"

TASK_STATE_EVENTS: tuple[str, ...] = (
    TASK_RECEIVED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_REJECTED,
    TASK_REVOKED,
)
"""The task events a worker sends, each counted per (task, worker) in this order (the order of
the metric families); every one of them names its task by ``uuid``."""

TASK_EVENTS: tuple[str, ...] = (TASK_SENT, *TASK_STATE_EVENTS)
"""Every event of a task's life, the client's task-sent included: each names its task by
``uuid`` (task-sent may lack it)."""

WORKER_EVENTS: tuple[str, ...] = (WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE)
"""The events of a worker's own life: they update its liveness and gauges."""

CELERY_EVENT_TYPES: tuple[str, ...] = (*TASK_EVENTS, *WORKER_EVENTS)
"""Every event type Celery itself sends; any other type is a custom event (``Task.send_event``)."""

KNOWN_EVENT_TYPES = frozenset(CELERY_EVENT_TYPES)

MAX_CUSTOM_EVENT_TYPES = 50
"""Custom event types counted by name; later ones count as "other", to bound the cardinality of
the events counter."""
MAX_CUSTOM_EVENT_TYPE_LENGTH = 100
"""Longest custom event type counted by name (a label value); a longer one counts as "other"."""

# Task states, as Celery names them (celery.states), with the event that puts a task in each.
PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
LOST = "LOST"
"""Started on a worker that went offline without a goodbye (SIGKILL, OOM, a lost node) before
the task ended: the exporter's own verdict, not a Celery state."""

TASK_EVENT_STATES: dict[str, str] = {
    TASK_SENT: PENDING,
    TASK_RECEIVED: RECEIVED,
    TASK_STARTED: STARTED,
    TASK_SUCCEEDED: SUCCESS,
    TASK_FAILED: FAILURE,
    TASK_RETRIED: RETRY,
    TASK_REVOKED: REVOKED,
    TASK_REJECTED: REJECTED,
    TASK_ORPHANED: LOST,
}
"""Task event type -> the state it puts the task in."""

TASK_STATES: tuple[str, ...] = tuple(TASK_EVENT_STATES.values())

STATE_RANK: dict[str, int] = {
    PENDING: 0,
    RECEIVED: 1,
    STARTED: 2,
    LOST: 3,
    RETRY: 3,
    FAILURE: 4,
    SUCCESS: 5,
    REJECTED: 6,
    REVOKED: 7,
}
"""How far along its lifecycle a state is: breaks ties between events of equal timestamps (a task
that raised ``Reject`` fails, then is rejected)."""
