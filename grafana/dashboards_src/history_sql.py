"""SQL panels over the durable task history (``celery_tasks``), through Grafana's built-in
PostgreSQL data source: the Tasks dashboard's history table, the task page and the worker page's
recent tasks.

Every column name comes from ``history/row.py`` through ``col``, and the table name from
``history/sql.py``: a renamed column fails generation (and the tests), not a panel. Every
dashboard variable reaches the SQL as ``${name:sqlstring}``, Grafana's SQL string format (the
value in single quotes, each quote doubled), never raw: a search box cannot inject SQL.
``grafana/sql_macros.py`` performs the same substitution, and Grafana's macros, for the tests.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import common

from celery_events_exporter.history.row import COLUMNS as HISTORY_COLUMNS
from celery_events_exporter.history.search import FIELDS
from celery_events_exporter.history.sql import TABLE as HISTORY_TABLE

POSTGRES_TYPE = "grafana-postgresql-datasource"
"""The core PostgreSQL data source's plugin id since Grafana 10.2 (``postgres`` before)."""
DATASOURCE_VAR = "history"
DATASOURCE = common.DataSourceRef(type_val=POSTGRES_TYPE, uid=f"${{{DATASOURCE_VAR}}}")
TABLE = HISTORY_TABLE
LIMIT = 500
"""Rows of the history table; the newest first."""
CHILDREN_LIMIT = 1000
"""Children listed on the task page (the history's own children query stops there too)."""

TASK_PAGE_UID = "celery-task"
WORKER_PAGE_UID = "celery-worker"
TASK_PAGE_VAR = "uuid"
WORKER_PAGE_VAR = "worker"


def col(name: str) -> str:
    """``name``, after checking ``celery_tasks`` has that column (history/row.py)."""
    if name not in HISTORY_COLUMNS:
        raise ValueError(f"{TABLE} has no column {name!r}")
    return name


def var(name: str) -> str:
    """A dashboard variable as an SQL string literal (Grafana's ``sqlstring`` format)."""
    return f"${{{name}:sqlstring}}"


class SqlQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """A raw SQL query of the PostgreSQL data source, returning a table."""

    def __init__(self, ref_id: str, sql: str) -> None:
        self.ref_id = ref_id
        self.sql = sql

    def model(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": POSTGRES_TYPE, "uid": DATASOURCE.uid},
            "editorMode": "code",
            "format": "table",
            "rawQuery": True,
            "rawSql": self.sql,
        }

    def build(self) -> cogvariants.Dataquery:
        return UnknownDataquery(self.model())


def datasource_variable() -> dashboard_builders.DatasourceVariable:
    return (
        dashboard_builders.DatasourceVariable(DATASOURCE_VAR)
        .label("Task history")
        .description(
            "PostgreSQL data source on the database of the exporter's --tasks.store "
            f"(table {TABLE}); a user with SELECT on that table is enough."
        )
        .type(POSTGRES_TYPE)
    )


SEARCH_FIELDS = FIELDS
"""The fields of the search box's terms, as in /api/tasks (history/search.py)."""
FREE_TEXT_COLUMNS = (
    "name", "uuid", "state", "worker", "exception_type", "args", "kwargs", "result",
)  # fmt: skip
"""What a term without a field is looked for in, as in /api/tasks."""


def _contains(column: str, needle: str) -> str:
    """``needle`` inside ``column``, any case, with no LIKE wildcards to escape."""
    return f"strpos(lower({col(column)}), lower({needle})) > 0"


def _kwargs_term(value: str) -> str:
    """``key=value`` against kwargs stored as Celery's repr, ``{'key': value}`` or
    ``{'key': 'value'}``, as /api/tasks reads it."""
    key = f"split_part({value}, '=', 1)"
    wanted = f"substr({value}, strpos({value}, '=') + 1)"
    quote = "''''"  # an SQL literal holding one single quote
    item = f"{quote} || {key} || {quote} || ': '"
    bare = f"{item} || {wanted}"
    quoted = f"{item} || {quote} || {wanted} || {quote}"
    return f"({_contains('kwargs', bare)} OR {_contains('kwargs', quoted)})"


def _exact_or_prefix(column: str, value: str) -> str:
    c = col(column)
    return (
        f"CASE WHEN length({value}) > 1 AND right({value}, 1) = '*' "
        f"THEN starts_with({c}, left({value}, -1)) ELSE {c} = {value} END"
    )


def search_condition(search: str) -> str:
    """SQL that holds when every term of the search box ``search`` (an SQL text expression)
    holds, read as /api/tasks reads it (history/search.py), split at blanks (no quoting):
    ``state:A,B`` (state in the list, any case), ``name:x`` / ``worker:x`` (equal; a trailing
    ``*`` makes a prefix), ``uuid:x`` (prefix), ``exception:X`` (the class), ``result:`` and
    ``args:`` (contained, any case), ``kwargs:key=value`` (that item of the kwargs' repr),
    ``-term`` (negated) and free text (contained,
    any case, in the name, uuid, state, worker, exception class, args, kwargs or result)."""
    free_text = (
        f"strpos(lower(concat_ws(' ', {', '.join(col(c) for c in FREE_TEXT_COLUMNS)})), "
        "lower(t.body)) > 0"
    )
    cases = {
        "state": f"{col('state')} = ANY(string_to_array(upper(t.value), ','))",
        "name": _exact_or_prefix("name", "t.value"),
        "worker": _exact_or_prefix("worker", "t.value"),
        "uuid": f"starts_with({col('uuid')}, t.value)",
        "exception": f"{col('exception_type')} = t.value",
        "result": _contains("result", "t.value"),
        "args": _contains("args", "t.value"),
        "kwargs": _kwargs_term("t.value"),
    }
    if set(cases) != set(SEARCH_FIELDS):  # a field added to the API's search
        raise ValueError(f"search fields {sorted(set(SEARCH_FIELDS) - set(cases))} have no SQL")
    whens = "".join(f"\n      WHEN '{field}' THEN {expr}" for field, expr in cases.items())
    fields = ", ".join(repr(f) for f in SEARCH_FIELDS)
    # One row per term (split at blanks): its sign, its field (none for free text), its value;
    # the task is kept when no term fails.
    return (
        "NOT EXISTS (\n"
        "    SELECT 1 FROM (\n"
        "      SELECT term LIKE '-_%' AS negated,\n"
        "        CASE WHEN term LIKE '-_%' THEN substr(term, 2) ELSE term END AS body\n"
        f"      FROM regexp_split_to_table(btrim({search}), '\\s+') AS term\n"
        "      WHERE term <> ''\n"
        "    ) AS b CROSS JOIN LATERAL (\n"
        f"      SELECT CASE WHEN lower(split_part(b.body, ':', 1)) IN ({fields})\n"
        "          AND strpos(b.body, ':') > 1\n"
        "        THEN lower(split_part(b.body, ':', 1)) ELSE '' END AS field,\n"
        "        substr(b.body, strpos(b.body, ':') + 1) AS value, b.body, b.negated\n"
        "    ) AS t\n"
        f"    WHERE t.negated = COALESCE(CASE t.field{whens}\n"
        f"      ELSE {free_text} END, FALSE)\n"
        "  )"
    )


def history_table_sql(uuid: str, name: str, state: str, worker: str, search: str) -> str:
    """The Tasks dashboard's history table: the rows first seen in the time range, filtered by
    the boxes (each empty box filters nothing) as /api/tasks filters: uuid a prefix, name and
    worker contained (any case), state one of a comma-separated list, and the search terms."""
    u, n, s, w, q = (var(v) for v in (uuid, name, state, worker, search))
    states = f"string_to_array(upper(replace({s}, ' ', '')), ',')"
    columns = ", ".join(f'{col(c)} AS "{title}"' for c, title in HISTORY_TABLE_COLUMNS)
    return (
        f"SELECT {columns}\nFROM {TABLE}\n"
        f"WHERE $__timeFilter({col('seen_at')})\n"
        f"  AND ({u} = '' OR starts_with({col('uuid')}, {u}))\n"
        f"  AND ({n} = '' OR {_contains('name', n)})\n"
        f"  AND ({s} = '' OR {col('state')} = ANY({states}))\n"
        f"  AND ({w} = '' OR {_contains('worker', w)})\n"
        f"  AND {search_condition(q)}\n"
        f"ORDER BY {col('seen_at')} DESC, {col('uuid')} DESC\nLIMIT {LIMIT}"
    )


HISTORY_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("seen_at", "Seen"),
    ("name", "Name"),
    ("uuid", "UUID"),
    ("state", "State"),
    ("args", "args"),
    ("kwargs", "kwargs"),
    ("result", "Result"),
    ("exception_type", "Exception"),
    ("received", "Received"),
    ("started", "Started"),
    ("runtime", "Runtime"),
    ("worker", "Worker"),
    ("retries", "Retries"),
)
"""Flower's Tasks columns (as the Infinity table's), after when the history first saw the task."""

TASK_ROW_COLUMNS: tuple[str, ...] = tuple(c for c in HISTORY_COLUMNS if c != "events")
"""The task page's row: every column but the timeline (its own panel). args, kwargs, result,
exception and traceback hold something only where the exporter ran with
--expose-task-payloads, masked; the history never stores them otherwise."""


def task_row_sql(uuid: str) -> str:
    return (
        f"SELECT {', '.join(col(c) for c in TASK_ROW_COLUMNS)}\nFROM {TABLE}\n"
        f"WHERE {col('uuid')} = {var(uuid)}"
    )


TIMELINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "Time"),
    ("type", "Event"),
    ("worker", "Host"),
    ("retries", "Attempt"),
)


def timeline_sql(uuid: str) -> str:
    """One line per event of the task's timeline (the row's ``events`` JSON, its latest 64),
    oldest first; Attempt is the retries count the event carries (task-sent and task-received
    carry one: 0 for the first attempt, 1 for the first retry...)."""
    events = col("events")
    return (
        "SELECT to_timestamp((e->>'timestamp')::double precision) AS \"Time\", "
        "e->>'type' AS \"Event\", e->>'worker' AS \"Host\", "
        "(e->>'retries')::integer AS \"Attempt\"\n"
        f"FROM {TABLE} CROSS JOIN LATERAL jsonb_array_elements({events}) AS e\n"
        f"WHERE {col('uuid')} = {var(uuid)}\n"
        "ORDER BY 1, 2"
    )


RELATIVES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uuid", "UUID"),
    ("name", "Name"),
    ("state", "State"),
    ("worker", "Worker"),
    ("seen_at", "Seen"),
)


def children_sql(uuid: str) -> str:
    """The tasks whose parent is this one (a canvas' or a task's own calls), oldest first."""
    columns = ", ".join(f'{col(c)} AS "{title}"' for c, title in RELATIVES_COLUMNS)
    return (
        f"SELECT {columns}\nFROM {TABLE}\nWHERE {col('parent_id')} = {var(uuid)}\n"
        f"ORDER BY {col('seen_at')}, {col('uuid')}\nLIMIT {CHILDREN_LIMIT}"
    )


def worker_tasks_sql(worker: str) -> str:
    """The worker page's latest tasks, in the time range."""
    columns = ", ".join(f'{col(c)} AS "{title}"' for c, title in RELATIVES_COLUMNS)
    return (
        f"SELECT {columns}\nFROM {TABLE}\n"
        f"WHERE $__timeFilter({col('seen_at')}) AND {col('worker')} = {var(worker)}\n"
        f"ORDER BY {col('seen_at')} DESC, {col('uuid')} DESC\nLIMIT {LIMIT}"
    )


def _carried(prometheus_var: str | None) -> str:
    """The data sources a link carries: the history's, and the Prometheus one if given."""
    carried = f"&${{{DATASOURCE_VAR}:queryparam}}"
    if prometheus_var is not None:
        carried += f"&${{{prometheus_var}:queryparam}}"
    return carried + "&${__url_time_range}"


def task_page_link(prometheus_var: str | None = None) -> dict[str, str]:
    """A data link from a cell holding a uuid to the task page (from a dashboard that has the
    ``history`` variable, and ``prometheus_var`` if given)."""
    return {
        "title": "Open the task page",
        "url": f"/d/{TASK_PAGE_UID}?var-{TASK_PAGE_VAR}=${{__value.raw}}"
        + _carried(prometheus_var),
    }


def worker_page_link(prometheus_var: str, *, carry_history: bool = True) -> dict[str, str]:
    """A data link from a cell holding a worker's hostname to the worker page; the history's
    data source is carried from dashboards that have it."""
    carried = (
        _carried(prometheus_var)
        if carry_history
        else f"&${{{prometheus_var}:queryparam}}&${{__url_time_range}}"
    )
    return {
        "title": "Open the worker page",
        "url": f"/d/{WORKER_PAGE_UID}?var-{WORKER_PAGE_VAR}=${{__value.raw}}" + carried,
    }
