"""The JSON API behind Grafana's per-task table: ``/api/tasks``, ``/api/workers`` and
``/api/workers/<name>``.

Query strings are parsed strictly (an unknown or repeated parameter is a 400 naming it), the
store is read only long enough to list its records and copy the rows that are served, workers
come from a copy the state hands out, and payloads are masked and cut after all of that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from celery_events_exporter.events.exceptions import exception_class
from celery_events_exporter.events.vocabulary import TASK_RECEIVED, TASK_STATE_EVENTS
from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.state import State, WorkerRow
from celery_events_exporter.tasks.redact import Redactor
from celery_events_exporter.tasks.store import STATES, RecentTasks, TaskRecord
from celery_events_exporter.web.stats import WebStats

if TYPE_CHECKING:
    from celery_events_exporter.worker_details import WorkerDetailsStore

if TYPE_CHECKING:
    from celery_events_exporter.web.history import HistoryApi

log = get_logger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
"""Rows one /api/tasks answer may ask for (the default --max-recent-tasks); more is a 400."""
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""Bytes of JSON one /api/tasks answer holds at most; the oldest matching rows past it are left
out, and the X-Tasks-Left-Out header says how many."""
PAYLOAD_FIELDS = ("args", "kwargs", "result")
TIMESTAMP_FIELDS = (
    "sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
)  # fmt: skip
PAYLOADS_HIDDEN = (
    "hidden; args, kwargs, result, exception and traceback are served empty unless the "
    "exporter runs with --expose-task-payloads (CELERY_EXPORTER_EXPOSE_TASK_PAYLOADS=true); "
    "exception_type is always served"
)
PAYLOADS_SHOWN = "shown; values under secret-looking keys are masked"
TASK_ROW_KEYS = (
    "name", "uuid", "state", *PAYLOAD_FIELDS, "exception_type", "exception", "traceback",
    *TIMESTAMP_FIELDS,
    "runtime", "worker", "retries", "queue", "eta", "expires", "root_id", "parent_id", "timestamp",
)  # fmt: skip
"""Every key of an /api/tasks row."""
TASK_PARAMETERS = ("uuid", "name", "state", "worker", "search", "limit", "from", "to")
WORKER_PARAMETERS = ("search",)

WORKER_TASK_COLUMNS = {
    event_type: event_type.removeprefix("task-") for event_type in TASK_STATE_EVENTS
}
"""/api/workers' task columns (received, started...): Flower's Workers view, one per task state
event."""

JSON = "application/json"


class ApiError(Exception):
    """A bad request; the message goes back to the client as is."""


@dataclass(frozen=True)
class TaskQuery:
    uuid: str = ""
    """Case-insensitive prefix of the task uuid (a whole uuid picks one task)."""
    name: str = ""
    """Case-insensitive substring of the task name."""
    states: frozenset[str] = frozenset()
    worker: str = ""
    """Case-insensitive substring of the worker's hostname."""
    search: str = ""
    """Case-insensitive substring of any of uuid, name, state, worker and exception class."""
    limit: int = DEFAULT_LIMIT
    since: float | None = None
    until: float | None = None

    def matches(self, record: TaskRecord) -> bool:
        if self.uuid and not record.uuid.lower().startswith(self.uuid):
            return False
        name = (record.name or "").lower()
        if self.name and self.name not in name:
            return False
        if self.states and record.state not in self.states:
            return False
        worker = (record.worker or "").lower()
        if self.worker and self.worker not in worker:
            return False
        if self.search and not any(
            self.search in text
            for text in (
                record.uuid.lower(),
                name,
                (record.state or "").lower(),
                worker,
                (exception_type(record) or "").lower(),
            )
        ):
            return False
        moment = record.sort_time
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment <= self.until


def _single_values(query_string: str, allowed: tuple[str, ...]) -> dict[str, str]:
    try:
        parsed = parse_qs(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ApiError(f"malformed query string: {exc}") from None
    unknown = sorted(set(parsed) - set(allowed))
    if unknown:
        raise ApiError(
            f"unknown query parameter(s): {', '.join(unknown)}; supported: {', '.join(allowed)}"
        )
    repeated = sorted(key for key, values in parsed.items() if len(values) > 1)
    if repeated:
        raise ApiError(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return {key: values[0].strip() for key, values in parsed.items()}


def parse_task_query(query_string: str) -> TaskQuery:
    values = _single_values(query_string, TASK_PARAMETERS)
    states: set[str] = set()
    for part in values.get("state", "").split(","):
        state = part.strip().upper()
        if not state:
            continue
        if state not in STATES:
            raise ApiError(f"unknown state {part.strip()!r}; states are {', '.join(STATES)}")
        states.add(state)
    limit_text = values.get("limit", "")
    limit = DEFAULT_LIMIT
    if limit_text:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ApiError(f"limit must be a whole number, got {limit_text!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(f"limit must be within 1-{MAX_LIMIT}, got {limit}")
    since = _parse_time("from", values.get("from", ""))
    until = _parse_time("to", values.get("to", ""))
    if since is not None and until is not None and since > until:
        raise ApiError("from must not be later than to")
    return TaskQuery(
        uuid=values.get("uuid", "").lower(),
        name=values.get("name", "").lower(),
        states=frozenset(states),
        worker=values.get("worker", "").lower(),
        search=values.get("search", "").lower(),
        limit=limit,
        since=since,
        until=until,
    )


def _parse_time(parameter: str, text: str) -> float | None:
    """Epoch milliseconds (Grafana's ${__from} and ${__to}) or ISO 8601 (UTC if no offset)."""
    if not text:
        return None
    try:
        milliseconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(milliseconds):
            raise ApiError(f"{parameter} must be finite, got {text!r}")
        return milliseconds / 1000.0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            f"{parameter} must be epoch milliseconds or ISO 8601 "
            f"(e.g. 2024-11-19T10:02:30.472Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, like Flower's columns: 2024-11-19T10:02:30.472Z."""
    if timestamp is None:
        return None
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


CHECKPOINT_ROWS = 32
"""Rows an answer is built by between two checkpoints: a few milliseconds of work, even with
payloads masked."""


class Api:
    def __init__(
        self,
        state: State,
        store: RecentTasks | None,
        redactor: Redactor,
        *,
        expose_payloads: bool,
        clock: Callable[[], float],
        stats: WebStats | None = None,
        history: HistoryApi | None = None,
        details: WorkerDetailsStore | None = None,
    ) -> None:
        self.stats = stats if stats is not None else WebStats()
        self.details = details
        """The workers' inspect details (--worker-details-interval), if they are polled."""
        self.history = history
        """Serves /api/tasks from the task history's database when there is one."""
        self._skip_logs = 0
        self.state = state
        self.store = store
        self.redactor = redactor
        self.expose_payloads = expose_payloads
        self.clock = clock

    def task(self, uuid: str) -> bytes | None:
        """/api/tasks/<uuid>: one task with its timeline (the history only); None if unknown."""
        return None if self.history is None else self.history.task(uuid)

    def tasks(
        self, query_string: str, checkpoint: Callable[[], None] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The recent tasks the query asks for, as JSON, and the answer's headers;
        ``checkpoint`` is called every ``CHECKPOINT_ROWS`` rows (it may wait for a scrape, or
        raise to abandon the work)."""
        if self.history is not None:
            return self.history.tasks(query_string, checkpoint)
        query = parse_task_query(query_string)
        headers = {"X-Task-Payloads": PAYLOADS_SHOWN if self.expose_payloads else PAYLOADS_HIDDEN}
        if self.store is None:
            headers["X-Recent-Tasks"] = "disabled (--max-recent-tasks 0)"
            return b"[]", headers
        # Not under the state lock: the store merges what it kept while the ingest goes on.
        with self.store.reading() as records:
            chosen = [record for record in records if query.matches(record)]
            chosen.sort(key=lambda record: record.sort_time, reverse=True)
            del chosen[query.limit :]
            rows = [record.copy() for record in chosen]
        parts: list[bytes] = []
        size = 2
        skipped = 0
        for index, record in enumerate(rows):
            if checkpoint is not None and index % CHECKPOINT_ROWS == 0:
                checkpoint()
            try:
                part = orjson.dumps(self._task_row(record))
            except Exception as exc:  # crafted input we did not foresee: skip the row, not all
                skipped += 1
                self._skipped("/api/tasks", record.uuid, exc)
                continue
            size += len(part) + 1
            if size > MAX_ANSWER_BYTES:
                headers["X-Tasks-Left-Out"] = (
                    f"{len(rows) - index} older matching tasks, past the answer's bound of "
                    f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
                )
                break
            parts.append(part)
        if skipped:
            self.stats.skipped("/api/tasks", skipped)
        headers["X-Matching-Tasks"] = str(len(rows))
        return b"[" + b",".join(parts) + b"]", headers

    def _skipped(self, endpoint: str, key: str, exc: Exception) -> None:
        self._skip_logs += 1
        total = self._skip_logs
        if sparse(total):
            log.warning(
                "api row skipped: it cannot be served",
                endpoint=endpoint,
                row=key[:64],
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
                skipped_total=total,
            )

    def _task_row(self, record: TaskRecord) -> dict[str, Any]:
        redact = self.redactor
        row: dict[str, Any] = {
            "name": record.name,
            "uuid": record.uuid,
            "state": record.state,
        }
        for field in PAYLOAD_FIELDS:
            row[field] = redact.payload(getattr(record, field)) if self.expose_payloads else ""
        # The class names the failure; its message and traceback are payloads like the others.
        row["exception_type"] = exception_type(record)
        exposed = self.expose_payloads
        row["exception"] = (
            redact.truncate(redact.mask_text(record.exception))
            if exposed and record.exception
            else ""
        )
        row["traceback"] = (
            redact.truncate_tail(redact.mask_text(record.traceback))
            if exposed and record.traceback
            else ""
        )
        for field in TIMESTAMP_FIELDS:
            row[field] = iso(getattr(record, field))
        row["runtime"] = _runtime(record)
        row["worker"] = record.worker
        row["retries"] = record.retries
        row["queue"] = record.queue
        row["eta"] = record.eta
        row["expires"] = record.expires
        row["root_id"] = record.root_id
        row["parent_id"] = record.parent_id
        row["timestamp"] = iso(record.state_timestamp or None)
        return row

    def workers(self, query_string: str) -> bytes:
        search = _single_values(query_string, WORKER_PARAMETERS).get("search", "").lower()
        now = self.clock()
        rows: list[tuple[str, dict[str, Any]]] = []
        skipped = 0
        for view in self.state.workers_view(now):
            hostname = view.worker.hostname
            if search and search not in hostname.lower():
                continue
            try:
                rows.append((hostname, self._worker_row(view)))
            except Exception as exc:  # one worker's odd state must not hide the others
                skipped += 1
                self._skipped("/api/workers", hostname, exc)
        rows.sort(key=lambda pair: pair[0])
        parts: list[bytes] = []
        for hostname, row in rows:
            try:
                parts.append(orjson.dumps(row))
            except Exception as exc:
                skipped += 1
                self._skipped("/api/workers", hostname, exc)
        if skipped:
            self.stats.skipped("/api/workers", skipped)
        return b"[" + b",".join(parts) + b"]"

    def worker(self, hostname: str) -> bytes | None:
        """/api/workers/<name>: the worker's row and, for an online worker polled since, its
        details (pool, prefetch count, resource usage, consumed queues, registered tasks,
        reserved, scheduled, revoked; bounded, see worker_details.py); None if unknown."""
        for view in self.state.workers_view(self.clock()):
            if view.worker.hostname == hostname:
                row = self._worker_row(view)
                found = self.details.get(hostname) if self.details is not None else None
                row["details"] = None if found is None else found.as_json()
                return orjson.dumps(row)
        return None

    @staticmethod
    def _worker_row(view: WorkerRow) -> dict[str, Any]:
        worker, counts = view.worker, view.task_counts
        processed = worker.processed
        if processed is None and counts is not None:
            processed = counts.get(TASK_RECEIVED, 0)
        row: dict[str, Any] = {
            "worker": worker.hostname,
            "status": "online" if view.online else "offline",
            "active": worker.active,
            "processed": processed,
        }
        for event_type, column in WORKER_TASK_COLUMNS.items():
            # A worker with no task events yet has no counts, not zeros.
            row[column] = counts.get(event_type, 0) if counts is not None else None
        row["loadavg"] = list(worker.loadavg) if worker.loadavg else None
        row["heartbeat"] = iso(worker.last_heartbeat or None)
        row["freq"] = worker.freq or None
        row["sw_ident"] = worker.software[0] or None
        row["sw_ver"] = worker.software[1] or None
        row["sw_sys"] = worker.software[2] or None
        return row


def exception_type(record: TaskRecord) -> str | None:
    """The class of the task's last failure or retry (``None`` if it has none)."""
    return exception_class(record.exception) if record.exception else None


def _runtime(record: TaskRecord) -> float | None:
    """The worker-measured runtime of a success; for a failure, started to failed."""
    if record.runtime is not None:
        return record.runtime
    ended = record.failed if record.state == "FAILURE" else None
    if ended is not None and record.started is not None and ended >= record.started:
        return round(ended - record.started, 6)
    return None
