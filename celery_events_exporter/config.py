"""The exporter's configuration: every setting declared once, as a field of ``Config``.

A field's annotation is the setting's type and its default the setting's default; ``setting``
adds the flag, the help text, the parser and any deprecated names
(``celery_events_exporter.settings``). The
CLI's flags, their ``CELERY_EXPORTER_*`` environment twins and the README's configuration table
are all made from these declarations. To add a setting, add a field here; then run
``python scripts/readme_tables.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_events_exporter.broker_options import (
    check_broker,
    parse_broker_url,
    parse_transport_option,
)
from celery_events_exporter.history.urls import DEFAULT_FILE, parse_store_url
from celery_events_exporter.intake.backlog import DEFAULT_BUDGET_BYTES
from celery_events_exporter.intake.event_queue import (
    DEFAULT_EVENT_EXCHANGE,
    DEFAULT_EVENT_QUEUE_EXPIRES,
    DEFAULT_EVENT_QUEUE_PREFIX,
    DEFAULT_EVENT_QUEUE_TTL,
    EventSettings,
)
from celery_events_exporter.logging import DEPRECATED_LOG_FORMATS, LOG_FORMATS, LOG_LEVELS
from celery_events_exporter.parsers import (
    ListenAddress,
    choice,
    duration,
    integer,
    parse_buckets,
    parse_listen_address,
    parse_telemetry_path,
    seconds,
    size,
)
from celery_events_exporter.queues.management import parse_management_url, read_credentials
from celery_events_exporter.settings import setting, setting_factory
from celery_events_exporter.state.labels import MIN_LENGTH
from celery_events_exporter.tasks.redact import DEFAULT_SECRET_KEY_PATTERNS, compile_secret_keys
from celery_events_exporter.web import webconfig

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "DEFAULT_RUNTIME_BUCKETS",
    "Config",
    "ListenAddress",
]

DEFAULT_PORT = 19808
"""Outside 9100-9999, which Prometheus' default-port allocation list has fully handed out
(9808 there belongs to another Celery exporter), and below Linux's ephemeral port range."""

DEFAULT_BROKER_URL = "redis://localhost:6379/0"

# Seconds-to-minutes tasks: the seed's image task takes ~2.7 s, batch jobs take minutes.
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)  # fmt: skip
DEFAULT_QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip


def _web_config_file(path: str) -> str:
    """Load the file once at start, so that a mistake in it stops the exporter with one line."""
    webconfig.load(path)
    return path


def _secret_key_pattern(pattern: str) -> str:
    compile_secret_keys([pattern])
    return pattern


def _transport_options(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return dict(items)


def _credentials_file(path: str) -> str:
    """Read the file once at start, so that a missing or malformed one stops the exporter."""
    read_credentials(path)
    return path


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


@dataclass(frozen=True)
class Config:
    broker_url: str = setting(
        DEFAULT_BROKER_URL,
        flag="--broker-url",
        parse=parse_broker_url,
        metavar="URL",
        help="Celery broker URL (redis://, rediss://, sentinel://, amqp://, ...), as the workers "
        "use it; several separated by ';' for failover, each tried in turn (Sentinel: the "
        "sentinels' URLs, with --broker-transport-option master_name=NAME). Passwords are "
        "masked wherever a URL is shown.",
    )
    broker_transport_options: dict[str, Any] = setting_factory(
        dict,
        flag="--broker-transport-option",
        parse=parse_transport_option,
        metavar="KEY=VALUE",
        repeatable=True,
        collect=_transport_options,
        help="A kombu transport option, as the workers' broker_transport_options. KEY=VALUE "
        "passes VALUE as text, converted only for the options kombu wants as numbers, booleans "
        "or lists (visibility_timeout, max_connections, socket_timeout, fanout_prefix, "
        "priority_steps, ...); KEY:=JSON passes a JSON value (sentinel_kwargs:={...}). "
        "Repeatable; the environment variable takes several separated by spaces.",
    )
    event_exchange: str = setting(
        DEFAULT_EVENT_EXCHANGE,
        flag="--event-exchange",
        parse=_not_blank,
        metavar="NAME",
        help="The exchange the workers publish events to: the app's event_exchange setting. An "
        "exporter bound to another exchange receives nothing.",
    )
    """The app's event_exchange: where the workers publish their events."""
    event_queue_prefix: str = setting(
        DEFAULT_EVENT_QUEUE_PREFIX,
        flag="--event-queue-prefix",
        parse=_not_blank,
        metavar="PREFIX",
        help="Prefix of the exporter's event queue name, as the app's event_queue_prefix (broker "
        "policies often match it).",
    )
    event_queue_ttl: float = setting(
        DEFAULT_EVENT_QUEUE_TTL,
        flag="--event-queue-ttl",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds an event may wait in the exporter's queue before RabbitMQ drops it "
        "(x-message-ttl), as the app's event_queue_ttl; 0 sets none.",
    )
    """x-message-ttl of the exporter's event queue, seconds; 0 sets none."""
    event_queue_expires: float = setting(
        DEFAULT_EVENT_QUEUE_EXPIRES,
        flag="--event-queue-expires",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds the exporter's queue outlives its last consumer (x-expires), as the app's "
        "event_queue_expires; 0 sets none.",
    )
    """x-expires of the exporter's event queue, seconds; 0 sets none."""
    listen: ListenAddress = setting(
        ListenAddress("", DEFAULT_PORT),
        flag="--web.listen-address",
        parse=parse_listen_address,
        metavar="HOST:PORT",
        deprecated_flags=("--listen-address",),
        deprecated_envs=("CELERY_EXPORTER_LISTEN_ADDRESS",),
        help="Address to serve the metrics, the probes and the API on; an empty host means "
        "every interface.",
    )
    telemetry_path: str = setting(
        "/metrics",
        flag="--web.telemetry-path",
        parse=parse_telemetry_path,
        metavar="PATH",
        help="Path under which the metrics are served.",
    )
    web_config_file: str | None = setting(
        None,
        flag="--web.config.file",
        parse=_web_config_file,
        metavar="FILE",
        deprecated_flags=("--web-config-file",),
        help="Prometheus exporter-toolkit web config (YAML): basic_auth_users with bcrypt hashes "
        "and tls_server_config. With users, every path but /healthz and /readyz needs them.",
    )
    """exporter-toolkit web config (basic auth, TLS); None serves plain HTTP to anyone."""
    worker_timeout: float = setting(
        0.0,
        flag="--worker-timeout",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds without a heartbeat before a worker reads offline. 0 applies Celery's own "
        "rule: twice the heartbeat interval the worker announces.",
    )
    purge_offline_worker_after: float = setting(
        3600.0,
        flag="--purge-offline-worker-after",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds after which an offline worker's series (its gauges, and its task series "
        "when task metrics carry the worker label) are dropped. 0 keeps them forever.",
    )
    purge_stopped_worker_after: float = setting(
        300.0,
        flag="--purge-stopped-worker-after",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds after which the series of a worker that stopped cleanly (it sent "
        "worker-offline) are dropped, sooner than a vanished worker's. 0 leaves it to "
        "--purge-offline-worker-after.",
    )
    max_registered_tasks: int = setting(
        200,
        flag="--max-registered-tasks",
        parse=integer(0),
        metavar="N",
        help="Task names per worker, from its inspect registered reply when it comes online, "
        "whose series are created at 0 (so that a first failure is an increase); the rest get "
        "theirs at their first event. 0 creates none ahead.",
    )
    runtime_buckets: tuple[float, ...] = setting(
        DEFAULT_RUNTIME_BUCKETS,
        flag="--runtime-buckets",
        parse=parse_buckets,
        metavar="BOUNDS",
        help="Upper bounds, in seconds, of the task runtime histogram buckets.",
    )
    queue_wait_buckets: tuple[float, ...] = setting(
        DEFAULT_QUEUE_WAIT_BUCKETS,
        flag="--queue-wait-buckets",
        parse=parse_buckets,
        metavar="BOUNDS",
        help="Upper bounds, in seconds, of the queue-wait (received to started) histogram buckets.",
    )
    worker_label: bool = setting(
        True,
        flag="--worker-label",
        negation="--no-worker-label",
        help="Label task metrics with the worker's hostname. Turn off for fleets whose hostnames "
        "churn (Kubernetes pods) to keep the number of series bounded.",
    )
    enable_events: bool = setting(
        True,
        flag="--enable-events",
        negation="--no-enable-events",
        help="Broadcast enable_events to the workers periodically, and to each worker the "
        "moment it is first heard of (worker-online or first heartbeat), so that workers "
        "started without -E send task events from their first task.",
    )
    inspect_workers: bool = setting(
        True,
        flag="--inspect-workers",
        negation="--no-inspect-workers",
        help="Ask the workers for their pool size (inspect stats) periodically, to export "
        "celery_worker_concurrency.",
    )
    worker_details_interval: float = setting(
        60.0,
        flag="--worker-details-interval",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds between asking the online workers for the details of Flower's worker "
        "page (inspect stats, active_queues, registered, reserved, scheduled, revoked; never "
        "conf): the celery_worker_pool_processes, _prefetch_count, _cpu_*_seconds and "
        "_max_rss_bytes gauges and /api/workers/<name>. Six broadcasts per round, each "
        "waiting at most 1 s. 0 turns it off.",
    )
    broadcast_interval: float = setting(
        30.0,
        flag="--broadcast-interval",
        parse=seconds(1),
        metavar="SECONDS",
        help="Seconds between the broadcasts to the workers (enable_events, inspect stats); "
        "they are also sent at every (re)connection to the broker.",
    )
    max_tracked_tasks: int = setting(
        100_000,
        flag="--max-tracked-tasks",
        parse=integer(1),
        metavar="N",
        help="Task uuids remembered between task-received and the task's end, to name the "
        "events that carry no task name; the oldest are forgotten first.",
    )
    max_exception_classes: int = setting(
        50,
        flag="--max-exception-classes",
        parse=integer(0),
        metavar="N",
        help="Distinct exception classes labelled in celery_task_exceptions_total; later ones "
        'count as exception="other".',
    )
    max_task_names: int = setting(
        1000,
        flag="--max-task-names",
        parse=integer(1),
        metavar="N",
        help="Distinct task names labelled in the task series; events of later ones count as "
        'task="other" (counted in celery_exporter_label_overflow_total).',
    )
    max_workers: int = setting(
        1000,
        flag="--max-workers",
        parse=integer(1),
        metavar="N",
        help="Distinct worker hostnames tracked at once; a later worker gets no worker gauges and "
        'its task events count as worker="other" until a purged worker frees a place.',
    )
    max_label_length: int = setting(
        200,
        flag="--max-label-length",
        parse=integer(MIN_LENGTH, 65_536),
        metavar="BYTES",
        help="Bytes of UTF-8 kept of a task name, worker hostname, exception class or queue used "
        "as a label value; a longer one is cut and ends with an ellipsis.",
    )
    max_recent_tasks: int = setting(
        10_000,
        flag="--max-recent-tasks",
        parse=integer(0),
        metavar="N",
        help="Tasks kept in memory for /api/tasks (the Tasks table); the oldest are dropped "
        "first. 0 turns the store off.",
    )
    forget_pending_tasks_after: float = setting(
        3600.0,
        flag="--forget-pending-tasks-after",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds after which /api/tasks drops a task seen only as sent (PENDING): its "
        "worker may send no task events, and it would read PENDING until evicted. It comes "
        "back with its next event. 0 keeps such rows.",
    )
    expose_task_payloads: bool = setting(
        False,
        flag="--expose-task-payloads",
        negation="--no-expose-task-payloads",
        help="Serve task args, kwargs, results, exception messages and tracebacks in /api/tasks "
        "(the exception class is always served). They often hold personal data and secrets: "
        "values under secret-looking keys are masked, long values cut.",
    )
    secret_key_patterns: tuple[str, ...] = setting(
        (),
        flag="--secret-key-pattern",
        parse=_secret_key_pattern,
        metavar="REGEX",
        repeatable=True,
        help="Regex (case-insensitive, searched) of dict keys, keyword names and flags whose "
        "values are masked in served payloads, added to the default list (see "
        "--no-default-secret-key-patterns). Repeatable; the environment variable takes several "
        "separated by spaces.",
    )
    """Regexes of keys whose values are masked, besides the defaults (if kept)."""
    default_secret_key_patterns: bool = setting(
        True,
        flag="--default-secret-key-patterns",
        negation="--no-default-secret-key-patterns",
        help="Mask the values of keys matching the default patterns: "
        + " ".join(DEFAULT_SECRET_KEY_PATTERNS)
        + ". Turned off, only --secret-key-pattern's patterns mask (at least one is then "
        "needed).",
    )
    """Mask under redact.DEFAULT_SECRET_KEY_PATTERNS too."""
    max_payload_length: int = setting(
        1024,
        flag="--max-payload-length",
        parse=integer(16, 1_000_000),
        metavar="N",
        help="Characters of args, kwargs, result, exception and traceback served per task; "
        "longer values are cut with an ellipsis (tracebacks keep their end).",
    )
    tasks_store: str | None = setting(
        None,
        flag="--tasks.store",
        parse=parse_store_url,
        metavar="URL",
        help=f"Where the task history behind /api/tasks is kept; without it the SQLite file "
        f"{DEFAULT_FILE} under --data-dir. sqlite:///PATH (a file; a "
        "relative PATH is under --data-dir), postgresql://... (psycopg; credentials and TLS as "
        "libpq reads them: the URL, passfile=, PGPASSWORD, PGSSLMODE...; logged without its "
        "password) or memory:// (the last --max-recent-tasks tasks in memory, gone at a "
        "restart). docs/task-history.md.",
    )
    """The history's database URL; None is the SQLite file in the data directory."""
    data_dir: str | None = setting(
        None,
        flag="--data-dir",
        parse=_not_blank,
        metavar="DIR",
        help="Directory of the exporter's files (the SQLite task history). Without it: "
        "systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/celery-events-exporter, else "
        "~/.local/state/celery-events-exporter.",
    )
    tasks_retention: float = setting(
        7 * 86400.0,
        flag="--tasks.retention",
        parse=duration,
        metavar="DURATION",
        show_default=lambda _: "7d",
        help="How long a task stays in the history after its last event (30s, 12h, 7d as "
        "Prometheus writes durations; 0 keeps tasks forever).",
    )
    tasks_failed_retention: float = setting(
        30 * 86400.0,
        flag="--tasks.failed-retention",
        parse=duration,
        metavar="DURATION",
        show_default=lambda _: "30d",
        help="How long a FAILURE, LOST, REVOKED or REJECTED task stays in the history after its "
        "last event (0 keeps them forever).",
    )
    tasks_max_bytes: int = setting(
        0,
        flag="--tasks.max-bytes",
        parse=size(0),
        metavar="BYTES",
        help="SQLite only: past this many bytes of history the oldest tasks are deleted first, "
        "whatever their retention (10GiB, ...). 0 sets no budget.",
    )
    tasks_buffer_bytes: int = setting(
        64 * 1024 * 1024,
        flag="--tasks.buffer-bytes",
        parse=size(65536),
        metavar="BYTES",
        show_default=lambda _: "64MiB",
        help="Bytes of task events the history holds while its database is slow or down, or a "
        "burst is being counted, within what the intake backlog leaves of "
        "--max-intake-backlog-bytes (the two share it, the backlog first); past it new ones are "
        'dropped and counted in celery_exporter_task_history_dropped_total{reason="buffer_full"}.',
    )
    tasks_search_scan_rows: int = setting(
        500_000,
        flag="--tasks.search-scan-rows",
        parse=integer(0, 1_000_000_000),
        metavar="N",
        help="SQLite only: rows of history an /api/tasks page reads at most when a condition no "
        "index serves (free text, result:, args:, kwargs:, exception:, -term, name= and "
        "worker= containment) must be checked row by row, newest first; if they run out "
        "before the page is full, the page is short, X-Tasks-Scanned says so and X-Next-Page "
        "continues the scan. 0 reads until the page is full (a rare term scans the whole "
        "history). PostgreSQL ignores it.",
    )
    queues: tuple[str, ...] = setting(
        (),
        flag="--queue",
        parse=_not_blank,
        metavar="NAME",
        repeatable=True,
        help="A queue whose depth to poll even before any worker or task-sent event names it. "
        "Repeatable; the environment variable takes several separated by spaces. Queues the "
        "workers consume, queues seen in task-sent events and (on Redis) kombu's bound queues "
        "are watched without it.",
    )
    """Queues whose depth is always polled, besides those discovered."""
    queue_poll_interval: float = setting(
        10.0,
        flag="--queue-poll-interval",
        parse=seconds(0),
        metavar="SECONDS",
        help="Seconds between two polls of the queue depths, over a broker connection of their "
        "own. 0 turns queue polling off.",
    )
    """Seconds between two polls of the queue depths; 0 turns the poller off."""
    max_queues: int = setting(
        500,
        flag="--max-queues",
        parse=integer(1),
        metavar="N",
        help="Queues watched at most (each costs one broker round trip per poll and a few "
        "series); queue names discovered past it are counted in "
        "celery_exporter_queues_dropped_total. Also the distinct queue label values of "
        'celery_task_sent_total; later ones count as queue="other".',
    )
    """Queues watched at most; names discovered past it are counted, not watched."""
    rabbitmq_management_url: str | None = setting(
        None,
        flag="--rabbitmq-management-url",
        parse=parse_management_url,
        metavar="URL",
        help="RabbitMQ management API (http://HOST:15672), without credentials: read each poll "
        "for celery_queue_unacked_messages, and to discover the virtual host's queues.",
    )
    """Where the poller reads unacked counts; None reads only what passive declares tell."""
    rabbitmq_management_credentials_file: str | None = setting(
        None,
        flag="--rabbitmq-management-credentials-file",
        parse=_credentials_file,
        metavar="FILE",
        help="File with USER:PASSWORD on its first line for the management API (never a flag "
        "value, which ps shows); without it the broker URL's user and password.",
    )
    max_intake_backlog_bytes: int = setting(
        DEFAULT_BUDGET_BYTES,
        flag="--max-intake-backlog-bytes",
        parse=size(4096),
        metavar="BYTES",
        help="Bytes of broker messages read but not yet counted that the exporter holds (a "
        "burst faster than it counts), as a number or with a unit (256MiB, 1GiB). Past it, new "
        "messages are dropped and counted in celery_exporter_events_dropped_total{reason="
        '"intake_budget"} while the broker socket keeps being drained, so Redis never cuts the '
        "exporter off. The task history's buffer (--tasks.buffer-bytes) shares this budget and "
        "gives way: when the backlog needs the room, the history drops its newest buffered "
        'events (celery_exporter_task_history_dropped_total{reason="buffer_full"}), never the '
        "backlog a message.",
    )
    """Byte budget of the messages read but not yet counted, shared with the task history's
    buffer (which gives way); past it new messages are dropped."""
    log_level: str = setting(
        "info",
        flag="--log.level",
        parse=choice(LOG_LEVELS),
        metavar="|".join(LOG_LEVELS),
        deprecated_flags=("--log-level",),
        help="Lowest level logged.",
    )
    log_format: str = setting(
        "logfmt",
        flag="--log.format",
        parse=choice(LOG_FORMATS, accepted=DEPRECATED_LOG_FORMATS),
        metavar="|".join(LOG_FORMATS),
        deprecated_flags=("--log-format",),
        help="logfmt (key=value, as Prometheus' own exporters log) or json (one object per "
        "line). Every line is in this format, errors at start included. The former values "
        "console (now logfmt) and auto (logfmt on a terminal, json otherwise) still work.",
    )

    def __post_init__(self) -> None:
        check_broker(self.broker_url, self.broker_transport_options)
        if not self.default_secret_key_patterns and not self.secret_key_patterns:
            raise ValueError(
                "--no-default-secret-key-patterns needs at least one --secret-key-pattern"
            )

    @property
    def events(self) -> EventSettings:
        """The app's event settings, as every intake path takes them."""
        return EventSettings(
            exchange=self.event_exchange,
            queue_prefix=self.event_queue_prefix,
            queue_ttl=self.event_queue_ttl,
            queue_expires=self.event_queue_expires,
        )
