"""SQL shared by the SQLite and PostgreSQL stores: the schema, the row codec, the merge and the
query.

The two databases differ in a few spellings, which a ``Dialect`` carries: the placeholder, the
time type (``timestamptz`` on PostgreSQL, Unix epoch ``REAL`` on SQLite), the JSON type of the
timeline, case-insensitive ``LIKE``, and the functions the merge is written with (``greatest``
ignores nulls on PostgreSQL, SQLite's ``max`` does not; JSON arrays are taken apart and put
together differently).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from celery_events_exporter.events.vocabulary import (
    FAILURE,
    LOST,
    PENDING,
    REJECTED,
    RETRY,
    STARTED,
    STATE_RANK,
    TASK_EVENT_STATES,
    TASK_ORPHANED,
)
from celery_events_exporter.history.row import (
    COLUMNS,
    EVENTS,
    MAX_COLUMNS,
    MAX_TIMELINE,
    TIME_COLUMN,
    TIME_COLUMNS,
    UNKNOWN,
    WITH_EXCEPTION,
    WITH_PAYLOAD,
    WITH_SENT,
    WITH_SUCCESS,
    WORKER_TIMES,
    RowValues,
    TaskRow,
    TimelineEntry,
)
from celery_events_exporter.history.search import Term

TABLE = "celery_tasks"
SCHEMA_TABLE = "celery_tasks_schema"
SCHEMA_VERSION = 2
"""1: the table and its indexes. 2: PostgreSQL's trigram index of free text leaves the uuid out
(free text matches a uuid by its start, which the primary key serves): the uuid's random
trigrams were half of what writing a row cost the server."""

FAILED_STATES = ("FAILURE", "LOST", "REVOKED", "REJECTED")
"""States kept for ``--tasks.failed-retention`` rather than ``--tasks.retention``."""

_TEXT = {
    "uuid", "name", "state", "worker", "client", "exception_type", "args", "kwargs", "result",
    "exception", "traceback", "parent_id", "root_id", "queue", "exchange", "routing_key",
}  # fmt: skip
_C_COLLATED = {"uuid", "name", "worker", "parent_id", "root_id"}

INDEXES = (
    ("celery_tasks_seen", "seen_at, uuid"),
    ("celery_tasks_name", "name, seen_at, uuid"),
    ("celery_tasks_name_state", "name, state, seen_at, uuid"),
    ("celery_tasks_state", "state, seen_at, uuid"),
    ("celery_tasks_worker", "worker, seen_at, uuid"),
    ("celery_tasks_updated", "updated_at"),
    ("celery_tasks_root", "root_id"),
    ("celery_tasks_parent", "parent_id"),
)
"""Every search by uuid, name, state, worker or time, and the children of a task, is served by
one of these (tests/test_history_search.py reads the plans)."""


FREE_TEXT_COLUMNS = (
    "name", "state", "worker", "exception_type", "args", "kwargs", "result",
)  # fmt: skip
"""What free text is contained in (any case); it also matches the uuid by its start."""
FREE_TEXT = (
    "lower("
    + " || chr(31) || ".join(f"coalesce({column}, '')" for column in FREE_TEXT_COLUMNS)
    + ")"
)
"""PostgreSQL: the searched columns as one text (a unit separator between them, so that no
match spans two), which the trigram index below indexes."""
FREE_TEXT_INDEX_NAME = "celery_tasks_text"
FREE_TEXT_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {FREE_TEXT_INDEX_NAME} ON {TABLE} USING gin (({FREE_TEXT}) "
    "gin_trgm_ops)"
)
"""PostgreSQL, when the pg_trgm extension can be created: free text without a full scan."""


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    time_type: str
    json_type: str
    like: str
    to_time: Callable[[float | None], Any]
    from_time: Callable[[Any], float | None]
    greatest: Callable[[str, str, bool], str]
    """SQL for the larger of two values, null only when both are (text compared by code point
    when the flag says text, as Python compares)."""
    least: Callable[[str, str], str]
    greatest_of: Callable[[list[str]], str]
    """SQL for the largest of several values none of which is null."""
    never: str
    """A time before any other, for a key that is null."""
    timeline: Callable[[str, str], str]
    """SQL for the merged timeline of two rows' ``events`` (``row._timeline``'s rule)."""
    failure_runtime: Callable[[str, str], str]
    """SQL for ``round(failed - started, 6)`` in seconds."""

    def column_type(self, column: str) -> str:
        if column in TIME_COLUMNS:
            return self.time_type
        if column == "events":
            return self.json_type
        if column == "runtime":
            return "DOUBLE PRECISION" if self.name == "postgresql" else "REAL"
        if column == "retries":
            return "INTEGER"
        assert column in _TEXT, column
        if self.name == "postgresql" and column in _C_COLLATED:
            return 'TEXT COLLATE "C"'
        return "TEXT"

    def schema(self) -> list[str]:
        """The statements that create schema version 1."""
        columns = ",\n  ".join(
            f"{c} {self.column_type(c)}{' PRIMARY KEY' if c == 'uuid' else ''}"
            f"{' NOT NULL' if c == 'events' else ''}"
            for c in COLUMNS
        )
        statements = [f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  {columns}\n)"]
        statements += [
            f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({columns_})"
            for name, columns_ in INDEXES
        ]
        return statements

    def migration(self, found: int | None) -> list[str]:
        """The statements that bring a database at schema version ``found`` (None: no
        schema) to ``SCHEMA_VERSION``, the new version recorded."""
        statements = []
        if found is None or found < 1:
            statements += self.schema()
        elif found < 2 and self.name == "postgresql":
            # Version 1's trigram index held the uuid; the store creates the new one after.
            statements.append(f"DROP INDEX IF EXISTS {FREE_TEXT_INDEX_NAME}")
        if found is None or found < SCHEMA_VERSION:
            statements.append(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES ({SCHEMA_VERSION})")
        return statements

    def merge(self, pending_before: str) -> str:
        """The ``ON CONFLICT (uuid) DO UPDATE SET`` list that merges a new row (``excluded``)
        into the stored one (``t``) by ``row.py``'s rules, then derives state, runtime and
        updated_at from the merged columns as ``row.finish`` does. ``pending_before`` is the
        SQL of ``finish``'s parameter (NULL for none)."""

        def greatest(column: str) -> str:
            return self.greatest(f"t.{column}", f"excluded.{column}", column in _TEXT)

        def key(side: str, column: str) -> str:
            return f"coalesce({side}.{column}, {self.never})"

        def payload_key(side: str) -> str:
            return (
                f"(CASE WHEN {side}.received IS NULL THEN 0 ELSE 1 END, "
                f"coalesce({side}.received, {side}.sent, {self.never}))"
            )

        def worker_key(side: str) -> str:
            return self.greatest_of([key(side, column) for column in WORKER_TIMES])

        keys = {
            **dict.fromkeys(WITH_SUCCESS, (key("t", "succeeded"), key("excluded", "succeeded"))),
            **dict.fromkeys(
                WITH_EXCEPTION, (key("t", "exception_at"), key("excluded", "exception_at"))
            ),
            **dict.fromkeys(WITH_PAYLOAD, (payload_key("t"), payload_key("excluded"))),
            **dict.fromkeys(WITH_SENT, (key("t", "sent"), key("excluded", "sent"))),
            "worker": (worker_key("t"), worker_key("excluded")),
        }

        def pick(column: str) -> str:
            """The value that goes with the larger key; the larger value for equal keys."""
            old, new = keys[column]
            return (
                f"CASE WHEN {new} > {old} THEN excluded.{column} "
                f"WHEN {new} = {old} THEN {greatest(column)} ELSE t.{column} END"
            )

        assignments = [f"{column} = {greatest(column)}" for column in MAX_COLUMNS]
        assignments.append(f"seen_at = {self.least('t.seen_at', 'excluded.seen_at')}")
        assignments += [f"{column} = {pick(column)}" for column in keys if column != "runtime"]
        assignments.append(f"events = {self.timeline('t.events', 'excluded.events')}")
        merged = {column: greatest(column) for column in TIME_COLUMN.values()}
        unfinished = f"{merged['succeeded']} IS NULL AND {merged['failed']} IS NULL"

        def candidate(event_type: str, column: str) -> str:
            """(time, rank, state) of one event type; a retry never overrides an end, a sent
            never overrides a worker's event (it goes before every time)."""
            state = TASK_EVENT_STATES[event_type]
            moment = merged[column]
            if state == RETRY:
                moment = f"CASE WHEN {unfinished} THEN {moment} END"
            elif state == PENDING:
                moment = f"CASE WHEN {moment} IS NOT NULL THEN {self.never} END"
            return f"({moment}, {STATE_RANK[state]}, '{state}')"

        candidates = ", ".join(
            candidate(event_type, column)
            for event_type, column in TIME_COLUMN.items()
            if event_type != TASK_ORPHANED  # the exporter's own verdict: LOST below
        )
        best = (
            f"(SELECT column3 FROM (VALUES {candidates}) AS v WHERE column1 IS NOT NULL "
            "ORDER BY column1 DESC, column2 DESC LIMIT 1)"
        )
        failed, started = merged["failed"], merged["started"]
        state = (
            f"CASE WHEN b.s = '{REJECTED}' AND {failed} IS NOT NULL THEN '{FAILURE}' "
            f"WHEN {merged['orphaned']} IS NOT NULL AND (b.s IS NULL OR b.s = '{STARTED}') "
            f"THEN '{LOST}' "
            f"WHEN b.s = '{PENDING}' AND {merged['sent']} < {pending_before} THEN '{UNKNOWN}' "
            "ELSE b.s END"
        )
        runtime = (
            f"CASE WHEN {merged['succeeded']} IS NOT NULL THEN {pick('runtime')} "
            f"WHEN b.s IN ('{FAILURE}', '{REJECTED}') AND {failed} >= {started} "
            f"THEN {self.failure_runtime(failed, started)} END"
        )
        updated = self.greatest_of(
            [key(side, column) for column in TIME_COLUMN.values() for side in ("t", "excluded")]
        )
        assignments.append(
            f"(state, runtime, updated_at) = (SELECT {state}, {runtime}, "
            f"NULLIF({updated}, {self.never}) FROM (SELECT {best} AS s) AS b)"
        )
        return ",\n  ".join(assignments)

    def decode(self, values: Sequence[Any]) -> TaskRow:
        """A row from this database's values in ``COLUMNS`` order."""
        kwargs: dict[str, Any] = {}
        from_time = self.from_time
        for column, value in zip(COLUMNS, values, strict=True):
            if column in TIME_COLUMNS:
                value = from_time(value)
            elif column == "events":
                value = decode_timeline(value)
            kwargs[column] = value
        return TaskRow(**kwargs)


def encode_timeline(entries: tuple[TimelineEntry, ...]) -> str:
    return orjson.dumps(
        [
            {"timestamp": t, "type": kind, "worker": worker, "retries": retries}
            for t, kind, worker, retries in entries
        ]
    ).decode()


def decode_timeline(value: Any) -> tuple[TimelineEntry, ...]:
    items = orjson.loads(value) if isinstance(value, (str, bytes)) else value
    return tuple(
        (float(item["timestamp"]), item["type"], item.get("worker"), item.get("retries"))
        for item in items or ()
    )


def encode_values(values: RowValues) -> list[Any]:
    """A finished row's columns as both stores write them: times in epoch seconds (PostgreSQL
    converts them in SQL), the timeline as JSON text."""
    encoded = values.copy()
    encoded[EVENTS] = encode_timeline(encoded[EVENTS])
    return encoded


def _epoch(value: float | None) -> float | None:
    return value


def _sqlite_greatest(a: str, b: str, text: bool) -> str:
    # max() of several arguments is null when one is; BINARY collation compares UTF-8 bytes,
    # which is code point order.
    return f"coalesce(max({a}, {b}), {a}, {b})"


def _sqlite_least(a: str, b: str) -> str:
    return f"coalesce(min({a}, {b}), {a}, {b})"


def _sqlite_greatest_of(values: list[str]) -> str:
    return f"max({', '.join(values)})"


def _sqlite_timeline(old: str, new: str) -> str:
    # Entries are deduplicated by their JSON text: orjson writes an entry always the same way,
    # and json_each/json() keep number and string literals as written.
    return (
        "(SELECT json_group_array(json(v)) FROM (SELECT v FROM (SELECT v, at, kind, w, r FROM ("
        "SELECT DISTINCT value AS v, json_extract(value, '$.timestamp') AS at, "
        "json_extract(value, '$.type') AS kind, "
        "coalesce(json_extract(value, '$.worker'), '') AS w, "
        "coalesce(json_extract(value, '$.retries'), -1) AS r "
        f"FROM (SELECT value FROM json_each({old}) UNION ALL SELECT value FROM json_each({new}))) "
        f"ORDER BY at DESC, kind DESC, w DESC, r DESC LIMIT {MAX_TIMELINE}) "
        "ORDER BY at, kind, w, r))"
    )


def _sqlite_failure_runtime(failed: str, started: str) -> str:
    return f"round({failed} - {started}, 6)"


def _pg_greatest(a: str, b: str, text: bool) -> str:
    if text:  # the default collation may not be code point order
        return f'GREATEST({a} COLLATE "C", {b} COLLATE "C")'
    return f"GREATEST({a}, {b})"


def _pg_least(a: str, b: str) -> str:
    return f"LEAST({a}, {b})"


def _pg_greatest_of(values: list[str]) -> str:
    return f"GREATEST({', '.join(values)})"


def _pg_timeline(old: str, new: str) -> str:
    return (
        "(SELECT coalesce(jsonb_agg(e.v ORDER BY e.at, e.kind, e.w, e.r), '[]'::jsonb) FROM ("
        "SELECT DISTINCT v, (v->>'timestamp')::float8 AS at, (v->>'type') COLLATE \"C\" AS kind, "
        "coalesce(v->>'worker', '') COLLATE \"C\" AS w, "
        "coalesce((v->>'retries')::bigint, -1) AS r "
        f"FROM (SELECT jsonb_array_elements({old}) AS v "
        f"UNION ALL SELECT jsonb_array_elements({new})) AS u "
        f"ORDER BY at DESC, kind DESC, w DESC, r DESC LIMIT {MAX_TIMELINE}) AS e)"
    )


def _pg_failure_runtime(failed: str, started: str) -> str:
    return f"round(EXTRACT(EPOCH FROM ({failed}) - ({started})), 6)::float8"


def _datetime(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _from_datetime(value: Any) -> float | None:
    return None if value is None else float(value.timestamp())


SQLITE = Dialect(
    "sqlite", "?", "REAL", "TEXT", "LIKE", _epoch, _epoch, _sqlite_greatest, _sqlite_least,
    _sqlite_greatest_of, "-1.0", _sqlite_timeline, _sqlite_failure_runtime,
)  # fmt: skip
POSTGRESQL = Dialect(
    "postgresql", "%s", "TIMESTAMPTZ", "JSONB", "ILIKE", _datetime, _from_datetime, _pg_greatest,
    _pg_least, _pg_greatest_of, "'-infinity'::timestamptz", _pg_timeline, _pg_failure_runtime,
)  # fmt: skip


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the next page holds tasks first seen before this one."""

    seen_at: float
    uuid: str

    def __str__(self) -> str:
        return f"{self.seen_at!r}_{self.uuid}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        moment, _sep, uuid = text.partition("_")
        try:
            return cls(float(moment), uuid)
        except ValueError:
            raise ValueError(f"after must be a cursor from X-Next-Page, got {text!r}") from None


@dataclass(frozen=True)
class HistoryQuery:
    """What ``/api/tasks`` asks of the history: the page, newest first seen first."""

    terms: tuple[Term, ...] = ()
    uuid: str = ""
    """Prefix of the uuid."""
    name: str = ""
    """Contained in the name (any case)."""
    states: frozenset[str] = frozenset()
    worker: str = ""
    """Contained in the worker's hostname (any case)."""
    since: float | None = None
    until: float | None = None
    limit: int = 100
    after: Cursor | None = None
    scan_rows: int = 0
    """SQLite: rows a page with a condition no index serves reads at most (newest first, within
    the indexed conditions) before it stops short; 0 reads until the page is full."""


@dataclass(frozen=True)
class Page:
    """The rows of one page and, if its scan budget ran out first, where the scan stopped."""

    rows: list[TaskRow]
    scanned_to: Cursor | None = None
    """The last row the scan read when ``HistoryQuery.scan_rows`` ran out before the page
    filled: rows after it are unread, so the next page starts after it (not after the last
    match)."""


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix_end(prefix: str) -> str:
    """The smallest text after every text starting with ``prefix`` (in code point order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _Builder:
    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.params: list[Any] = []

    def p(self, value: Any) -> str:
        self.params.append(value)
        return self.d.placeholder

    def contains(self, column: str, text: str) -> str:
        return f"{column} {self.d.like} {self.p('%' + _escape(text) + '%')} ESCAPE '\\'"

    def prefix(self, column: str, text: str) -> str:
        return f"({column} >= {self.p(text)} AND {column} < {self.p(_prefix_end(text))})"

    def exact_or_prefix(self, column: str, text: str) -> str:
        if text.endswith("*") and len(text) > 1:
            return self.prefix(column, text[:-1])
        return f"{column} = {self.p(text)}"

    def uuid_start(self, text: str) -> str:
        """Free text on the uuid: uuids starting with ``text`` as typed or in lower case (as
        Celery writes them)."""
        return " OR ".join(
            self.prefix("uuid", start) for start in dict.fromkeys((text, text.lower()))
        )

    def term(self, term: Term) -> str:
        value = term.value
        if term.field == "state":
            states = [s.strip().upper() for s in value.split(",") if s.strip()]
            expr = f"state IN ({', '.join(self.p(s) for s in states)})"
        elif term.field in ("name", "worker"):
            expr = self.exact_or_prefix(term.field, value)
        elif term.field == "uuid":
            expr = self.prefix("uuid", value)
        elif term.field == "exception":
            expr = f"exception_type = {self.p(value)}"
        elif term.field in ("result", "args"):
            expr = self.contains(term.field, value)
        elif term.field == "kwargs":
            key, _, wanted = value.partition("=")
            # kwargs are stored as Celery's repr: {'key': value} or {'key': 'value'}.
            expr = (
                f"({self.contains('kwargs', f'{key!r}: {wanted}')} OR "
                f"{self.contains('kwargs', f'{key!r}: {wanted!r}')})"
            )
        elif self.d.name == "postgresql":
            # One expression, which a trigram index serves (schema: FREE_TEXT_INDEX), or the
            # uuid's start, which the primary key serves.
            expr = (
                f"({FREE_TEXT} LIKE {self.p('%' + _escape(value.lower()) + '%')} OR "
                f"{self.uuid_start(value)})"
            )
        else:
            expr = (
                "("
                + " OR ".join(
                    self.contains(f"COALESCE({column}, '')", value) for column in FREE_TEXT_COLUMNS
                )
                + f" OR {self.uuid_start(value)})"
            )
        return f"NOT COALESCE({expr}, FALSE)" if term.negated else expr


@dataclass(frozen=True)
class _Conditions:
    """The WHERE conditions of a page: those an index serves (uuid, name, state, worker by
    value or prefix, time, the cursor) and those none does (containment, free text on SQLite,
    payload and exception terms, negations), each with its parameters."""

    indexed: list[str]
    indexed_params: list[Any]
    unindexed: list[str]
    unindexed_params: list[Any]


def _conditions(dialect: Dialect, query: HistoryQuery) -> _Conditions:
    b = _Builder(dialect)
    indexed: list[str] = []
    if query.uuid:
        indexed.append(b.prefix("uuid", query.uuid))
    if query.states:
        indexed.append(f"state IN ({', '.join(b.p(s) for s in sorted(query.states))})")
    if query.since is not None:
        indexed.append(f"seen_at >= {b.p(dialect.to_time(query.since))}")
    if query.until is not None:
        indexed.append(f"seen_at <= {b.p(dialect.to_time(query.until))}")
    for term in query.terms:
        if _indexed(dialect, term):
            indexed.append(b.term(term))
    if query.after is not None:
        indexed.append(
            f"(seen_at, uuid) < ({b.p(dialect.to_time(query.after.seen_at))}, "
            f"{b.p(query.after.uuid)})"
        )
    u = _Builder(dialect)
    unindexed: list[str] = []
    if query.name:
        unindexed.append(u.contains("name", query.name))
    if query.worker:
        unindexed.append(u.contains("worker", query.worker))
    for term in query.terms:
        if not _indexed(dialect, term):
            unindexed.append(u.term(term))
    return _Conditions(indexed, b.params, unindexed, u.params)


def _indexed(dialect: Dialect, term: Term) -> bool:
    if term.negated:
        return False
    if term.field == "any":
        return dialect.name == "postgresql"  # the trigram index (FREE_TEXT_INDEX)
    return term.field in ("state", "name", "worker", "uuid")


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


_NEWEST_FIRST = " ORDER BY seen_at DESC, uuid DESC"


def select_page(
    dialect: Dialect, query: HistoryQuery, scan_end: Cursor | None = None
) -> tuple[str, list[Any]]:
    """The SELECT of one page of ``query`` and its parameters; with ``scan_end`` (what
    ``select_scan_end`` found) it reads no row past that one."""
    c = _conditions(dialect, query)
    indexed, params = c.indexed, c.indexed_params
    if scan_end is not None:
        # The same index walk, bounded below: the page stops at the budget's last row.
        indexed = [*indexed, f"(seen_at, uuid) >= ({dialect.placeholder}, {dialect.placeholder})"]
        params = [*params, dialect.to_time(scan_end.seen_at), scan_end.uuid]
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{_where(indexed + c.unindexed)}"
        f"{_NEWEST_FIRST} LIMIT {int(query.limit)}"
    )
    return sql, params + c.unindexed_params


def select_scan_end(dialect: Dialect, query: HistoryQuery) -> tuple[str, list[Any]] | None:
    """The SELECT of (seen_at, uuid) of the last row a page of ``query`` may read: the
    ``query.scan_rows``-th newest within its indexed conditions (no row: there are fewer).
    ``None`` when the page has no budget: no scan budget, not SQLite, or every condition is
    served by an index."""
    c = _conditions(dialect, query)
    if not (c.unindexed and dialect.name == "sqlite" and query.scan_rows > 0):
        return None
    sql = (
        f"SELECT seen_at, uuid FROM {TABLE}{_where(c.indexed)}{_NEWEST_FIRST} "
        f"LIMIT 1 OFFSET {int(query.scan_rows) - 1}"
    )
    return sql, c.indexed_params


def select_rows(dialect: Dialect, count: int) -> str:
    marks = ", ".join([dialect.placeholder] * count)
    return f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE uuid IN ({marks})"


def select_children(dialect: Dialect) -> str:
    return (
        f"SELECT uuid, name, state FROM {TABLE} WHERE parent_id = {dialect.placeholder} "
        "ORDER BY seen_at, uuid LIMIT 1000"
    )


@dataclass(frozen=True)
class Erasure:
    """Rows an erasure request names: by uuid, by name, within a time range (seen_at)."""

    uuids: tuple[str, ...] = ()
    name: str | None = None
    since: float | None = None
    until: float | None = None

    def where(self, dialect: Dialect) -> tuple[str, list[Any]]:
        b = _Builder(dialect)
        parts: list[str] = []
        if self.uuids:
            parts.append(f"uuid IN ({', '.join(b.p(u) for u in self.uuids)})")
        if self.name is not None:
            parts.append(f"name = {b.p(self.name)}")
        if self.since is not None:
            parts.append(f"seen_at >= {b.p(dialect.to_time(self.since))}")
        if self.until is not None:
            parts.append(f"seen_at < {b.p(dialect.to_time(self.until))}")
        if not parts:
            raise ValueError("an erasure needs a uuid, a name or a time range")
        return " AND ".join(parts), b.params
