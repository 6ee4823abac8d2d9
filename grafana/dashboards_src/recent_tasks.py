"""The per-task table of the Tasks dashboard: the exporter's /api/tasks through Infinity.

Per-task rows do not belong in Prometheus (one series per uuid would grow its index without
bound), so this panel reads the exporter's bounded recent-task store directly. The grafana
foundation SDK has no Infinity query builder; ``InfinityQuery`` emits the plugin's JSON model.

The query names only the path, ``/api/tasks``: Infinity prefixes it with the URL of the data
source the ``tasks_api`` variable selects, so where the exporter lives (and its credentials,
and ``allowedHosts``) is the data source's business, set once in provisioning
(``CELERY_EXPORTER_URL``, see grafana/provisioning/datasources) or in Grafana's UI, never in the
dashboard.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import common, dashboard

from . import panels as p

INFINITY_TYPE = "yesoreyeram-infinity-datasource"
API_DATASOURCE_VAR = "tasks_api"
API_PATH = "/api/tasks"
"""Relative: the selected Infinity data source's URL comes first."""
API_DATASOURCE = common.DataSourceRef(type_val=INFINITY_TYPE, uid=f"${{{API_DATASOURCE_VAR}}}")

TITLE = "Recent tasks"
# Search boxes -> /api/tasks query parameters (empty boxes filter nothing).
SEARCH_VARIABLES: tuple[tuple[str, str, str, str], ...] = (
    ("task_uuid", "UUID", "uuid", "Task uuid, or its beginning."),
    ("task_name", "Name contains", "name", "Part of the task name, any case."),
    ("task_state", "State", "state",
     "SUCCESS, FAILURE, STARTED, RECEIVED, RETRY, REVOKED, REJECTED, PENDING or LOST; "
     "several separated by commas."),
    ("task_worker", "Worker contains", "worker", "Part of the worker's hostname, any case."),
    ("task_search", "Search", "search",
     "Terms that must all hold: state:FAILURE, name:tasks.add (name:tasks.* a prefix), "
     "uuid:1f2e, worker:celery@host, exception:ValueError, result:, args:, kwargs:, -term "
     "negates, other words are looked for in the name, uuid, state, worker, exception, args, "
     "kwargs and result."),
)  # fmt: skip
# (JSON key, column title, Infinity column type), in Flower's order, the exception after Result:
# its class, which is served even when payloads (the message among them) are hidden.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "Name", "string"),
    ("uuid", "UUID", "string"),
    ("state", "State", "string"),
    ("args", "args", "string"),
    ("kwargs", "kwargs", "string"),
    ("result", "Result", "string"),
    ("exception_type", "Exception", "string"),
    ("received", "Received", "timestamp"),
    ("started", "Started", "timestamp"),
    ("runtime", "Runtime", "number"),
    ("worker", "Worker", "string"),
    ("retries", "Retries", "number"),
)
STATE_COLORS: tuple[tuple[str, str], ...] = (
    ("SUCCESS", p.GREEN),
    ("FAILURE", p.RED),
    ("STARTED", "blue"),
    ("RETRY", p.ORANGE),
    ("RECEIVED", "purple"),
    ("PENDING", "text"),
    ("REVOKED", p.YELLOW),
    ("REJECTED", p.YELLOW),
    ("LOST", "dark-red"),
)
LIMIT = 500


class InfinityQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """A JSON query of the Infinity plugin against one URL, with query parameters."""

    def __init__(self, ref_id: str, url: str, params: list[tuple[str, str]]) -> None:
        self.ref_id = ref_id
        self.url = url
        self.params = params

    def model(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": API_DATASOURCE.type_val, "uid": API_DATASOURCE.uid},
            "type": "json",
            "source": "url",
            "format": "table",
            "parser": "backend",
            "url": self.url,
            "url_options": {
                "method": "GET",
                "data": "",
                "params": [{"key": key, "value": value} for key, value in self.params],
            },
            "root_selector": "",
            "columns": [
                {"selector": key, "text": title, "type": kind} for key, title, kind in COLUMNS
            ],
        }

    def build(self) -> cogvariants.Dataquery:
        return UnknownDataquery(self.model())


def query_params() -> list[tuple[str, str]]:
    """What Grafana sends: the search boxes, the dashboard's time range, a row limit."""
    params = [(parameter, f"${{{name}}}") for name, _, parameter, _ in SEARCH_VARIABLES]
    return [*params, ("from", "${__from}"), ("to", "${__to}"), ("limit", str(LIMIT))]


def variables() -> list[cogbuilder.Builder[dashboard.VariableModel]]:
    found: list[cogbuilder.Builder[dashboard.VariableModel]] = [
        dashboard_builders.DatasourceVariable(API_DATASOURCE_VAR)
        .label("Tasks API")
        .description(
            "Infinity data source whose URL is the exporter's base URL (as the Grafana server "
            "reaches it), with the exporter's credentials."
        )
        .type(INFINITY_TYPE),
    ]
    for name, label, _, description in SEARCH_VARIABLES:
        found.append(
            dashboard_builders.TextBoxVariable(name)
            .label(label)
            .description(description)
            .default_value("")
            .current(dashboard.VariableOption(selected=True, text="", value=""))
        )
    return found


def state_mappings() -> list[dashboard.ValueMapping]:
    return [
        dashboard.ValueMap(
            options={
                state: dashboard.ValueMappingResult(color=color, index=index)
                for index, (state, color) in enumerate(STATE_COLORS)
            }
        )
    ]


def panel() -> table.Panel:
    built = (
        table.Panel()
        .title(TITLE)
        .description(
            "Single tasks, newest received first, as on Flower's Tasks tab: from the exporter's "
            "/api/tasks (its task history, not Prometheus), through Infinity. Filter with the "
            "UUID, Name, State, Worker and Search boxes; the dashboard's time range applies to "
            "Received. args, kwargs and Result stay empty unless the exporter runs with "
            "--expose-task-payloads; "
            "secrets in them are masked. Hover a cell to read a long value."
        )
        .datasource(API_DATASOURCE)
        .with_target(InfinityQuery("A", API_PATH, query_params()))
        .unit("short")
        .filterable(True)
        .sort_by([common_builders.TableSortByFieldState().display_name("Received").desc(True)])
        .height(14)
        .span(24)
    )
    built = p.override(
        built,
        "State",
        {
            "mappings": state_mappings(),
            "custom.cellOptions": common.TableColoredBackgroundCellOptions(
                mode=common.TableCellBackgroundDisplayMode.BASIC
            ),
            "custom.width": 110,
        },
    )
    built = p.override(built, "Runtime", {"unit": "s", "decimals": 3})
    built = p.override(built, "Retries", {"unit": "none", "decimals": 0})
    for column in ("Received", "Started"):
        built = p.override(built, column, {"unit": "dateTimeAsIsoNoDateIfToday"})
    built = p.override(
        built,
        "Exception",
        {
            "custom.cellOptions": common.TableColorTextCellOptions(),
            "color": {"mode": "fixed", "fixedColor": p.RED},
        },
    )
    return p.override(
        built,
        "UUID",
        {
            "links": [
                {
                    "title": "Show only this task",
                    "url": "/d/${__dashboard.uid}?var-task_uuid=${__value.raw}&${__url_time_range}"
                    f"&${{{API_DATASOURCE_VAR}:queryparam}}&${{{p.DATASOURCE_VAR}:queryparam}}",
                }
            ]
        },
    )
