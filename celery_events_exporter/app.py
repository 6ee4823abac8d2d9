"""Wire the pieces together: broker reader -> ingest -> state -> collector -> HTTP."""

from __future__ import annotations

import dataclasses
import functools
import gc
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from celery_events_exporter import __version__, allocator, signals
from celery_events_exporter.config import Config
from celery_events_exporter.control import Controller
from celery_events_exporter.decoder import Decoder, DecoderCollector, RejectionLog
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.history import wiring as history_wiring
from celery_events_exporter.history.store import Retention
from celery_events_exporter.intake import make_reader
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.status import BrokerStatus, BrokerStatusCollector
from celery_events_exporter.logging import get_logger
from celery_events_exporter.parsers import ListenAddress
from celery_events_exporter.queues import wiring as queue_wiring
from celery_events_exporter.scrapes import Scrapes
from celery_events_exporter.state import State, StateSettings
from celery_events_exporter.tasks.collector import RecentTasksCollector
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


SHUTDOWN_GRACE = 0.5
"""Seconds the threads get after SIGTERM before the process exits without them: each watches the
stop event, but one may be inside a broker call (a connection attempt, an inspect reply) with a
timeout of its own. The controller spends whole seconds collecting inspect replies, so a SIGTERM
often waits out the grace; the interpreter's exit comes on top, and the process must be gone
within a second of the signal (the README says so)."""

LAST_WRITE_GRACE = 0.8
"""Seconds a thread with something to write at the end (``Exporter.last_writes``: the task
history) gets instead; its last write happens only when it ended within them. With 0.5 s the
image's history lost its last rows in 2 of 13 runs (tests/test_image.py)."""


def state_settings(config: Config) -> StateSettings:
    """The state's settings are Config's fields of the same names: a setting the state needs is
    declared once, in Config, and passed on here without being listed again."""
    names = [field.name for field in dataclasses.fields(StateSettings)]
    return StateSettings(**{name: getattr(config, name) for name in names})


def build_state(
    config: Config,
    recent_tasks: RecentTasks | None = None,
    history: history_wiring.History | None = None,
    scrapes: Scrapes | None = None,
) -> State:
    """The state, handing ``recent_tasks`` and ``history`` (each if any) its task changes
    (orphaned tasks too: the sweep's ``task-orphaned`` changes); its batches give way to
    ``scrapes``."""
    state = State(state_settings(config), on_reject=RejectionLog(), scrapes=scrapes)
    if recent_tasks is not None:
        state.subscribe(recent_tasks.take)
    if history is not None:
        state.subscribe(history.writer.sink)
    return state


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
            else HistoryApi(
                history.store,
                expose_payloads=config.expose_task_payloads,
                search_scan_rows=config.tasks_search_scan_rows,
            )
        ),
        details=details,
    )


def build_queues(config: Config, state: State) -> queue_wiring.Queues:
    """The queue-depth poller (unless turned off) and the queue families, which read the
    state's task ledger (and correct its waiting tasks with what the broker says)."""
    return queue_wiring.build(
        config.broker_url,
        config.broker_transport_options,
        named=config.queues,
        interval=config.queue_poll_interval,
        limit=config.max_queues,
        ledger=state,
        management=(
            queue_wiring.ManagementSettings(
                config.rabbitmq_management_url, config.rabbitmq_management_credentials_file
            )
            if config.rabbitmq_management_url
            else None
        ),
    )


@dataclasses.dataclass
class Exporter:
    """The stages, built and connected, not running yet."""

    threads: list[tuple[str, Callable[[threading.Event], None]]]
    """(name, the function a thread runs until the stop event is set)."""
    server: ThreadingHTTPServer
    started: dict[str, Any]
    """What the start-up log line says."""
    last_writes: dict[str, Callable[[], None]] = dataclasses.field(default_factory=dict)
    """thread name -> what to run once that thread has ended at shutdown (the task history's
    last flush); such a thread is given the grace first."""


def wire(config: Config) -> Exporter:
    """Build every stage and connect them: reader -> backlog -> decoder -> state -> (store,
    collectors) -> HTTP; the controller and the queue poller beside them."""
    inbox = IntakeBacklog(config.max_intake_backlog_bytes)
    history = build_history(config, build_redactor(config))
    if history is not None:  # one budget for the events held, the backlog first (backlog.py)
        inbox.spill = history.writer
        history.writer.room = inbox.room
    store = build_store(config) if history is None else None
    scrapes = Scrapes()
    state = build_state(config, store, history, scrapes)
    queues = build_queues(config, state)
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
        on_task_names=None if store is None else store.learn_names,
        on_active_queues=None if queues.poller is None else queues.registry.take_replies,
    )

    runtime = CollectorRegistry(auto_describe=False)  # process_*, python_*: the usual extras
    ProcessCollector(registry=runtime)
    PlatformCollector(registry=runtime)
    GCCollector(registry=runtime)
    extras: list[Collector] = [
        BrokerStatusCollector(status),
        DecoderCollector(decoder),
        *([] if store is None else [RecentTasksCollector(store, decoder.behind)]),
        queues.collector,
        WebCollector(web_stats),
        runtime,
    ]
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
    page = MetricsPage(EventsCollector(state), extras)

    server = serve(
        config.listen,
        page,
        is_ready=status.is_connected,
        api=api,
        web_config=web_config,
        stats=web_stats,
        telemetry_path=config.telemetry_path,
        scrapes=scrapes,
    )
    threads: list[tuple[str, Callable[[threading.Event], None]]] = [
        ("ingest", decoder.run),
        ("broker-reader", reader.run),
        ("controller", controller.run),
    ]
    if queues.poller is not None:
        threads.append(("queue-poller", queues.poller.run))
    last_writes: dict[str, Callable[[], None]] = {}
    if history is not None:
        threads.append(
            (
                "task-history",
                functools.partial(
                    history.writer.run, ingest_behind=decoder.behind, scrapes=scrapes
                ),
            )
        )
        last_writes["task-history"] = history.writer.final_flush
    if details_poller is not None:
        threads.append(("worker-details", details_poller.run))
    started = {
        "version": __version__,
        "listen": str(ListenAddress(config.listen.host, server.server_address[1])),
        "telemetry_path": config.telemetry_path,
        "broker": reader.safe_url(),
        "event_exchange": config.event_exchange,
        "worker_label": config.worker_label,
        "enable_events": config.enable_events,
        "tls": web_config is not None and web_config.tls is not None,
        "basic_auth": web_config is not None and web_config.basic_auth is not None,
        "recent_tasks": config.max_recent_tasks if history is None else None,
        "task_history": history.store.description if history is not None else "memory://",
        "task_payloads": "exposed" if config.expose_task_payloads else "hidden",
        "queue_poll_interval": (config.queue_poll_interval if queues.poller is not None else None),
    }
    return Exporter(threads, server, started, last_writes)


FULL_COLLECTION_EVERY = 1000
"""Collections of the middle generation between two full ones (CPython's default: 10)."""


def settle() -> None:
    """Move what start-up built (modules, classes, functions, the stages) to the garbage
    collector's permanent generation: it lives as long as the process, and a full collection,
    which the ingest thread's allocations set off now and then, no longer walks it.

    Then make full collections rare (``FULL_COLLECTION_EVERY``). What the exporter holds for
    long is buffered data: the intake backlog's messages, the history's batches and folded
    rows, tens of thousands of containers with no cycle among them, and each full collection
    walked them all again; with the history writing, that was a fifth of the process's CPU
    (bench/README.md, "Full collections"). The young generations are collected as before, so a
    cycle that dies young (an exception's traceback) is freed as soon as it was."""
    gc.collect()
    gc.freeze()
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, FULL_COLLECTION_EVERY)


def run(config: Config) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP is ignored: ``signals.py``), then stop the
    threads; returns the process exit code."""
    allocator.one_arena()  # before any thread starts (allocator.py)
    exporter = wire(config)
    settle()
    log.info("exporter started", **exporter.started)
    stop = threading.Event()
    signals.install(stop)
    return supervise(exporter, stop)


def supervise(exporter: Exporter, stop: threading.Event) -> int:
    """Start the stages' threads and watch them until ``stop`` is set; a thread that dies ends
    the process (exit code 1) so that a supervisor restarts it. Then stop the HTTP server and
    give the threads ``SHUTDOWN_GRACE`` to wind down, ``LAST_WRITE_GRACE`` those with a last
    write."""
    threads = [
        threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        for name, target in exporter.threads
    ]
    for thread in threads:
        thread.start()
    exit_code = 0
    while not stop.wait(1.0):
        dead = [thread.name for thread in threads if not thread.is_alive()]
        if dead:
            log.error("a thread died; exiting so that a supervisor restarts us", threads=dead)
            exit_code = 1
            stop.set()
    stopping = time.monotonic()
    exporter.server.shutdown()  # meanwhile the threads wind down
    exporter.server.server_close()
    for thread in threads:
        last_write = exporter.last_writes.get(thread.name)
        if last_write is not None:
            thread.join(timeout=max(0.0, stopping + LAST_WRITE_GRACE - time.monotonic()))
            if not thread.is_alive():
                last_write()
    for thread in threads:
        thread.join(timeout=max(0.0, stopping + SHUTDOWN_GRACE - time.monotonic()))
    left = [thread.name for thread in threads if thread.is_alive()]
    if left:
        log.debug("threads still in a broker call are left behind", threads=left)
    log.info("exporter stopped")
    return exit_code
