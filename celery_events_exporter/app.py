"""Wire the pieces together: broker reader -> ingest -> state -> collector -> HTTP."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client.core import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from celery_events_exporter import __version__
from celery_events_exporter.config import Config
from celery_events_exporter.control import Controller
from celery_events_exporter.decoder import Decoder, RejectionLog
from celery_events_exporter.events.body import loads
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.history import wiring as history_wiring
from celery_events_exporter.history.store import Retention
from celery_events_exporter.intake import make_reader
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger
from celery_events_exporter.parsers import ListenAddress
from celery_events_exporter.queues import wiring as queue_wiring
from celery_events_exporter.queues.collector import OnlineWorkers
from celery_events_exporter.queues.registry import consumed_queues
from celery_events_exporter.queues.tracking import OrphanCounter
from celery_events_exporter.state import State, StateSettings, TaskTracker
from celery_events_exporter.state.changes import TaskChange, TaskChangeSink
from celery_events_exporter.tasks import bounds
from celery_events_exporter.tasks.redact import Redactor, compile_secret_keys, secret_key_patterns
from celery_events_exporter.tasks.store import RecentTasks
from celery_events_exporter.web import webconfig
from celery_events_exporter.web.api import Api
from celery_events_exporter.web.history import HistoryApi
from celery_events_exporter.web.server import serve
from celery_events_exporter.web.stats import WebCollector, WebStats
from celery_events_exporter.worker_details import (
    WorkerDetailsCollector,
    WorkerDetailsPoller,
    WorkerDetailsStore,
)

log = get_logger(__name__)


SHUTDOWN_GRACE = 0.8
"""Seconds the threads get after SIGTERM before the process exits without them: each watches the
stop event, but one may be inside a broker call (a connection attempt, an inspect reply) with a
timeout of its own, and nothing it holds needs flushing (the exporter keeps no state on disk)."""


def state_settings(config: Config) -> StateSettings:
    """The state's settings are Config's fields of the same names: a setting the state needs is
    declared once, in Config, and passed on here without being listed again."""
    names = [field.name for field in dataclasses.fields(StateSettings)]
    return StateSettings(**{name: getattr(config, name) for name in names})


def build_state(
    config: Config,
    recent_tasks: RecentTasks | None = None,
    task_tracker: TaskTracker | None = None,
    task_observer: Callable[[bytes | str, float, int], None] | None = None,
) -> State:
    """The state, feeding ``recent_tasks`` (or ``task_observer``) the messages that carried
    task events and ``task_tracker`` every message's events (each if any)."""
    return State(
        state_settings(config),
        on_reject=RejectionLog(),
        task_observer=task_observer or (None if recent_tasks is None else recent_tasks.keep),
        task_tracker=task_tracker,
    )


def history_bridge(sink: TaskChangeSink) -> Callable[[bytes | str, float, int], None]:
    """TEMPORARY BRIDGE until the task ledger lands (then: ``state.subscribe(history.sink)``):
    today's ``task_observer`` hands message bodies; decode them into task changes."""

    def observe(body: bytes | str, received_at: float, task_events: int) -> None:
        try:
            decoded: Any = loads(body)
        except ValueError:
            return
        changes = [
            TaskChange(e["uuid"], e["type"], bounds.timestamp(e.get("timestamp"), received_at), e,
                       e.get("name") if isinstance(e.get("name"), str) else None, None)
            for e in (decoded if type(decoded) is list else (decoded,))
            if type(e) is dict and isinstance(e.get("uuid"), str) and isinstance(e.get("type"), str)
        ]  # fmt: skip
        if changes:
            sink(changes)

    return observe


def build_history(config: Config, redactor: Redactor) -> history_wiring.History | None:
    """The task history (None for memory://); payloads are written only when exposed."""
    return history_wiring.build(
        config.tasks_store or "",
        config.data_dir or "",
        redactor if config.expose_task_payloads else None,
        Retention(
            default=config.tasks_retention,
            failed=config.tasks_failed_retention,
            pending=config.forget_pending_tasks_after,
            max_bytes=config.tasks_max_bytes,
        ),
        config.tasks_buffer_bytes,
    )


def build_store(config: Config) -> RecentTasks | None:
    """The recent-task store of the Tasks view; None when it is turned off."""
    if config.max_recent_tasks <= 0:
        return None
    return RecentTasks(config.max_recent_tasks, config.forget_pending_tasks_after)


def build_redactor(config: Config) -> Redactor:
    return Redactor(
        compile_secret_keys(
            secret_key_patterns(
                config.secret_key_patterns, defaults=config.default_secret_key_patterns
            )
        ),
        config.max_payload_length,
    )


def build_api(
    config: Config,
    state: State,
    store: RecentTasks | None,
    stats: WebStats,
    history: history_wiring.History | None = None,
    details: WorkerDetailsStore | None = None,
) -> Api:
    return Api(
        state,
        store,
        build_redactor(config),
        expose_payloads=config.expose_task_payloads,
        clock=time.time,
        stats=stats,
        history=(
            None
            if history is None
            else HistoryApi(history.store, expose_payloads=config.expose_task_payloads)
        ),
        details=details,
    )


def build_queues(
    config: Config,
    store: RecentTasks | None,
    online_workers: OnlineWorkers,
    count_orphaned: OrphanCounter,
    on_orphaned: Callable[[bytes, float, int], None] | None = None,
) -> queue_wiring.Queues:
    """The queue tracking (to be fed by the state) and the queue-depth poller (unless turned
    off); orphaned tasks are counted by the state and go to the recent-task store."""
    return queue_wiring.build(
        config.broker_url,
        config.broker_transport_options,
        named=config.queues,
        interval=config.queue_poll_interval,
        limit=config.max_queues,
        max_tracked_tasks=config.max_tracked_tasks,
        max_label_length=config.max_label_length,
        online_workers=online_workers,
        count_orphaned=count_orphaned,
        on_orphaned=store.keep if store is not None else on_orphaned,
        management=(
            queue_wiring.ManagementSettings(
                config.rabbitmq_management_url, config.rabbitmq_management_credentials_file
            )
            if config.rabbitmq_management_url
            else None
        ),
    )


def run(config: Config) -> int:
    """Run until SIGTERM or SIGINT, then stop the threads; returns the process exit code."""
    stop = threading.Event()
    inbox = IntakeBacklog(config.max_intake_backlog_bytes)
    history = build_history(config, build_redactor(config))
    store = build_store(config) if history is None else None
    observer = None if history is None else history_bridge(history.writer.sink)
    # The queue tracking is fed by the state; it asks the state which workers are online and
    # has it count the orphaned tasks it finds.
    queues = build_queues(
        config,
        store,
        online_workers=lambda now: state.online_workers(now),
        count_orphaned=lambda tasks: state.count_orphaned(tasks),
        on_orphaned=observer,
    )
    state = build_state(config, store, queues.tracking, observer)
    web_stats = WebStats()
    details = WorkerDetailsStore() if config.worker_details_interval > 0 else None
    api = build_api(config, state, store, web_stats, history, details)
    web_config = webconfig.load(config.web_config_file) if config.web_config_file else None
    status = BrokerStatus()
    decoder = Decoder(state, inbox)
    reader = make_reader(
        config.broker_url,
        config.broker_transport_options,
        inbox,
        status,
        config.events,
        on_reject=state.reject,
    )
    controller = Controller(
        config.broker_url,
        config.broker_transport_options,
        status,
        state,
        enable_events=config.enable_events,
        inspect_workers=config.inspect_workers,
        interval=config.broadcast_interval,
        event_exchange=config.event_exchange,
        on_task_names=None if api.store is None else api.store.learn_names,
        on_active_queues=(
            None
            if queues.poller is None
            else lambda replies: queues.registry.set_worker_queues(consumed_queues(replies))
        ),
    )

    runtime = CollectorRegistry(auto_describe=False)  # process_*, python_*: the usual extras
    ProcessCollector(registry=runtime)
    PlatformCollector(registry=runtime)
    GCCollector(registry=runtime)
    extras: list[Collector] = [queues.collector, WebCollector(web_stats), runtime]
    details_poller = None
    if details is not None:
        extras.append(WorkerDetailsCollector(details))
        details_poller = WorkerDetailsPoller(
            config.broker_url,
            config.broker_transport_options,
            status,
            state.online_workers,
            details,
            interval=config.worker_details_interval,
        )
    if history is not None:
        extras.append(history.collector)
    page = MetricsPage(EventsCollector(state, status, decoder, recent_tasks=store), extras)

    server = serve(
        config.listen,
        page,
        is_ready=lambda: status.connected,
        api=api,
        web_config=web_config,
        stats=web_stats,
        telemetry_path=config.telemetry_path,
    )
    log.info(
        "exporter started",
        version=__version__,
        listen=str(ListenAddress(config.listen.host, server.server_address[1])),
        telemetry_path=config.telemetry_path,
        broker=reader.safe_url(),
        event_exchange=config.event_exchange,
        worker_label=config.worker_label,
        enable_events=config.enable_events,
        tls=web_config is not None and web_config.tls is not None,
        basic_auth=web_config is not None and web_config.basic_auth is not None,
        recent_tasks=config.max_recent_tasks if history is None else None,
        task_history=history.store.description if history is not None else "memory://",
        task_payloads="exposed" if config.expose_task_payloads else "hidden",
        queue_poll_interval=config.queue_poll_interval if queues.poller is not None else None,
    )

    threads = [
        threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        for name, target in (
            ("ingest", decoder.run),
            ("broker-reader", reader.run),
            ("controller", controller.run),
            *([("queue-poller", queues.poller.run)] if queues.poller is not None else []),
            *([("task-history", history.writer.run)] if history is not None else []),
            *([("worker-details", details_poller.run)] if details_poller is not None else []),
        )
    ]
    for thread in threads:
        thread.start()

    def shut_down(signum: int) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop.set()

    _on_signals(shut_down)
    exit_code = 0
    while not stop.wait(1.0):
        dead = [thread.name for thread in threads if not thread.is_alive()]
        if dead:
            log.error("a thread died; exiting so that a supervisor restarts us", threads=dead)
            exit_code = 1
            stop.set()
    deadline = time.monotonic() + SHUTDOWN_GRACE
    server.shutdown()  # meanwhile the threads wind down
    server.server_close()
    if history is not None:
        history_thread = next(t for t in threads if t.name == "task-history")
        history_thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not history_thread.is_alive():
            history.writer.final_flush()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [thread.name for thread in threads if thread.is_alive()]
    if left:
        log.debug("threads still in a broker call are left behind", threads=left)
    log.info("exporter stopped")
    return exit_code


def _on_signals(handler: Callable[[int], None]) -> None:
    def _handle(signum: int, frame: FrameType | None) -> None:
        handler(signum)

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGHUP, _hang_up)


def _hang_up(signum: int, frame: FrameType | None) -> None:
    """SIGHUP, which logrotate and terminals send, used to end the process (Python's default):
    the exporter logs to stderr and reads no file it could reload, so there is nothing to do."""
    log.info("SIGHUP ignored: logs go to stderr, nothing to reopen or reload")
