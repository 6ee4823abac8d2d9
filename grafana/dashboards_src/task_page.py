"""The task page, ``Celery / Task``: one task of the durable history, Flower's task view.

Variable ``uuid`` (the Tasks dashboard's UUID links set it). Panels: the row, the exception and
traceback (stored only where the exporter runs with --expose-task-payloads), the timeline of its
events (every attempt: a retry is received again under the same uuid), and its children; the
parent and root uuids link to their own task pages.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models import common, dashboard

from . import history_sql as h
from . import history_table, recent_tasks
from . import panels as p

TITLE = "Celery / Task"
ROW_TITLE = "Task"
ERROR_TITLE = "Exception and traceback"
TIMELINE_TITLE = "Timeline"
CHILDREN_TITLE = "Children"


def _sql_table(title: str, description: str, sql: str, height: int) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(h.DATASOURCE)
        .with_target(h.SqlQuery("A", sql))
        .unit("short")
        .height(height)
        .span(24)
    )


def _row_panel() -> table.Panel:
    built = _sql_table(
        ROW_TITLE,
        f"The task's row of {h.TABLE}: every column but the timeline. Times are when the "
        "latest event of each kind happened (the worker's clock); args, kwargs, result, "
        "exception and traceback are empty unless the exporter runs with "
        "--expose-task-payloads (then masked). parent_id and root_id open their task pages, "
        "worker the worker page.",
        h.task_row_sql(h.TASK_PAGE_VAR),
        6,
    )
    for column in ("parent_id", "root_id"):
        built = p.override(built, column, {"links": [h.task_page_link(p.DATASOURCE_VAR)]})
    built = p.override(built, "worker", {"links": [h.worker_page_link(p.DATASOURCE_VAR)]})
    built = p.override(
        built,
        "state",
        {
            "mappings": recent_tasks.state_mappings(),
            "custom.cellOptions": common.TableColoredBackgroundCellOptions(
                mode=common.TableCellBackgroundDisplayMode.BASIC
            ),
        },
    )
    return built


def _error_panel() -> table.Panel:
    sql = (
        f'SELECT {h.col("exception_type")} AS "Exception", {h.col("exception")} AS '
        f'"Message", {h.col("traceback")} AS "Traceback"\nFROM {h.TABLE}\n'
        f"WHERE {h.col('uuid')} = {h.var(h.TASK_PAGE_VAR)} AND {h.col('exception_type')} "
        "IS NOT NULL"
    )
    built = _sql_table(
        ERROR_TITLE,
        "The latest failure's or retry's exception class (always stored), message and "
        "traceback (stored only with --expose-task-payloads). Empty for a task that never "
        "failed nor retried.",
        sql,
        8,
    )
    return p.override(
        built, "Traceback", {"custom.cellOptions": {"type": "auto", "wrapText": True}}
    )


def _timeline_panel() -> table.Panel:
    return _sql_table(
        TIMELINE_TITLE,
        "Every event of the task, oldest first (the row keeps its latest 64): task-sent by "
        "the client (Host), then per attempt task-received, task-started and how it ended. "
        "Attempt is the retries count the event carries (0 for the first attempt); "
        "task-started and the ends carry none.",
        h.timeline_sql(h.TASK_PAGE_VAR),
        10,
    )


def _children_panel() -> table.Panel:
    built = _sql_table(
        CHILDREN_TITLE,
        f"Tasks whose parent is this one (called from it, or the next step of its canvas), "
        f"oldest first, at most {h.CHILDREN_LIMIT}.",
        h.children_sql(h.TASK_PAGE_VAR),
        8,
    )
    return history_table.style_task_columns(built)


def uuid_variable() -> dashboard_builders.TextBoxVariable:
    return (
        dashboard_builders.TextBoxVariable(h.TASK_PAGE_VAR)
        .label("Task uuid")
        .description("The uuid of the task to show (the Tasks dashboard's UUIDs link here).")
        .default_value("")
        .current(dashboard.VariableOption(selected=True, text="", value=""))
    )


def build() -> dashboard_builders.Dashboard:
    board = (
        p.dashboard_shell(
            h.TASK_PAGE_UID,
            TITLE,
            "One task from the durable task history (PostgreSQL): Flower's task page.",
            p.TASKS_UID,
            "Celery / Tasks",
        )
        .with_variable(h.datasource_variable())
        .with_variable(uuid_variable())
    )
    for panel in (_row_panel(), _error_panel(), _timeline_panel(), _children_panel()):
        board = board.with_panel(panel)
    return board
