"""``/api/tasks`` and ``/api/tasks/<uuid>`` served from the task history's database.

The parameters are those of the in-memory store (uuid, name, state, worker, from, to, limit)
plus ``after``, the ``X-Next-Page`` cursor of the previous page (keyset paging: a page costs the
same deep in the history as at its top), and ``search`` takes search terms
(celery_events_exporter/history/search.py). Absent values are ``null``, times ISO 8601 UTC.

On SQLite a page with a condition no index serves reads at most ``--tasks.search-scan-rows``
rows; if they run out first the page is short, its ``X-Next-Page`` continues after the last row
read and ``X-Tasks-Scanned`` says how many were read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from celery_events_exporter.history.row import HISTORY_STATES, TIME_COLUMN, TaskRow
from celery_events_exporter.history.search import SearchError, parse
from celery_events_exporter.history.sql import Cursor, HistoryQuery
from celery_events_exporter.history.store import HistoryStore
from celery_events_exporter.web.api import (
    CHECKPOINT_ROWS,
    DEFAULT_LIMIT,
    MAX_ANSWER_BYTES,
    MAX_LIMIT,
    PAYLOADS_HIDDEN,
    PAYLOADS_SHOWN,
    ApiError,
    _parse_time,
    _single_values,
    iso,
)

PARAMETERS = ("uuid", "name", "state", "worker", "search", "limit", "from", "to", "after")
PAYLOAD_COLUMNS = ("args", "kwargs", "result", "exception", "traceback")
TIMES = (*TIME_COLUMN.values(), "eta", "expires", "exception_at", "seen_at", "updated_at")


def parse_query(query_string: str) -> HistoryQuery:
    values = _single_values(query_string, PARAMETERS)
    states: set[str] = set()
    for part in values.get("state", "").split(","):
        state = part.strip().upper()
        if not state:
            continue
        if state not in HISTORY_STATES:
            raise ApiError(
                f"unknown state {part.strip()!r}; states are {', '.join(HISTORY_STATES)}"
            )
        states.add(state)
    limit = DEFAULT_LIMIT
    if values.get("limit"):
        try:
            limit = int(values["limit"])
        except ValueError:
            raise ApiError(f"limit must be a whole number, got {values['limit']!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(f"limit must be within 1-{MAX_LIMIT}, got {limit}")
    try:
        terms = tuple(parse(values.get("search", "")))
        after = Cursor.parse(values["after"]) if values.get("after") else None
    except (SearchError, ValueError) as exc:
        raise ApiError(str(exc)) from None
    since = _parse_time("from", values.get("from", ""))
    until = _parse_time("to", values.get("to", ""))
    if since is not None and until is not None and since > until:
        raise ApiError("from must not be later than to")
    return HistoryQuery(
        terms=terms,
        uuid=values.get("uuid", "").lower(),
        name=values.get("name", ""),
        states=frozenset(states),
        worker=values.get("worker", ""),
        since=since,
        until=until,
        limit=limit,
        after=after,
    )


class HistoryApi:
    """The Tasks API's answers from ``store``; payloads only if ``expose_payloads``."""

    def __init__(
        self, store: HistoryStore, *, expose_payloads: bool, search_scan_rows: int = 0
    ) -> None:
        self.store = store
        self.expose_payloads = expose_payloads
        self.search_scan_rows = search_scan_rows
        """``--tasks.search-scan-rows``: see ``HistoryQuery.scan_rows``."""

    def _headers(self) -> dict[str, str]:
        return {"X-Task-Payloads": PAYLOADS_SHOWN if self.expose_payloads else PAYLOADS_HIDDEN}

    def row(self, row: TaskRow) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column in (
            "uuid", "name", "state", "worker", "client", "retries", "runtime", "exception_type",
            *PAYLOAD_COLUMNS, *TIMES, "parent_id", "root_id", "queue", "exchange",
            "routing_key",
        ):  # fmt: skip
            value = getattr(row, column)
            if column in TIMES:
                value = iso(value)
            elif column in PAYLOAD_COLUMNS and not self.expose_payloads:
                value = None
            out[column] = value
        return out

    def tasks(
        self, query_string: str, checkpoint: Callable[[], None] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A page of tasks as JSON, and the answer's headers; ``checkpoint`` (Api.tasks') is
        called before the query and every ``CHECKPOINT_ROWS`` rows (it may wait for a scrape,
        or raise to abandon the work of a client that went away)."""
        query = replace(parse_query(query_string), scan_rows=self.search_scan_rows)
        if checkpoint is not None:
            checkpoint()
        page = self.store.search(query)
        rows = page.rows
        headers = self._headers()
        parts: list[bytes] = []
        size = 2
        for index, row in enumerate(rows):
            if checkpoint is not None and index % CHECKPOINT_ROWS == 0:
                checkpoint()
            part = orjson.dumps(self.row(row))
            size += len(part) + 1
            if size > MAX_ANSWER_BYTES and parts:
                break  # the rest is on the next page
            parts.append(part)
        if len(parts) < len(rows) or len(rows) == query.limit:
            last = rows[len(parts) - 1]
            assert last.seen_at is not None
            headers["X-Next-Page"] = str(Cursor(last.seen_at, last.uuid))
        elif page.scanned_to is not None:
            # The scan budget ran out: every row up to the cursor was read, none after it.
            headers["X-Next-Page"] = str(page.scanned_to)
            headers["X-Tasks-Scanned"] = str(query.scan_rows)
        return b"[" + b",".join(parts) + b"]", headers

    def task(self, uuid: str) -> bytes | None:
        """The row with its timeline, parent, root and children; ``None`` if unknown."""
        row = self.store.get(uuid)
        if row is None:
            return None
        out = self.row(row)
        out["events"] = [
            {"type": kind, "timestamp": iso(moment), "worker": worker, "retries": retries}
            for moment, kind, worker, retries in row.events
        ]
        out["parent"] = self._summary(row.parent_id)
        out["root"] = self._summary(row.root_id)
        out["children"] = [
            {"uuid": child, "name": name, "state": state}
            for child, name, state in self.store.children(uuid)
        ]
        return orjson.dumps(out)

    def _summary(self, uuid: str | None) -> dict[str, Any] | None:
        if uuid is None:
            return None
        found = self.store.get(uuid)
        return {
            "uuid": uuid,
            "name": found.name if found else None,
            "state": found.state if found else None,
        }
