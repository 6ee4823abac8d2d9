"""The metric catalogue: the one place where metric names, types, labels and help live.

Everything else refers to these specs: the collector that renders them, the Grafana dashboard
generator and the tests that check every PromQL expression in the dashboards and the rules names a
metric the exporter really exports. Renaming a metric here breaks those checks, not a panel in
production.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from celery_events_exporter.events import vocabulary


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family. ``name`` is the family name; counters expose ``name + "_total"``."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The names of the series the family exposes, as PromQL sees them."""
        if self.kind is Kind.COUNTER:
            return (f"{self.name}_total",)
        if self.kind is Kind.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)

    def labels_without(self, dropped: frozenset[str]) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label not in dropped)


TASK = "task"
WORKER = "worker"
QUEUE = "queue"
EXCEPTION = "exception"

_TASK_LABELS = (TASK, WORKER)

# Task state event type -> counter family, for every one of vocabulary.TASK_STATE_EVENTS in its
# order. "Processed" in Flower's Workers view is the worker's received count, so Processed reads
# celery_task_received_total.
TASK_STATE_COUNTERS: dict[str, MetricSpec] = {
    vocabulary.TASK_RECEIVED: MetricSpec(
        "celery_task_received",
        Kind.COUNTER,
        "Tasks received by a worker (Flower's 'Processed'); a retry is received again.",
        _TASK_LABELS,
    ),
    vocabulary.TASK_STARTED: MetricSpec(
        "celery_task_started", Kind.COUNTER, "Tasks a worker started executing.", _TASK_LABELS
    ),
    vocabulary.TASK_SUCCEEDED: MetricSpec(
        "celery_task_succeeded", Kind.COUNTER, "Tasks that succeeded.", _TASK_LABELS
    ),
    vocabulary.TASK_FAILED: MetricSpec(
        "celery_task_failed", Kind.COUNTER, "Tasks that failed.", _TASK_LABELS
    ),
    vocabulary.TASK_RETRIED: MetricSpec(
        "celery_task_retried",
        Kind.COUNTER,
        "Task executions that ended in a retry (the task is received again, same uuid).",
        _TASK_LABELS,
    ),
    vocabulary.TASK_REJECTED: MetricSpec(
        "celery_task_rejected", Kind.COUNTER, "Tasks a worker rejected.", _TASK_LABELS
    ),
    vocabulary.TASK_REVOKED: MetricSpec(
        "celery_task_revoked",
        Kind.COUNTER,
        "Tasks revoked (cancelled, terminated or expired).",
        _TASK_LABELS,
    ),
}

TASK_SENT = MetricSpec(
    "celery_task_sent",
    Kind.COUNTER,
    "Tasks published by clients; needs task_send_sent_event=True in the client's Celery config.",
    (TASK, QUEUE),
)
TASK_EXCEPTIONS = MetricSpec(
    "celery_task_exceptions",
    Kind.COUNTER,
    "Task failures by exception class; classes past the --max-exception-classes cap count as "
    'exception="other".',
    (TASK, EXCEPTION),
)
TASK_RUNTIME = MetricSpec(
    "celery_task_runtime_seconds",
    Kind.HISTOGRAM,
    "Task execution time as measured by the worker (the runtime field of task-succeeded).",
    _TASK_LABELS,
)
TASK_QUEUE_WAIT = MetricSpec(
    "celery_task_queue_wait_seconds",
    Kind.HISTOGRAM,
    "Time from a worker receiving a task to starting it, both on the worker's clock.",
    _TASK_LABELS,
)

WORKER_ONLINE = MetricSpec(
    "celery_worker_online",
    Kind.GAUGE,
    "1 while the worker's heartbeats arrive (Celery's rule: within 2 x the heartbeat interval, "
    "or --worker-timeout), else 0.",
    (WORKER,),
)
WORKER_ACTIVE_TASKS = MetricSpec(
    "celery_worker_active_tasks",
    Kind.GAUGE,
    "Tasks the worker is executing, from its last heartbeat.",
    (WORKER,),
)
WORKER_CONCURRENCY = MetricSpec(
    "celery_worker_concurrency",
    Kind.GAUGE,
    "Processes or threads the worker's pool may run tasks in (its max-concurrency, from "
    "inspect stats every --broadcast-interval); active / concurrency is how busy it is.",
    (WORKER,),
)
WORKER_LOAD1 = MetricSpec(
    "celery_worker_load1", Kind.GAUGE, "1-minute load average of the worker's host.", (WORKER,)
)
WORKER_LOAD5 = MetricSpec(
    "celery_worker_load5", Kind.GAUGE, "5-minute load average of the worker's host.", (WORKER,)
)
WORKER_LOAD15 = MetricSpec(
    "celery_worker_load15", Kind.GAUGE, "15-minute load average of the worker's host.", (WORKER,)
)
WORKER_LAST_HEARTBEAT = MetricSpec(
    "celery_worker_last_heartbeat_timestamp_seconds",
    Kind.GAUGE,
    "When the exporter received the worker's last heartbeat (exporter's clock, Unix seconds).",
    (WORKER,),
)
WORKER_HEARTBEAT_INTERVAL = MetricSpec(
    "celery_worker_heartbeat_interval_seconds",
    Kind.GAUGE,
    "The heartbeat interval the worker announces (its freq field).",
    (WORKER,),
)
WORKER_PROCESSED = MetricSpec(
    "celery_worker_processed_tasks",
    Kind.COUNTER,
    "Tasks the worker accepted since it started (retries included), from its heartbeats; "
    "resets when the worker restarts.",
    (WORKER,),
)
STATE = "state"
TASK_STATE_WORDS: dict[str, str] = {
    event_type: event_type.removeprefix("task-") for event_type in TASK_STATE_COUNTERS
}
"""Task event type -> the ``state`` label value of ``celery_worker_tasks_total``."""
WORKER_TASKS = MetricSpec(
    "celery_worker_tasks",
    Kind.COUNTER,
    "Task events counted from the worker, by state (received, started, succeeded, failed, "
    "retried, rejected, revoked), with or without --worker-label: the Workers view's columns. "
    "Every state of every known worker is exported, from 0.",
    (WORKER, STATE),
)
WORKER_INFO = MetricSpec(
    "celery_worker_info",
    Kind.GAUGE,
    "Always 1; the worker's software as its heartbeats announce it.",
    (WORKER, "sw_ident", "sw_ver", "sw_sys"),
)
WORKER_UNCOUNTED_TASKS = MetricSpec(
    "celery_worker_uncounted_tasks",
    Kind.GAUGE,
    "Tasks the worker started (its heartbeats' processed count, since the exporter first "
    "heard it) that no task-started event reached the exporter for: their task events were "
    "off (a worker started without -E, before enable_events reached it) or were lost.",
    (WORKER,),
)
WORKER_SHUTDOWN_CLEAN = MetricSpec(
    "celery_worker_shutdown_clean",
    Kind.GAUGE,
    "1 when the worker's last word was worker-offline (a planned stop: it said goodbye), 0 "
    "while it runs or after it vanished without one (a crash, SIGKILL, a lost host).",
    (WORKER,),
)

QUEUE_LENGTH = MetricSpec(
    "celery_queue_length",
    Kind.GAUGE,
    "Messages waiting in the broker queue, as of the last poll (Redis: LLEN summed over kombu's "
    "priority lists; RabbitMQ: ready messages). A queue that does not exist reads 0.",
    (QUEUE,),
)
QUEUE_CONSUMERS = MetricSpec(
    "celery_queue_consumers",
    Kind.GAUGE,
    "Consumers of the queue (RabbitMQ: the broker's consumer count; Redis: online workers that "
    "consume it, from their inspect active_queues replies).",
    (QUEUE,),
)
QUEUE_UNACKED = MetricSpec(
    "celery_queue_unacked_messages",
    Kind.GAUGE,
    "Messages delivered to a consumer and not acknowledged yet (prefetched or running), from "
    "RabbitMQ's management API (--rabbitmq-management-url); absent without it.",
    (QUEUE,),
)
QUEUE_OLDEST_TASK_AGE = MetricSpec(
    "celery_queue_oldest_task_age_seconds",
    Kind.GAUGE,
    "How long the oldest task sent to the queue and not yet received by a worker has waited "
    "(from task-sent events); absent when unknown.",
    (QUEUE,),
)
WORKER_PREFETCHED_TASKS = MetricSpec(
    "celery_worker_prefetched_tasks",
    Kind.GAUGE,
    "Tasks the worker received and has not started yet (reserved; Flower's 'prefetched').",
    (WORKER,),
)
TASK_ORPHANED = MetricSpec(
    "celery_task_orphaned",
    Kind.COUNTER,
    "Tasks a worker had started and never finished when it went offline without a goodbye "
    "(SIGKILL, OOM, a lost node): work that was lost.",
    _TASK_LABELS,
)

EXPORTER_BROKER_CONNECTED = MetricSpec(
    "celery_exporter_broker_connected",
    Kind.GAUGE,
    "1 while the exporter is connected to the broker and consuming events (on Redis: once the "
    "server holds its subscription), else 0.",
)
EXPORTER_BROKER_CONNECTION_ERRORS = MetricSpec(
    "celery_exporter_broker_connection_errors",
    Kind.COUNTER,
    "Failed broker connection attempts and lost connections, by reason (timeout, connection, "
    "auth, tls, other); tls: the server does not speak TLS where the URL asks for it "
    "(rediss://, amqps://), or the handshake failed. The log has each error.",
    ("reason",),
)
EXPORTER_BROKER_CONNECTIONS_LOST = MetricSpec(
    "celery_exporter_broker_connections_lost",
    Kind.COUNTER,
    "Established broker connections that were lost (closed or cut off by the broker, or "
    "silent past the health checks). Events published until the reconnection are lost: Redis "
    "keeps nothing for an absent subscriber, and the exclusive RabbitMQ event queue goes with "
    "its connection.",
)
EXPORTER_SILENT_WORKERS = MetricSpec(
    "celery_exporter_silent_workers",
    Kind.GAUGE,
    "Workers that answer the exporter's inspect broadcasts although none of their events "
    "(heartbeats included) reach it: they publish to another exchange than --event-exchange "
    "(the app's event_exchange), or run --without-heartbeat.",
)
EXPORTER_BROADCAST_ERRORS = MetricSpec(
    "celery_exporter_broadcast_errors",
    Kind.COUNTER,
    "Control broadcasts to the workers (enable_events, inspect, at each --broadcast-interval, "
    "each (re)connection and each new worker's greeting) that failed, by reason (timeout, "
    "connection, auth, tls, other): a broker that does not answer fails one within 3 s per call. "
    "The next broadcast tries again; the log has each error.",
    ("reason",),
)
EXPORTER_CONTROL_REPLIES_DROPPED = MetricSpec(
    "celery_exporter_control_replies_dropped",
    Kind.COUNTER,
    "Inspect replies (or entries of one) left out, by reason: unknown_worker (from a hostname "
    "the exporter never heard on the event exchange, or did not ask), duplicate (two replies "
    "for one hostname to one request: neither is believed), mismatch (a stats reply whose pid "
    "or pool size disagrees with the heartbeats), too_many (past the caps on replies per "
    "request and entries per worker), too_big (a reply over 4 MiB, not decoded), malformed, "
    "late (for a request no longer collecting). "
    "Any broker client can answer an inspect request; the log has each kind's first "
    "occurrences.",
    ("reason",),
)
EXPORTER_EVENTS = MetricSpec(
    "celery_exporter_events",
    Kind.COUNTER,
    'Events decoded, by event type (custom types past a cap count as type="other").',
    ("type",),
)
EXPORTER_EVENTS_REJECTED = MetricSpec(
    "celery_exporter_events_rejected",
    Kind.COUNTER,
    "Messages or events that could not be used, by reason.",
    ("reason",),
)
EXPORTER_INTAKE_BACKLOG = MetricSpec(
    "celery_exporter_intake_backlog_messages",
    Kind.GAUGE,
    "Broker messages read off the socket but not yet counted.",
)
EXPORTER_INTAKE_BACKLOG_BYTES = MetricSpec(
    "celery_exporter_intake_backlog_bytes",
    Kind.GAUGE,
    "Bytes of the broker messages read off the socket but not yet counted (bodies plus a fixed "
    "per-message overhead); at most --max-intake-backlog-bytes.",
)
EXPORTER_EVENTS_DROPPED = MetricSpec(
    "celery_exporter_events_dropped",
    Kind.COUNTER,
    "Broker messages (each one event, or a task.multi list of up to 24) the exporter read and "
    'dropped unread, by reason: "intake_budget" = arrived while the intake backlog was over '
    "--max-intake-backlog-bytes.",
    ("reason",),
)
EXPORTER_LABEL_OVERFLOW = MetricSpec(
    "celery_exporter_label_overflow",
    Kind.COUNTER,
    "Label values folded or cut, by label (task, worker, exception, queue) and reason: "
    '"cap" = counted as "other" because --max-task-names, --max-workers, --max-queues or '
    '--max-exception-classes was reached (a worker past its cap gets no gauges); "length" = '
    "cut to --max-label-length bytes. Counted per event that carried the value: hostnames come "
    "with every event, task names with task-received and task-sent (docs/limits.md).",
    ("label", "reason"),
)
EXPORTER_INTAKE_LAG = MetricSpec(
    "celery_exporter_intake_lag_seconds",
    Kind.GAUGE,
    "Age of the oldest broker message read but not yet counted (0 when caught up).",
)
EXPORTER_TRACKED_TASKS = MetricSpec(
    "celery_exporter_tracked_tasks",
    Kind.GAUGE,
    "Task uuids whose name the exporter remembers, to label events that carry no name.",
)
EXPORTER_RECENT_TASKS = MetricSpec(
    "celery_exporter_recent_tasks",
    Kind.GAUGE,
    "Tasks held in the recent-task store that /api/tasks serves (at most --max-recent-tasks), "
    "up to date at every scrape (the scrape merges the events that arrived since), except while "
    "counting catches up a backlog: then as of the last merge.",
)
EXPORTER_RECENT_TASKS_EVICTED = MetricSpec(
    "celery_exporter_recent_tasks_evicted",
    Kind.COUNTER,
    "Tasks dropped from the recent-task store to keep it within --max-recent-tasks, oldest first, "
    "or seen only as sent for longer than --forget-pending-tasks-after (counted when a read "
    "merges new events).",
)
EXPORTER_RECENT_TASK_EVENTS_DROPPED = MetricSpec(
    "celery_exporter_recent_task_events_dropped",
    Kind.COUNTER,
    "Task events the recent-task store let go unmerged: more than 6 x --max-recent-tasks task "
    "events (or 4 KiB x --max-recent-tasks of JSON) arrived between two reads of /api/tasks.",
)
EXPORTER_TASK_HISTORY_ROWS_WRITTEN = MetricSpec(
    "celery_exporter_task_history_rows_written",
    Kind.COUNTER,
    "Task rows merged into the task history's database (--tasks.store); a task's events within "
    "one flush window make one row write.",
)
EXPORTER_TASK_HISTORY_BATCHES = MetricSpec(
    "celery_exporter_task_history_batches",
    Kind.COUNTER,
    "Transactions that wrote task rows into the task history's database.",
)
EXPORTER_TASK_HISTORY_DROPPED = MetricSpec(
    "celery_exporter_task_history_dropped",
    Kind.COUNTER,
    'Task events or rows the task history never wrote, by reason: "buffer_full" = events that '
    "arrived while --tasks.buffer-bytes were waiting for the database, or that the history gave "
    'up to the intake backlog, which shares --max-intake-backlog-bytes; "rejected" = rows of a '
    "batch the database refused (the log says why).",
    ("reason",),
)
EXPORTER_TASK_HISTORY_BUFFER_BYTES = MetricSpec(
    "celery_exporter_task_history_buffer_bytes",
    Kind.GAUGE,
    "Bytes of task events and rows waiting to be written to the task history (at most "
    "--tasks.buffer-bytes).",
)
EXPORTER_TASK_HISTORY_WRITE_ERRORS = MetricSpec(
    "celery_exporter_task_history_write_errors",
    Kind.COUNTER,
    "Failed attempts to migrate, write or expire the task history (the database down, slow or "
    "refusing); writes are retried.",
)
EXPORTER_TASK_HISTORY_LAST_SUCCESS = MetricSpec(
    "celery_exporter_task_history_last_success_timestamp_seconds",
    Kind.GAUGE,
    "Unix time of the last successful write to the task history's database; absent before the "
    "first.",
)
EXPORTER_TASK_HISTORY_ROWS_EXPIRED = MetricSpec(
    "celery_exporter_task_history_rows_expired",
    Kind.COUNTER,
    "Task rows deleted from the history by --tasks.retention, --tasks.failed-retention or "
    "--tasks.max-bytes.",
)
EXPORTER_QUEUE_POLL_DURATION = MetricSpec(
    "celery_exporter_queue_poll_duration_seconds",
    Kind.GAUGE,
    "Seconds the last poll of the queue depths took, failed or not.",
)
EXPORTER_QUEUE_POLL_ERRORS = MetricSpec(
    "celery_exporter_queue_poll_errors",
    Kind.COUNTER,
    "Failed polls of the queue depths by reason (timeout, connection, auth, tls, other), and "
    "queues the broker refused to describe (queue_refused).",
    ("reason",),
)
EXPORTER_QUEUE_READINGS_AGE = MetricSpec(
    "celery_exporter_queue_readings_age_seconds",
    Kind.GAUGE,
    "Seconds since the queue readings were taken (the start of the last successful poll); it "
    "grows past --queue-poll-interval while the broker does not answer. Absent before the "
    "first success.",
)
EXPORTER_QUEUES_WATCHED = MetricSpec(
    "celery_exporter_queues_watched",
    Kind.GAUGE,
    "Queues whose depth is polled: named with --queue, seen in task-sent events, consumed by "
    "workers, bound in the broker.",
)
EXPORTER_QUEUES_DROPPED = MetricSpec(
    "celery_exporter_queues_dropped",
    Kind.COUNTER,
    "Distinct queue names not watched because --max-queues was reached (or the name is over "
    "1024 characters).",
)
EXPORTER_QUEUES_EVICTED = MetricSpec(
    "celery_exporter_queues_evicted",
    Kind.COUNTER,
    "Watched queues that gave their place under --max-queues to another name after 3 polls in "
    "a row empty, without consumers, and consumed by no worker (docs/limits.md).",
)
EXPORTER_HTTP_CONNECTIONS = MetricSpec(
    "celery_exporter_http_connections",
    Kind.GAUGE,
    "HTTP connections open now, each served by a thread of its own (at most 1024: docs/limits.md).",
)
EXPORTER_HTTP_CONNECTIONS_REFUSED = MetricSpec(
    "celery_exporter_http_connections_refused",
    Kind.COUNTER,
    "HTTP connections answered 503 at once because 1024 were open already.",
)
EXPORTER_API_REQUESTS_REFUSED = MetricSpec(
    "celery_exporter_api_requests_refused",
    Kind.COUNTER,
    "/api/* requests answered 503 (Retry-After: 1) because no API worker came free within 5 s: "
    "the API serves 2 requests at a time, so that scrapes keep the CPU (docs/limits.md).",
)
EXPORTER_API_REQUESTS_ABANDONED = MetricSpec(
    "celery_exporter_api_requests_abandoned",
    Kind.COUNTER,
    "/api/* requests whose client went away before the answer was ready: their work was "
    "dropped at the next checkpoint.",
)
EXPORTER_HTTP_ERRORS = MetricSpec(
    "celery_exporter_http_errors",
    Kind.COUNTER,
    "HTTP requests that failed inside the exporter (answered 500, or dropped mid-answer), or "
    "that the task history's database could not answer (503), by path; the log has each one's "
    "error.",
    ("path",),
)
EXPORTER_API_ROWS_SKIPPED = MetricSpec(
    "celery_exporter_api_rows_skipped",
    Kind.COUNTER,
    "Rows left out of an /api/tasks or /api/workers answer because they could not be served "
    "(the rest of the answer is served; the log says why).",
    ("endpoint",),
)
EXPORTER_BUILD_INFO = MetricSpec(
    "celery_exporter_build_info",
    Kind.GAUGE,
    "Always 1; the exporter's version and the versions it runs with.",
    ("version", "celery_version", "kombu_version", "python_version"),
)

WORKER_POOL_PROCESSES = MetricSpec(
    "celery_worker_pool_processes",
    Kind.GAUGE,
    "Processes (or threads) the worker's pool runs now, from inspect stats every "
    "--worker-details-interval (online workers only).",
    (WORKER,),
)
WORKER_PREFETCH_COUNT = MetricSpec(
    "celery_worker_prefetch_count",
    Kind.GAUGE,
    "The worker's current prefetch count (messages it may hold unacknowledged), from inspect "
    "stats every --worker-details-interval (online workers only).",
    (WORKER,),
)
WORKER_CPU_USER_SECONDS = MetricSpec(
    "celery_worker_cpu_user_seconds",
    Kind.GAUGE,
    "User CPU seconds of the worker's main process (getrusage, inspect stats every "
    "--worker-details-interval; online workers only).",
    (WORKER,),
)
WORKER_CPU_SYSTEM_SECONDS = MetricSpec(
    "celery_worker_cpu_system_seconds",
    Kind.GAUGE,
    "System CPU seconds of the worker's main process (getrusage, inspect stats every "
    "--worker-details-interval; online workers only).",
    (WORKER,),
)
WORKER_MAX_RSS_BYTES = MetricSpec(
    "celery_worker_max_rss_bytes",
    Kind.GAUGE,
    "Peak resident memory of the worker's main process (getrusage's maxrss, inspect stats "
    "every --worker-details-interval; online workers only).",
    (WORKER,),
)
WORKER_CONSUMED_QUEUE = MetricSpec(
    "celery_worker_consumed_queue",
    Kind.GAUGE,
    "Always 1, one series per queue the worker consumes (inspect active_queues every "
    "--worker-details-interval; online workers only, at most 20 queues each).",
    (WORKER, QUEUE),
)
WORKER_DETAILS = (
    WORKER_POOL_PROCESSES,
    WORKER_PREFETCH_COUNT,
    WORKER_CPU_USER_SECONDS,
    WORKER_CPU_SYSTEM_SECONDS,
    WORKER_MAX_RSS_BYTES,
    WORKER_CONSUMED_QUEUE,
)
"""From ``worker_details``' inspect polls, not from events."""

WORKER_GAUGES = (
    WORKER_ONLINE,
    WORKER_ACTIVE_TASKS,
    WORKER_CONCURRENCY,
    WORKER_LOAD1,
    WORKER_LOAD5,
    WORKER_LOAD15,
    WORKER_LAST_HEARTBEAT,
    WORKER_HEARTBEAT_INTERVAL,
)

CATALOGUE: tuple[MetricSpec, ...] = (
    *TASK_STATE_COUNTERS.values(),
    TASK_SENT,
    TASK_EXCEPTIONS,
    TASK_RUNTIME,
    TASK_QUEUE_WAIT,
    *WORKER_GAUGES,
    *WORKER_DETAILS,
    WORKER_PROCESSED,
    WORKER_TASKS,
    WORKER_INFO,
    WORKER_UNCOUNTED_TASKS,
    WORKER_SHUTDOWN_CLEAN,
    QUEUE_LENGTH,
    QUEUE_CONSUMERS,
    QUEUE_UNACKED,
    QUEUE_OLDEST_TASK_AGE,
    WORKER_PREFETCHED_TASKS,
    TASK_ORPHANED,
    EXPORTER_BROKER_CONNECTED,
    EXPORTER_BROKER_CONNECTION_ERRORS,
    EXPORTER_BROKER_CONNECTIONS_LOST,
    EXPORTER_SILENT_WORKERS,
    EXPORTER_BROADCAST_ERRORS,
    EXPORTER_CONTROL_REPLIES_DROPPED,
    EXPORTER_EVENTS,
    EXPORTER_EVENTS_REJECTED,
    EXPORTER_INTAKE_BACKLOG,
    EXPORTER_INTAKE_BACKLOG_BYTES,
    EXPORTER_EVENTS_DROPPED,
    EXPORTER_LABEL_OVERFLOW,
    EXPORTER_INTAKE_LAG,
    EXPORTER_TRACKED_TASKS,
    EXPORTER_RECENT_TASKS,
    EXPORTER_RECENT_TASKS_EVICTED,
    EXPORTER_RECENT_TASK_EVENTS_DROPPED,
    EXPORTER_TASK_HISTORY_ROWS_WRITTEN,
    EXPORTER_TASK_HISTORY_BATCHES,
    EXPORTER_TASK_HISTORY_DROPPED,
    EXPORTER_TASK_HISTORY_BUFFER_BYTES,
    EXPORTER_TASK_HISTORY_WRITE_ERRORS,
    EXPORTER_TASK_HISTORY_LAST_SUCCESS,
    EXPORTER_TASK_HISTORY_ROWS_EXPIRED,
    EXPORTER_QUEUE_POLL_DURATION,
    EXPORTER_QUEUE_POLL_ERRORS,
    EXPORTER_QUEUE_READINGS_AGE,
    EXPORTER_QUEUES_WATCHED,
    EXPORTER_QUEUES_DROPPED,
    EXPORTER_QUEUES_EVICTED,
    EXPORTER_HTTP_CONNECTIONS,
    EXPORTER_HTTP_CONNECTIONS_REFUSED,
    EXPORTER_HTTP_ERRORS,
    EXPORTER_API_REQUESTS_REFUSED,
    EXPORTER_API_REQUESTS_ABANDONED,
    EXPORTER_API_ROWS_SKIPPED,
    EXPORTER_BUILD_INFO,
)


def sample_names() -> frozenset[str]:
    """Every series name the exporter can expose; what dashboards and rules may refer to."""
    return frozenset(name for spec in CATALOGUE for name in spec.sample_names)


def by_name(name: str) -> MetricSpec:
    for spec in CATALOGUE:
        if spec.name == name:
            return spec
    raise KeyError(name)
