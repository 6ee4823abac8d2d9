"""Broadcasts to the workers: wake them up (so they announce themselves at once), turn their
task events on (so workers started without ``-E`` still send them), and ask their pool size
(heartbeats do not carry it).

A worker just heard of (its worker-online or first heartbeat) is greeted at once, not at the
next periodic broadcast: its task events are switched on (a broadcast with that destination),
its registered tasks' series are created at 0, and the names of the tasks it runs and holds
reserved are learnt (their later events carry none). The names are asked of every worker at
each (re)connection too: an exporter restarted with tasks in flight names their ends.

Any client of the broker can answer an inspect request (the request, with its ticket, goes to
a fanout exchange), so replies are screened before they count (``Replies``): only workers the
exporter heard from itself (events), each answering once per request, within a bounded number
of replies, entries and seconds; a ``stats`` reply only from the process the heartbeats came from
(their ``pid``) and never below the heartbeats' ``active``; names learnt from replies never
displace a name that events gave. What is left out is counted
(``celery_exporter_control_replies_dropped``) and logged.

All go over the broker's control exchange, on a connection of their own: kombu connections are
not shared across threads. Every broker operation on it is bounded (``CONTROL_TIMEOUT``): a broker
that stops answering fails the broadcast within seconds, with a log line and a count, and the
next one tries again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Connection

from celery_events_exporter.broker_errors import ERROR_REASONS, error_reason
from celery_events_exporter.broker_options import (
    EXPORTER_ONLY_OPTIONS,
    broker_connection,
    mask_url,
)
from celery_events_exporter.intake import compat
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger
from celery_events_exporter.state import State

log = get_logger(__name__)

INSPECT_TIMEOUT = 1.0
"""Seconds to collect inspect replies; a worker too busy to answer is asked again next time."""

STOP_CHECK = 0.2
"""Seconds between looks at the stop event while waiting for the next broadcast: a wait of a
whole broadcast interval would hold a SIGTERM up for that long."""


CONTROL_TIMEOUT = 3.0
"""Seconds one broker operation of the controller may take: a connection attempt, a write, the
answer to a command (a queue declaration, a Redis command). Their defaults are none for Redis
and py-amqp: a frozen broker (its kernel keeps the TCP connection open) held a broadcast, and
every greeting behind it, until the broker answered again."""

BOUNDED_OPTIONS = {
    "redis": ("socket_timeout", "socket_connect_timeout"),
    "amqp": ("connect_timeout", "read_timeout", "write_timeout"),
}
"""The transport options that bound each kind of broker's socket operations."""


def control_transport_options(broker_url: str, transport_options: dict[str, Any]) -> dict[str, Any]:
    """The transport options of the controller's connection: the user's, with every socket
    operation bounded by ``CONTROL_TIMEOUT`` (or the user's shorter value), and without the
    exporter's own options (py-amqp would be handed them as connection arguments)."""
    options = {k: v for k, v in transport_options.items() if k not in EXPORTER_ONLY_OPTIONS}
    driver = broker_connection(broker_url, options).transport.driver_type
    for name in BOUNDED_OPTIONS.get(driver, ()):
        given = options.get(name)  # a number if given (exporter.broker_options checks)
        if isinstance(given, int | float) and 0 < given < CONTROL_TIMEOUT:
            options[name] = float(given)
        else:
            options[name] = CONTROL_TIMEOUT
    return options


class BoundedConnection(Connection):  # type: ignore[misc]  # kombu is untyped here (pyproject)
    """kombu's Connection, except that ``ensure`` gives up at the first connection error.

    kombu's pidbox publishes every broadcast with ``retry=True`` and no retry policy, and
    ``ensure`` then reconnects for as long as the broker does not answer, holding the controller
    (and every greeting behind it) through a freeze. Each broadcast opens a connection of its
    own, so the next broadcast is the retry."""

    def ensure(
        self, obj: Any, fun: Any, errback: Any = None, max_retries: Any = None, **options: Any
    ) -> Any:
        return super().ensure(obj, fun, errback, 0, **options)


def control_app(name: str, broker_url: str, transport_options: dict[str, Any]) -> Celery:
    """A Celery app for broadcasts and inspect requests whose every broker call is bounded: a
    connection timeout, no retry at start, ``BoundedConnection``, and a connection of its own for
    each broadcast rather than kombu's process-wide producer pool (a failed broadcast leaves
    nothing half-broken behind)."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = control_transport_options(broker_url, transport_options)
    app.conf.broker_connection_timeout = CONTROL_TIMEOUT
    app.conf.broker_connection_retry_on_startup = False
    app.amqp.Connection = BoundedConnection
    app.control.mailbox.producer_pool = None
    return app


MAX_TASK_NAME = 200
"""Longest task name taken from an inspect reply (Celery's names are module paths)."""

MAX_REPLIES = 2_000
"""Replies collected for one request at most; the rest are dropped (``too_many``)."""
COLLECT_WINDOW = 3.0
"""Seconds one request collects replies at most: kombu waits ``INSPECT_TIMEOUT`` for each next
reply, so replies dribbled in forever would hold the controller forever."""
MAX_TASKS_PER_WORKER = 1_000
"""Entries (active, reserved or scheduled tasks) taken from one worker's reply; a worker holds
its concurrency times its prefetch multiplier, and the ETA tasks it waits on."""
MAX_QUEUES_PER_WORKER = 100
"""Queues taken from one worker's ``active_queues`` reply."""

MAX_REPLY_BYTES = 4 * 1024 * 1024
"""Bytes of one reply decoded at most: a worker's largest (``active`` with 1 000 entries of
reprs, ``registered`` with thousands of names) take some hundreds of kB; a forged one of
74 MB decoded into some hundreds of MB of objects."""
TOO_BIG = "\x00too_big"
"""The hostname of the stand-in a reply over ``MAX_REPLY_BYTES`` is replaced with, undecoded
(``compat.bound_message_bodies``); no worker's hostname holds a NUL."""
_TOO_BIG_BODY = json.dumps({TOO_BIG: None}).encode()

DROP_REASONS = (
    "unknown_worker",
    "duplicate",
    "mismatch",
    "too_many",
    "too_big",
    "malformed",
    "late",
)
"""Why a reply, or part of one, was left out: from a worker the exporter never heard from
(or did not ask); one of two replies for one hostname; a ``stats`` reply that disagrees with the
heartbeats; past a count cap; over ``MAX_REPLY_BYTES``; not the shape of a Celery worker's
reply; for a request no longer collecting (its window over, or every worker asked had
answered)."""


class CollectionOver(Exception):
    """Raised by ``Replies`` from kombu's reply callback to end a collection early."""


class Replies:
    """The replies to one request, as kombu hands them over (its ``callback``): at most
    ``MAX_REPLIES`` for at most ``COLLECT_WINDOW`` seconds, ending as soon as every worker asked
    (``destination``) answered. ``by_host`` keeps each hostname's reply, or None once a second
    reply for it came (neither is believed)."""

    def __init__(self, destination: list[str] | None, drop: Callable[[str, int], None]) -> None:
        self.destination = None if destination is None else set(destination)
        self.by_host: dict[str, Any] = {}
        self._drop = drop
        self._deadline = time.monotonic() + COLLECT_WINDOW
        self._count = 0

    def __call__(self, body: Any) -> None:
        self._count += 1
        if self._count > MAX_REPLIES or time.monotonic() > self._deadline:
            self._drop("too_many", 1)
            raise CollectionOver
        if not isinstance(body, dict) or len(body) != 1:
            self._drop("malformed", 1)
            return
        ((hostname, value),) = body.items()
        if hostname == TOO_BIG:
            self._drop("too_big", 1)
            return
        if not isinstance(hostname, str) or not hostname:
            self._drop("malformed", 1)
            return
        if self.destination is not None and hostname not in self.destination:
            self._drop("unknown_worker", 1)
            return
        if hostname in self.by_host:
            if self.by_host[hostname] is not None:
                self._drop("duplicate", 2)  # the one kept so far and this one
                self.by_host[hostname] = None
            else:
                self._drop("duplicate", 1)
            return
        self.by_host[hostname] = value
        if self.destination is not None and self.destination <= self.by_host.keys():
            raise CollectionOver  # all asked answered: no need to wait out the timeout

    def answered(self) -> set[str]:
        """Every hostname that answered (twice included)."""
        return set(self.by_host)

    def from_known(self, known: set[str], label: Callable[[str], str]) -> dict[str, Any]:
        """{hostname: reply} of the hostnames that answered once and that the exporter heard
        from (``known``, hostnames as ``label`` gives them); the rest are counted dropped."""
        found: dict[str, Any] = {}
        for hostname, value in self.by_host.items():
            if value is None:
                continue
            if label(hostname) not in known:
                self._drop("unknown_worker", 1)
                continue
            found[hostname] = value
        return found


def registered_tasks(replies: Any) -> dict[str, list[str]]:
    """{worker hostname: task names} from ``inspect().registered()``'s replies. Celery lists a
    name alone, or followed by `` [attr=value ...]`` when asked for attributes: the name is
    the first word."""
    found: dict[str, list[str]] = {}
    if not isinstance(replies, dict):
        return found
    for hostname, names in replies.items():
        if not isinstance(hostname, str) or not isinstance(names, list):
            continue
        found[hostname] = [
            name.split(" ", 1)[0]
            for name in names
            if isinstance(name, str) and name and len(name) <= MAX_TASK_NAME
        ]
    return found


def capped(replies: dict[str, Any], limit: int, drop: Callable[[str, int], None]) -> dict[str, Any]:
    """``replies`` with each worker's list cut to ``limit`` entries; what is cut is dropped
    (``too_many``), and a reply that is no list is dropped (``malformed``)."""
    found: dict[str, Any] = {}
    for hostname, entries in replies.items():
        if not isinstance(entries, list):
            drop("malformed", 1)
            continue
        if len(entries) > limit:
            drop("too_many", len(entries) - limit)
            entries = entries[:limit]
        found[hostname] = entries
    return found


def task_names(*replies: Any) -> dict[str, str]:
    """{task uuid: task name} from ``inspect().active()`` / ``reserved()`` / ``scheduled()``
    replies (each {hostname: [request info, ...]}; a scheduled entry holds its request info
    under "request"); entries without a usable id and name are left out."""
    found: dict[str, str] = {}
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        for requests in reply.values():
            if not isinstance(requests, list):
                continue
            for request in requests:
                if not isinstance(request, dict):
                    continue
                if isinstance(request.get("request"), dict):  # scheduled: {eta, priority, request}
                    request = request["request"]
                uuid, name = request.get("id"), request.get("name")
                if (
                    isinstance(uuid, str)
                    and uuid
                    and len(uuid) <= MAX_TASK_NAME
                    and isinstance(name, str)
                    and name
                    and len(name) <= MAX_TASK_NAME
                ):
                    found[uuid] = name
    return found


def pool_sizes(replies: Any) -> dict[str, int]:
    """{worker hostname: max-concurrency} from ``inspect().stats()``'s replies; workers whose
    reply lacks a usable pool size are left out."""
    sizes: dict[str, int] = {}
    if not isinstance(replies, dict):
        return sizes
    for hostname, stats in replies.items():
        pool = stats.get("pool") if isinstance(stats, dict) else None
        size = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(hostname, str) and type(size) is int and size > 0:
            sizes[hostname] = size
    return sizes


def agreeing_stats(
    replies: dict[str, Any],
    heartbeats: dict[str, tuple[int | None, int | None]],
    label: Callable[[str], str],
    drop: Callable[[str, int], None],
) -> dict[str, int]:
    """Pool sizes from ``stats`` replies that agree with what the heartbeats said
    ({hostname: (pid, active)}): the reply's ``pid`` is the heartbeats' (the worker's main
    process answers both), and the pool is no smaller than the tasks the heartbeats saw
    active. Any other is dropped (``mismatch``): the heartbeats win."""
    sizes: dict[str, int] = {}
    for hostname, size in pool_sizes(replies).items():
        pid, active = heartbeats.get(label(hostname), (None, None))
        stats = replies[hostname]
        if (pid is not None and stats.get("pid") != pid) or (active is not None and size < active):
            drop("mismatch", 1)
            continue
        sizes[hostname] = size
    return sizes


SILENT_AFTER = 2
"""Broadcasts a worker must answer, with no event of it heard meanwhile, before it counts as
silent: the first may race the heartbeat that the wake-up broadcast asks for."""


class SilentWorkers:
    """Workers that answer control broadcasts but whose events never arrive.

    Control replies travel over the broker's pidbox exchange, events over the event exchange: a
    worker that answers ``inspect`` but whose heartbeats (sent every 2 s, with or without ``-E``)
    never reach the exporter publishes its events elsewhere. The usual cause is an app whose
    ``event_exchange`` differs from ``--event-exchange``; a worker run ``--without-heartbeat``
    looks the same.
    """

    def __init__(self) -> None:
        self._unheard: dict[str, int] = {}
        self.silent: list[str] = []

    def update(self, answered: set[str], heard: set[str]) -> bool:
        """Note one broadcast's repliers and which of them were ever heard; True when the set
        of silent workers changed."""
        self._unheard = {
            host: self._unheard.get(host, 0) + 1 for host in answered if host not in heard
        }
        silent = sorted(host for host, count in self._unheard.items() if count >= SILENT_AFTER)
        changed = silent != self.silent
        self.silent = silent
        return changed


GREETING_ATTEMPTS = 3
"""Greetings a new worker gets at most while it does not answer. A starting worker announces
itself (worker-online, from its Heart bootstep) before it listens for broadcasts (its Control
bootstep starts after Tasks, and on Redis subscribes only when its event loop runs): a greeting
sent at once can reach nobody, and a lost one used to wait for the periodic broadcast."""

GREETING_RETRY_AFTER = 1.0
"""Seconds before an unanswered greeting is sent again."""

MAX_GREETING_RETRIES = 1000
"""Workers waiting to be greeted again, at most: crafted hostnames that never answer must not
grow memory or broadcasts (the periodic broadcast reaches any left out)."""


class GreetingRetries:
    """Workers greeted without an answer, due to be greeted again a little later."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[str, tuple[float, int]] = {}
        """hostname -> (when it is due, greetings it had)"""

    def note(self, greeted: Sequence[str], answered: Collection[str]) -> None:
        """Note one greeting of ``greeted``, of which ``answered`` answered: each other is due
        again after ``GREETING_RETRY_AFTER`` until it had ``GREETING_ATTEMPTS``."""
        due = self._clock() + GREETING_RETRY_AFTER
        waiting = self._waiting
        for host in greeted:
            _, greetings = waiting.pop(host, (0.0, 0))
            greetings += 1
            if host in answered or greetings >= GREETING_ATTEMPTS:
                continue
            if len(waiting) < MAX_GREETING_RETRIES:
                waiting[host] = (due, greetings)

    def due(self) -> list[str]:
        """The workers due to be greeted again now (they stay noted until the next ``note``)."""
        now = self._clock()
        return [host for host, (at, _) in self._waiting.items() if at <= now]


class Controller:
    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        status: BrokerStatus,
        state: State,
        *,
        enable_events: bool,
        inspect_workers: bool,
        interval: float,
        on_active_queues: Callable[[Any], None] | None = None,
        event_exchange: str = "celeryev",
        on_task_names: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.app = control_app("celery-events-exporter", broker_url, transport_options)
        self.status = status
        # Every reason at 0 from the start, so that increase() sees the first failure.
        status.broadcast_errors = dict.fromkeys(ERROR_REASONS, 0)
        status.replies_dropped = dict.fromkeys(DROP_REASONS, 0)
        self._drops_logged: dict[str, int] = {}
        self.state = state
        self.enable_events = enable_events
        self.inspect_workers = inspect_workers
        self.interval = interval
        self.on_active_queues = on_active_queues
        """Given each ``inspect active_queues`` reply: the queue poller watches those queues."""
        self.event_exchange = event_exchange
        self.silent_workers = SilentWorkers()
        self.greeting_retries = GreetingRetries()
        self.on_task_names = on_task_names
        """Given {uuid: name} of tasks in flight: the recent-task store names their rows."""

    def run(self, stop: threading.Event) -> None:
        connected = self.status.connected_event
        due = time.monotonic() + self.interval
        while not stop.is_set():
            # Broadcast right after each (re)connection, then every interval: workers that start
            # later need enable_events too, and a broadcast sent while they were down is lost.
            reconnected = connected.wait(min(STOP_CHECK, max(0.0, due - time.monotonic())))
            if stop.is_set():
                return
            if self.status.connected:
                new = self.state.new_workers()
                hosts = list(dict.fromkeys([*new, *self.greeting_retries.due()]))
                if hosts:  # first: the greeting is the quickest way to their task events
                    self.greet(hosts, stop)
            if not reconnected and time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
            if not self.status.connected:
                continue
            connected.clear()
            self.broadcast(wake_up=reconnected)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for one broadcast or greeting, closed after it; after a failure it is
        dropped without a word to the broker, whose answers to a close (channel, then
        connection) would take two more timeouts from a frozen one."""
        conn = self.app.connection_for_write()
        try:
            # kombu collects replies on the connection's default channel: a reply over the cap
            # reaches ``Replies`` as a stand-in, undecoded.
            compat.bound_message_bodies(conn.default_channel, MAX_REPLY_BYTES, _TOO_BIG_BODY)
            yield conn
        except BaseException:
            conn.collect()
            raise
        conn.release()

    def greet(self, hosts: list[str], stop: threading.Event) -> None:
        """Switch task events on in workers just heard of, create their registered tasks'
        series at 0, learn the names of the tasks they hold, their pool size and the queues
        they consume; each step only to them. Only those that answered the first request are
        asked the rest; the others are greeted again (``GreetingRetries``)."""
        answered: list[str] = []
        try:
            with self._connection() as conn:
                answered = self._switch_events_on(conn, hosts) if self.enable_events else hosts
                if self.inspect_workers and answered and not stop.is_set():
                    registered = registered_tasks(self._ask(conn, "registered", answered))
                    if not self.enable_events:
                        answered = sorted(registered)
                    self._seed_registered(registered)
                    if answered and not stop.is_set():
                        self._learn_names(conn, answered)
                    if answered and not stop.is_set():
                        self._learn_concurrency(conn, answered)
                if self.on_active_queues is not None and answered and not stop.is_set():
                    self._learn_queues(conn, answered)
        except Exception as exc:
            answered = []
            self._failed("greeting new workers failed", exc, workers=",".join(hosts[:10]))
        self.greeting_retries.note(hosts, answered)

    def _switch_events_on(self, conn: Any, hosts: list[str]) -> list[str]:
        """Send enable_events to ``hosts``; returns those of them that answered."""
        replies = self.app.control.enable_events(
            destination=hosts, connection=conn, reply=True, timeout=INSPECT_TIMEOUT
        )
        self._drop_late()
        too_big = sum(1 for reply in replies or [] if isinstance(reply, dict) and TOO_BIG in reply)
        if too_big:
            self._drop("too_big", too_big)
        asked = set(hosts)
        answered = sorted(
            host
            for reply in replies or []
            if isinstance(reply, dict)
            for host in reply
            if host in asked
        )
        log.info(
            "task events switched on in new workers",
            workers=",".join(hosts[:10]),
            answered=",".join(answered[:10]),
        )
        return answered

    def _seed_registered(self, registered: dict[str, list[str]]) -> None:
        limit = self.state.settings.max_registered_tasks
        for hostname, names in registered.items():
            left_out = self.state.seed_tasks(hostname, names)
            if left_out:
                log.warning(
                    "more registered tasks than --max-registered-tasks: the rest "
                    "get their series at their first event",
                    worker=hostname[:200],
                    left_out=left_out,
                    max_registered_tasks=limit,
                )

    def _ask(self, conn: Any, command: str, destination: list[str] | None, **arguments: Any) -> Any:
        """{hostname: reply} to ``command`` from the workers the exporter heard from, each
        answering once (``Replies``); ``destination`` None asks every worker."""
        replies = self._collect(conn, command, destination, **arguments)
        return replies.from_known(self.state.known_workers(), self.state.worker_label)

    def _collect(
        self, conn: Any, command: str, destination: list[str] | None, **arguments: Any
    ) -> Replies:
        replies = Replies(destination, self._drop)
        try:
            self.app.control.broadcast(
                command,
                arguments=arguments,
                destination=destination,
                reply=True,
                timeout=INSPECT_TIMEOUT,
                limit=MAX_REPLIES + 1,  # the callback ends the collection first
                callback=replies,
                connection=conn,
            )
        except CollectionOver:
            pass
        finally:
            self._drop_late()
        return replies

    def _drop_late(self) -> None:
        """Forget the replies kombu set aside for another ticket (a request no longer
        collecting): they would wait there for a collection that never comes."""
        unclaimed = self.app.control.mailbox.unclaimed
        late = sum(len(bodies) for bodies in unclaimed.values())
        unclaimed.clear()
        if late:
            self._drop("late", late)

    def _learn_names(self, conn: Any, destination: list[str] | None) -> None:
        # safe: the arguments as reprs, never unpickled objects (they are not kept anyway).
        # Tasks with an ETA or countdown wait in the worker's timer, in neither active nor
        # reserved until they are due: only scheduled names them.
        names = task_names(
            *(
                capped(
                    self._ask(conn, command, destination, **arguments),
                    MAX_TASKS_PER_WORKER,
                    self._drop,
                )
                for command, arguments in (
                    ("active", {"safe": True}),
                    ("reserved", {"safe": True}),
                    ("scheduled", {"safe": None}),
                )
            )
        )
        if not names:
            return
        self.state.learn_names(names)
        if self.on_task_names is not None:
            self.on_task_names(names)

    def _learn_concurrency(self, conn: Any, destination: list[str] | None) -> set[str]:
        """Ask the workers' pool sizes; returns every hostname that answered."""
        replies = self._collect(conn, "stats", destination)
        state = self.state
        screened = replies.from_known(state.known_workers(), state.worker_label)
        state.set_concurrency(
            agreeing_stats(screened, state.heartbeat_identities(), state.worker_label, self._drop)
        )
        return replies.answered()

    def _learn_queues(self, conn: Any, destination: list[str] | None) -> None:
        assert self.on_active_queues is not None
        replies = capped(
            self._ask(conn, "active_queues", destination), MAX_QUEUES_PER_WORKER, self._drop
        )
        self.on_active_queues(replies)

    def broadcast(self, *, wake_up: bool) -> None:
        try:
            with self._connection() as conn:
                if self.enable_events:
                    self.app.control.enable_events(connection=conn)
                if wake_up:
                    self.app.control.broadcast("heartbeat", connection=conn)
                if self.inspect_workers:
                    if wake_up:
                        # First: an exporter (re)started with tasks in flight needs their names
                        # before their ends arrive.
                        self._learn_names(conn, None)
                    answered = self._learn_concurrency(conn, None)
                    self._note_silent(answered, self.state.heard_workers())
                if self.on_active_queues is not None:
                    self._learn_queues(conn, None)
        except Exception as exc:
            self._failed("broadcast to workers failed", exc)

    def _drop(self, reason: str, count: int) -> None:
        """Count replies (or entries of one) left out, and log it now and then: the 1st, 2nd,
        4th, 8th... time for each reason."""
        dropped = dict(self.status.replies_dropped)
        total = dropped.get(reason, 0) + count
        dropped[reason] = total
        self.status.replies_dropped = dropped
        logged = self._drops_logged.get(reason, 0) + 1
        self._drops_logged[reason] = logged
        if logged & (logged - 1) == 0:
            log.warning(
                "inspect replies left out: only workers heard on the event exchange may answer, "
                "once each, within the caps, agreeing with their heartbeats",
                reason=reason,
                dropped=total,
                occurrences=logged,
            )

    def _failed(self, message: str, exc: Exception, **fields: str) -> None:
        """Log a failed broadcast or greeting and count it; the controller carries on (the next
        broadcast tries again)."""
        reason = error_reason(exc)
        errors = dict(self.status.broadcast_errors)
        errors[reason] = errors.get(reason, 0) + 1
        self.status.broadcast_errors = errors
        error = mask_url(f"{type(exc).__name__}: {exc}")  # a transport's message may quote a URL
        log.warning(message, reason=reason, error=error, **fields)

    def _note_silent(self, answered: set[str], heard: set[str]) -> None:
        if not self.silent_workers.update(answered, heard):
            return
        silent = self.silent_workers.silent
        self.status.silent_workers = len(silent)
        if silent:
            log.warning(
                "workers answer control broadcasts but none of their events arrive: does the "
                "app set another event_exchange?",
                workers=",".join(silent[:10]),
                silent_workers=len(silent),
                event_exchange=self.event_exchange,
            )
        else:
            log.info("every worker that answers control broadcasts is heard on the event exchange")
