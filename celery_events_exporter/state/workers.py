"""Workers as their events describe them, and Celery's liveness rule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery_events_exporter.events.validate import INVALID_FIELD, Rejected, is_number
from celery_events_exporter.events.vocabulary import WORKER_OFFLINE, WORKER_ONLINE


@dataclass
class WorkerState:
    hostname: str
    last_heartbeat: float = 0.0
    """When the exporter received the worker's last heartbeat (exporter's clock)."""
    freq: float = 0.0
    active: int | None = None
    processed: int | None = None
    loadavg: tuple[float, float, float] | None = None
    software: tuple[str, str, str] = ("", "", "")
    said_goodbye: bool = False
    """worker-offline arrived after the last heartbeat (a clean shutdown)."""
    concurrency: int | None = None
    """The pool's max-concurrency, from inspect stats (heartbeats do not carry it)."""
    processed_base: int | None = None
    """The heartbeats' ``processed`` when the exporter first heard the worker (or when it
    restarted: processed went down), and ``started_base`` the task-started events counted from
    it by then: what the worker accepted since, less what was seen starting, is uncounted."""
    started_base: int = 0
    pid: int | None = None
    """The process id its worker-online and heartbeats carry: an inspect ``stats`` reply that
    names another process is not this worker's."""


def apply_worker_event(
    state_for: Callable[[str], WorkerState | None],
    event: dict[str, Any],
    event_type: str,
    hostname: str,
    received_at: float,
    started_count: Callable[[str], int],
) -> bool:
    """Update a worker's liveness and gauges from a worker-online/heartbeat/offline event;
    True when the worker is new to the exporter or (re)started: it is to be greeted.

    ``state_for`` gives the worker's record (made if need be), or None for a worker past the
    worker cap, whose event changes nothing (and which is not greeted).
    ``started_count(label)`` gives the task-started events counted so far from the worker whose
    record is named ``label`` (its hostname as cut). Raises ``Rejected`` for a number no worker
    sends, before anything of the event is applied.
    """
    # Checked first: a crafted event must not even make its worker known.
    freq, active, processed, loadavg = heartbeat_numbers(event, hostname)
    software = heartbeat_software(event, hostname)
    state = state_for(hostname)
    if state is None:
        return False
    if event_type == WORKER_OFFLINE:
        state.said_goodbye = True
        # The goodbye carries a heartbeat's counters: the worker's last, freshest reading.
        _read_counters(state, active, processed, loadavg, started_count)
        return False
    greet = state.last_heartbeat == 0.0 or event_type == WORKER_ONLINE
    state.said_goodbye = False
    state.last_heartbeat = received_at
    # The reply to a receiver's wake-up broadcast is a heartbeat with freq 5 and no load or
    # active fields: it proves the worker is alive, but must not blank the gauges or stretch
    # the liveness window of a worker that beats every 2 s.
    full = "loadavg" in event or "active" in event
    if freq is not None and (full or state.freq == 0.0):
        state.freq = freq
    if not full:
        return greet
    _read_counters(state, active, processed, loadavg, started_count)
    state.software = software
    pid = event.get("pid")
    if type(pid) is int and pid > 0:
        state.pid = pid
    return greet


def _read_counters(
    state: WorkerState,
    active: int | None,
    processed: int | None,
    loadavg: Loadavg | None,
    started_count: Callable[[str], int],
) -> None:
    """Take a heartbeat's (or a goodbye's) active, processed and loadavg, each if present."""
    if active is not None:
        state.active = active
    if processed is not None:
        previous = state.processed
        if state.processed_base is None or (previous is not None and processed < previous):
            state.processed_base = processed  # first heard, or restarted
            state.started_base = started_count(state.hostname)
        state.processed = processed
    if loadavg is not None:
        state.loadavg = loadavg


MAX_HEARTBEAT_INTERVAL = 3600.0
"""Longest heartbeat interval (freq) taken as true: a worker goes offline within 2 x freq, so a
crafted 1e308 would keep it online, and unpurged, forever."""
MAX_ACTIVE_TASKS = 1_000_000
MAX_PROCESSED_TASKS = 2**53
"""Largest processed count taken as true (exact as a float, so as a sample value)."""
MAX_LOAD = 1e6
SOFTWARE_FIELDS = ("sw_ident", "sw_ver", "sw_sys")
MAX_SOFTWARE_LENGTH = 100
"""Longest sw_ident, sw_ver or sw_sys taken as true (Celery's: "py-celery", "5.5.3", "Linux")."""

Loadavg = tuple[float, float, float]


def heartbeat_numbers(
    event: dict[str, Any], hostname: str
) -> tuple[float | None, int | None, int | None, Loadavg | None]:
    """A worker event's freq, active, processed and loadavg, each None when absent; raises
    Rejected("invalid_field") for a value no worker sends (NaN, infinite, negative, out of range,
    of the wrong shape)."""

    def bad(field: str, value: Any) -> Rejected:
        return Rejected(INVALID_FIELD, f"{field} {repr(value)[:80]} from {hostname[:200]}")

    freq = event.get("freq")
    if freq is not None and not (is_number(freq) and 0 < freq <= MAX_HEARTBEAT_INTERVAL):
        raise bad("freq", freq)
    counts: list[int | None] = []
    for name, limit in (("active", MAX_ACTIVE_TASKS), ("processed", MAX_PROCESSED_TASKS)):
        value = event.get(name)
        if value is None:
            counts.append(None)
            continue
        if not (is_number(value) and 0 <= value <= limit and value == int(value)):
            raise bad(name, value)
        counts.append(int(value))
    loadavg = event.get("loadavg")
    loads: Loadavg | None = None
    if loadavg is not None:
        if not (
            isinstance(loadavg, (list, tuple))
            and len(loadavg) == 3
            and all(is_number(value) and 0 <= value <= MAX_LOAD for value in loadavg)
        ):
            raise bad("loadavg", loadavg)
        loads = (float(loadavg[0]), float(loadavg[1]), float(loadavg[2]))
    return None if freq is None else float(freq), counts[0], counts[1], loads


def timeout(worker: WorkerState, worker_timeout: float) -> float:
    """How long after its last heartbeat a worker counts as online."""
    if worker_timeout > 0:
        return worker_timeout
    # Celery's rule (celery.events.state.HEARTBEAT_EXPIRE_WINDOW): 2 x the worker's freq.
    return 2.0 * (worker.freq or 2.0)


def is_online(worker: WorkerState, now: float, worker_timeout: float) -> bool:
    if worker.said_goodbye or worker.last_heartbeat == 0.0:
        return False
    return now < worker.last_heartbeat + timeout(worker, worker_timeout)


def long_gone(
    workers: dict[str, WorkerState],
    now: float,
    worker_timeout: float,
    delay: float,
    stopped_delay: float = 0.0,
    last_event: dict[str, float] | None = None,
) -> list[str]:
    """Workers offline for longer than ``delay``, or stopped cleanly (worker-offline) for
    longer than ``stopped_delay``; a delay of 0 purges nothing of its kind. A record never
    given a heartbeat but named in ``last_event`` (it sends task events) is ``silent_gone``'s."""
    if delay <= 0 and stopped_delay <= 0:
        return []
    return [
        host
        for host, state in workers.items()
        if not is_online(state, now, worker_timeout)
        and (state.last_heartbeat > 0 or last_event is None or host not in last_event)
        and (
            (delay > 0 and now - (state.last_heartbeat + timeout(state, worker_timeout)) > delay)
            or (
                stopped_delay > 0
                and state.said_goodbye
                and now - state.last_heartbeat > stopped_delay
            )
        )
    ]


def silent_gone(
    admitted: Iterable[str],
    workers: dict[str, WorkerState],
    last_event: dict[str, float],
    now: float,
    delay: float,
) -> list[str]:
    """Worker label values admitted with no heartbeat ever heard from them (task events from a
    ``celery worker --without-heartbeat``, series created for them) whose last task event is
    more than ``delay`` old (or which sent none): no heartbeat will ever make them go offline,
    so their last event stands for their last heartbeat. A delay of 0 purges none."""
    if delay <= 0:
        return []
    gone = []
    for host in admitted:
        record = workers.get(host)
        if record is not None and record.last_heartbeat > 0:
            continue  # Celery's liveness rule applies (long_gone)
        if now - last_event.get(host, 0.0) > delay:
            gone.append(host)
    return gone


def heartbeat_software(event: dict[str, Any], hostname: str) -> tuple[str, str, str]:
    """A worker event's sw_ident, sw_ver and sw_sys ("" when absent or not text: some workers
    of other languages send none); raises Rejected("invalid_field") for one longer than any
    worker's (they become label values of ``celery_worker_info``)."""
    found = []
    for field in SOFTWARE_FIELDS:
        value = event.get(field)
        if not isinstance(value, str):
            value = ""
        elif len(value) > MAX_SOFTWARE_LENGTH:
            raise Rejected(
                INVALID_FIELD, f"{field} of {len(value)} characters from {hostname[:200]}"
            )
        found.append(value)
    return found[0], found[1], found[2]
