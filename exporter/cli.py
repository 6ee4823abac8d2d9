"""Command line: flags, each with a CELERY_EXPORTER_* environment twin, into one typed Config.

click comes with Celery already; it gives us environment twins, ``--help`` that shows them, and a
one-line error for a bad flag.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from kombu import Connection

from exporter import __version__
from exporter import logging as exporter_logging
from exporter.config import (
    DEFAULT_BROKER_URL,
    DEFAULT_PORT,
    DEFAULT_QUEUE_WAIT_BUCKETS,
    DEFAULT_RUNTIME_BUCKETS,
    Config,
    ListenAddress,
    parse_buckets,
    parse_listen_address,
    parse_transport_option,
)
from exporter.intake.backlog import DEFAULT_BUDGET_BYTES
from exporter.intake.event_queue import (
    DEFAULT_EVENT_EXCHANGE,
    DEFAULT_EVENT_QUEUE_EXPIRES,
    DEFAULT_EVENT_QUEUE_PREFIX,
    DEFAULT_EVENT_QUEUE_TTL,
)
from exporter.tasks.redact import DEFAULT_SECRET_KEY_PATTERNS, compile_secret_keys
from exporter.web import webconfig

ENV_PREFIX = "CELERY_EXPORTER_"


def _env(name: str) -> str:
    return ENV_PREFIX + name


def _buckets_text(bounds: tuple[float, ...]) -> str:
    return ",".join(f"{b:g}" for b in bounds)


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A flag value read by one of exporter.config's parsers; their ValueError becomes click's
    one-line usage error. A value that is already parsed (a default) passes through."""

    def __init__(self, name: str, parse: Callable[[str], Any], parsed: type) -> None:
        self.name = name
        self._parse = parse
        self._parsed = parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self._parsed):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


LISTEN_ADDRESS = _Parsed("HOST:PORT", parse_listen_address, ListenAddress)
BUCKETS = _Parsed("BOUNDS", parse_buckets, tuple)
TRANSPORT_OPTION = _Parsed("KEY=VALUE", parse_transport_option, tuple)


def _check_web_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Load the file once here so that a mistake stops the exporter with a one-line error."""
    if value:
        try:
            webconfig.load(value)
        except webconfig.WebConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value or None


def _check_secret_key_patterns(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for pattern in value:
        try:
            compile_secret_keys([pattern])
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _check_not_blank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty")
    return value


def _check_broker_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Reject a URL kombu cannot even interpret; an unreachable broker is retried instead."""
    try:
        Connection(value).transport_cls  # noqa: B018 (resolves the transport or raises)
        Connection(value).transport  # noqa: B018
    except Exception as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.BadParameter(f"cannot use broker URL: {message}") from None
    return value


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--broker-url",
    envvar=_env("BROKER_URL"),
    show_envvar=True,
    default=DEFAULT_BROKER_URL,
    show_default=True,
    callback=_check_broker_url,
    help="Celery broker URL (redis://, rediss://, amqp://, ...), as the workers use it.",
)
@click.option(
    "--broker-transport-option",
    "transport_options",
    envvar=_env("BROKER_TRANSPORT_OPTION"),
    show_envvar=True,
    multiple=True,
    type=TRANSPORT_OPTION,
    help="A kombu transport option as KEY=VALUE; VALUE may be JSON. Repeatable; the environment "
    "variable takes several separated by spaces.",
)
@click.option(
    "--event-exchange",
    envvar=_env("EVENT_EXCHANGE"),
    show_envvar=True,
    default=DEFAULT_EVENT_EXCHANGE,
    show_default=True,
    callback=_check_not_blank,
    help="The exchange the workers publish events to: the app's event_exchange setting. An "
    "exporter bound to another exchange receives nothing.",
)
@click.option(
    "--event-queue-prefix",
    envvar=_env("EVENT_QUEUE_PREFIX"),
    show_envvar=True,
    default=DEFAULT_EVENT_QUEUE_PREFIX,
    show_default=True,
    callback=_check_not_blank,
    help="Prefix of the exporter's event queue name, as the app's event_queue_prefix (broker "
    "policies often match it).",
)
@click.option(
    "--event-queue-ttl",
    envvar=_env("EVENT_QUEUE_TTL"),
    show_envvar=True,
    default=DEFAULT_EVENT_QUEUE_TTL,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds an event may wait in the exporter's queue before RabbitMQ drops it "
    "(x-message-ttl), as the app's event_queue_ttl; 0 sets none.",
)
@click.option(
    "--event-queue-expires",
    envvar=_env("EVENT_QUEUE_EXPIRES"),
    show_envvar=True,
    default=DEFAULT_EVENT_QUEUE_EXPIRES,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds the exporter's queue outlives its last consumer (x-expires), as the app's "
    "event_queue_expires; 0 sets none.",
)
@click.option(
    "--listen-address",
    envvar=_env("LISTEN_ADDRESS"),
    show_envvar=True,
    default=f":{DEFAULT_PORT}",
    show_default=True,
    type=LISTEN_ADDRESS,
    help="Address to serve /metrics and /healthz on; an empty host means every interface.",
)
@click.option(
    "--worker-timeout",
    envvar=_env("WORKER_TIMEOUT"),
    show_envvar=True,
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds without a heartbeat before a worker reads offline. 0 applies Celery's own "
    "rule: twice the heartbeat interval the worker announces.",
)
@click.option(
    "--purge-offline-worker-after",
    envvar=_env("PURGE_OFFLINE_WORKER_AFTER"),
    show_envvar=True,
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds after which an offline worker's series (its gauges, and its task series when "
    "task metrics carry the worker label) are dropped. 0 keeps them forever.",
)
@click.option(
    "--runtime-buckets",
    envvar=_env("RUNTIME_BUCKETS"),
    show_envvar=True,
    default=_buckets_text(DEFAULT_RUNTIME_BUCKETS),
    show_default=True,
    type=BUCKETS,
    help="Upper bounds, in seconds, of the task runtime histogram buckets.",
)
@click.option(
    "--queue-wait-buckets",
    envvar=_env("QUEUE_WAIT_BUCKETS"),
    show_envvar=True,
    default=_buckets_text(DEFAULT_QUEUE_WAIT_BUCKETS),
    show_default=True,
    type=BUCKETS,
    help="Upper bounds, in seconds, of the queue-wait (received to started) histogram buckets.",
)
@click.option(
    "--worker-label/--no-worker-label",
    envvar=_env("WORKER_LABEL"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Label task metrics with the worker's hostname. Turn off for fleets whose hostnames "
    "churn (Kubernetes pods) to keep the number of series bounded.",
)
@click.option(
    "--enable-events/--no-enable-events",
    envvar=_env("ENABLE_EVENTS"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Broadcast enable_events to the workers periodically, so that workers started "
    "without -E send task events too.",
)
@click.option(
    "--inspect-workers/--no-inspect-workers",
    envvar=_env("INSPECT_WORKERS"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Ask the workers for their pool size (inspect stats) periodically, to export "
    "celery_worker_concurrency.",
)
@click.option(
    "--broadcast-interval",
    envvar=_env("BROADCAST_INTERVAL"),
    show_envvar=True,
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds between the broadcasts to the workers (enable_events, inspect stats); "
    "they are also sent at every (re)connection to the broker.",
)
@click.option(
    "--max-tracked-tasks",
    envvar=_env("MAX_TRACKED_TASKS"),
    show_envvar=True,
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Task uuids remembered between task-received and the task's end, to name the events "
    "that carry no task name; the oldest are forgotten first.",
)
@click.option(
    "--max-exception-classes",
    envvar=_env("MAX_EXCEPTION_CLASSES"),
    show_envvar=True,
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="Distinct exception classes labelled in celery_task_exceptions_total; later ones "
    'count as exception="other".',
)
@click.option(
    "--web-config-file",
    envvar=_env("WEB_CONFIG_FILE"),
    show_envvar=True,
    default=None,
    type=click.Path(dir_okay=False),
    callback=_check_web_config,
    help="Prometheus exporter-toolkit web config (YAML): basic_auth_users with bcrypt hashes "
    "and tls_server_config. With users, every path but /healthz and /readyz needs them.",
)
@click.option(
    "--max-recent-tasks",
    envvar=_env("MAX_RECENT_TASKS"),
    show_envvar=True,
    default=10_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Tasks kept in memory for /api/tasks (the Tasks table); the oldest are dropped first. "
    "0 turns the store off.",
)
@click.option(
    "--expose-task-payloads/--no-expose-task-payloads",
    envvar=_env("EXPOSE_TASK_PAYLOADS"),
    show_envvar=True,
    default=False,
    show_default=True,
    help="Serve task args, kwargs and results in /api/tasks. They often hold personal data and "
    "secrets: values under secret-looking keys are masked, long values cut.",
)
@click.option(
    "--secret-key-pattern",
    "secret_key_patterns",
    envvar=_env("SECRET_KEY_PATTERN"),
    show_envvar=True,
    multiple=True,
    callback=_check_secret_key_patterns,
    help="Regex (case-insensitive, searched) of dict keys, keyword names and flags whose values "
    "are masked in served payloads, added to the default list (see "
    "--no-default-secret-key-patterns). Repeatable; the environment variable takes several "
    "separated by spaces.",
)
@click.option(
    "--default-secret-key-patterns/--no-default-secret-key-patterns",
    envvar=_env("DEFAULT_SECRET_KEY_PATTERNS"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Mask the values of keys matching the default patterns: "
    + " ".join(DEFAULT_SECRET_KEY_PATTERNS)
    + ". Turned off, only --secret-key-pattern's patterns mask (at least one is then needed).",
)
@click.option(
    "--max-payload-length",
    envvar=_env("MAX_PAYLOAD_LENGTH"),
    show_envvar=True,
    default=1024,
    show_default=True,
    type=click.IntRange(min=16, max=1_000_000),
    help="Characters of args, kwargs, result, exception and traceback served per task; longer "
    "values are cut with an ellipsis (tracebacks keep their end).",
)
@click.option(
    "--queue",
    "queues",
    envvar=_env("QUEUE"),
    show_envvar=True,
    multiple=True,
    help="A queue whose depth to poll even before any worker or task-sent event names it. "
    "Repeatable; the environment variable takes several separated by spaces. Queues the workers "
    "consume, queues seen in task-sent events and (on Redis) kombu's bound queues are watched "
    "without it.",
)
@click.option(
    "--queue-poll-interval",
    envvar=_env("QUEUE_POLL_INTERVAL"),
    show_envvar=True,
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between two polls of the queue depths, over a broker connection of their own. "
    "0 turns queue polling off.",
)
@click.option(
    "--max-queues",
    envvar=_env("MAX_QUEUES"),
    show_envvar=True,
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Queues watched at most (each costs one broker round trip per poll and a few series); "
    "queue names discovered past it are counted in celery_exporter_queues_dropped_total.",
)
@click.option(
    "--max-intake-backlog-bytes",
    envvar=_env("MAX_INTAKE_BACKLOG_BYTES"),
    show_envvar=True,
    default=DEFAULT_BUDGET_BYTES,
    show_default=True,
    type=click.IntRange(min=4096),
    help="Bytes of broker messages read but not yet counted that the exporter holds (a burst "
    "faster than it counts). Past it, new messages are dropped and counted in "
    'celery_exporter_events_dropped_total{reason="intake_budget"} while the broker socket '
    "keeps being drained, so Redis never cuts the exporter off.",
)
@click.option(
    "--log-level",
    envvar=_env("LOG_LEVEL"),
    show_envvar=True,
    default="info",
    show_default=True,
    type=click.Choice(exporter_logging.LOG_LEVELS, case_sensitive=False),
    help="Lowest level logged.",
)
@click.option(
    "--log-format",
    envvar=_env("LOG_FORMAT"),
    show_envvar=True,
    default="auto",
    show_default=True,
    type=click.Choice(exporter_logging.LOG_FORMATS, case_sensitive=False),
    help="json (one object per line), console (readable), or auto: console on a terminal, "
    "json otherwise.",
)
@click.version_option(__version__, "--version", prog_name="celery-events-exporter")
def command(**options: Any) -> None:
    """Export Celery's event stream as Prometheus metrics at /metrics."""
    config = Config(
        broker_url=options["broker_url"],
        broker_transport_options=dict(options["transport_options"]),
        listen=options["listen_address"],
        event_exchange=options["event_exchange"],
        event_queue_prefix=options["event_queue_prefix"],
        event_queue_ttl=options["event_queue_ttl"],
        event_queue_expires=options["event_queue_expires"],
        worker_timeout=options["worker_timeout"],
        purge_offline_worker_after=options["purge_offline_worker_after"],
        runtime_buckets=options["runtime_buckets"],
        queue_wait_buckets=options["queue_wait_buckets"],
        worker_label=options["worker_label"],
        enable_events=options["enable_events"],
        inspect_workers=options["inspect_workers"],
        broadcast_interval=options["broadcast_interval"],
        max_tracked_tasks=options["max_tracked_tasks"],
        max_exception_classes=options["max_exception_classes"],
        log_level=options["log_level"].lower(),
        log_format=options["log_format"].lower(),
        web_config_file=options["web_config_file"],
        max_recent_tasks=options["max_recent_tasks"],
        expose_task_payloads=options["expose_task_payloads"],
        secret_key_patterns=tuple(options["secret_key_patterns"]),
        default_secret_key_patterns=options["default_secret_key_patterns"],
        max_payload_length=options["max_payload_length"],
        max_intake_backlog_bytes=options["max_intake_backlog_bytes"],
        queues=tuple(options["queues"]),
        queue_poll_interval=options["queue_poll_interval"],
        max_queues=options["max_queues"],
    )
    if not config.default_secret_key_patterns and not config.secret_key_patterns:
        raise click.UsageError(
            "--no-default-secret-key-patterns needs at least one --secret-key-pattern"
        )
    exporter_logging.configure(config.log_level, config.log_format)

    from exporter.app import run

    try:
        code = run(config)
    except OSError as exc:  # the listen address is taken or not ours
        raise click.ClickException(f"cannot listen on {config.listen}: {exc.strerror}") from None
    sys.exit(code)


def main() -> None:
    command(auto_envvar_prefix=None)
