"""The Tasks dashboard's history table: ``celery_tasks`` through the PostgreSQL data source.

The same search boxes as the Infinity table (``recent_tasks.SEARCH_VARIABLES``) filter it the
same way; the time picker bounds when the history first saw a task. A UUID opens the task page,
a worker the worker page.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.models import common

from . import history_sql as h
from . import panels as p
from . import recent_tasks

TITLE = "Task history"


def sql() -> str:
    names = {parameter: name for name, _, parameter, _ in recent_tasks.SEARCH_VARIABLES}
    return h.history_table_sql(
        names["uuid"], names["name"], names["state"], names["worker"], names["search"]
    )


def style_task_columns(built: table.Panel) -> table.Panel:
    """State colours, units, and links on UUID and Worker, for any table of task rows."""
    built = p.override(
        built,
        "State",
        {
            "mappings": recent_tasks.state_mappings(),
            "custom.cellOptions": common.TableColoredBackgroundCellOptions(
                mode=common.TableCellBackgroundDisplayMode.BASIC
            ),
            "custom.width": 110,
        },
    )
    built = p.override(built, "UUID", {"links": [h.task_page_link(p.DATASOURCE_VAR)]})
    return p.override(built, "Worker", {"links": [h.worker_page_link(p.DATASOURCE_VAR)]})


def panel() -> table.Panel:
    built = (
        table.Panel()
        .title(TITLE)
        .description(
            f"Single tasks from the durable history (table {h.TABLE} of the exporter's "
            "--tasks.store, on PostgreSQL), newest first seen first, at most "
            f"{h.LIMIT}; the time range bounds when a task was first seen. The UUID, Name, "
            "State, Worker and Search boxes filter as /api/tasks does (an empty box filters "
            "nothing); search terms are split at blanks. A UUID opens the task page, a worker "
            "the worker page. args, kwargs and Result hold something only if the exporter "
            "runs with --expose-task-payloads (masked). Without PostgreSQL, read the Recent "
            "tasks table below (Infinity)."
        )
        .datasource(h.DATASOURCE)
        .with_target(h.SqlQuery("A", sql()))
        .unit("short")
        .filterable(True)
        .sort_by([common_builders.TableSortByFieldState().display_name("Seen").desc(True)])
        .height(14)
        .span(24)
    )
    built = style_task_columns(built)
    built = p.override(built, "Runtime", {"unit": "s", "decimals": 3})
    built = p.override(built, "Retries", {"unit": "none", "decimals": 0})
    for column in ("Seen", "Received", "Started"):
        built = p.override(built, column, {"unit": "dateTimeAsIsoNoDateIfToday"})
    return p.override(
        built,
        "Exception",
        {
            "custom.cellOptions": common.TableColorTextCellOptions(),
            "color": {"mode": "fixed", "fixedColor": p.RED},
        },
    )
