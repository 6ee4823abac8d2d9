"""Panel, query and dashboard-chrome helpers shared by both dashboards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, table, text, timeseries
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import prometheus as prometheus_models
from grafana_foundation_sdk.models import text as text_models

from prometheus.rules_src.settings import DEFAULTS as ALERTS

DATASOURCE_VAR = "datasource"
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
TAG = "celery"
WORKERS_UID = "celery-workers"
TASKS_UID = "celery-tasks"
QUEUES_UID = "celery-queues"
REFRESH_INTERVALS = ["10s", "30s", "1m", "5m", "15m", "1h"]
DEFAULT_REFRESH = "30s"
# Grafana's range macros; tests substitute them before parsing. $__rate_interval for sliding
# rates (never fewer than two scrapes), $__range for totals over the dashboard's time range.
RATE_WINDOW = "$__rate_interval"
RANGE_WINDOW = "$__range"

GREEN = "green"
YELLOW = "yellow"
ORANGE = "orange"
RED = "red"


def thresholds(base: str, *steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    levels = [dashboard.Threshold(value=None, color=base)]
    levels += [dashboard.Threshold(value=value, color=color) for value, color in steps]
    return (
        dashboard_builders.ThresholdsConfig().mode(dashboard.ThresholdsMode.ABSOLUTE).steps(levels)
    )


FAILURE_RATIO_NOTICE = 0.01
"""Failure ratios turn yellow from here; red where CeleryTaskFailureRatioHigh fires."""
WAIT_NOTICE = 60.0
"""Seconds of waiting in a queue that turn yellow; red where CeleryQueueOldestTaskOld fires."""


def alert_levels(notice: float, alert_threshold: float) -> dashboard_builders.ThresholdsConfig:
    """Green, yellow from ``notice``, red from ``alert_threshold``: the value at which the
    matching alert of the generated rules fires (their defaults, ``ALERTS``), so a panel turns
    red where the alert pages. A notice level at or above the alert's is left out."""
    notice_step = [(notice, YELLOW)] if notice < alert_threshold else []
    return thresholds(GREEN, *notice_step, (alert_threshold, RED))


def failure_ratio_levels() -> dashboard_builders.ThresholdsConfig:
    return alert_levels(FAILURE_RATIO_NOTICE, ALERTS.failure_ratio_threshold)


def oldest_waiting_levels() -> dashboard_builders.ThresholdsConfig:
    return alert_levels(WAIT_NOTICE, ALERTS.queue_oldest_task_threshold)


def query(expr: str, ref_id: str, legend: str | None = None) -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(DATASOURCE).range()
    if legend is not None:
        built = built.legend_format(legend)
    return built


def instant_table_query(expr: str, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .instant()
        .format(prometheus_models.PromQueryFormat.TABLE)
    )


def instant_query(expr: str, ref_id: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(DATASOURCE).instant()


def stat_panel(
    title: str,
    description: str,
    expr: str,
    unit: str,
    colors: dashboard_builders.ThresholdsConfig,
    *,
    no_value: str = "0",
    width: int = 6,
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(instant_query(expr, "A"))
        .unit(unit)
        .thresholds(colors)
        .no_value(no_value)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(width)
    )


def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str,
    *,
    width: int = 8,
    height: int = 8,
    colors: dashboard_builders.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .min(0)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .height(height)
        .span(width)
    )
    if colors is not None:
        panel = panel.thresholds(colors).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
    return panel


def merged_table_panel(
    title: str,
    description: str,
    keys: Sequence[tuple[str, str]],
    columns: Sequence[tuple[str, str]],
    *,
    sort_by: str,
    sort_desc: bool,
    unit: str = "short",
    height: int = 10,
    width: int = 24,
) -> table.Panel:
    """One row per combination of the ``keys`` labels, given as (label, column title).

    ``columns`` are (column title, instant PromQL) in display order. Grafana names the value
    field of table query X "Value #X" once a panel has several queries (plain "Value" with one);
    merge joins the frames on their shared fields (Time and the key labels), and organize drops
    Time, orders the columns and gives them their titles.
    """
    ref_ids = [ref_letter(index) for index in range(len(columns))]
    value_names = [f"Value #{ref}" for ref in ref_ids] if len(columns) > 1 else ["Value"]
    index_by_name: dict[str, int] = {}
    rename_by_name: dict[str, str] = {}
    for label, key_title in keys:
        index_by_name[label] = len(index_by_name)
        rename_by_name[label] = key_title
    for value_name, (column_title, _) in zip(value_names, columns, strict=True):
        index_by_name[value_name] = len(index_by_name)
        rename_by_name[value_name] = column_title
    targets = [
        instant_table_query(expr, ref) for ref, (_, expr) in zip(ref_ids, columns, strict=True)
    ]
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .with_transformation(dashboard.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "includeByName": {},
                    "indexByName": index_by_name,
                    "renameByName": rename_by_name,
                },
            )
        )
        .unit(unit)
        .sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(sort_desc)])
        .filterable(True)
        .height(height)
        .span(width)
    )


def ref_letter(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index] if index < len(letters) else f"Q{index}"


def text_panel(title: str, description: str, markdown: str, *, height: int = 5) -> text.Panel:
    return (
        text.Panel()
        .title(title)
        .description(description)
        .mode(text_models.TextMode.MARKDOWN)
        .content(markdown)
        .height(height)
        .span(24)
    )


def override(panel: table.Panel, column: str, properties: Mapping[str, object]) -> table.Panel:
    return panel.override_by_name(
        column,
        [
            dashboard.DynamicConfigValue(id_val=key, value=value)
            for key, value in properties.items()
        ],
    )


def datasource_variable() -> dashboard_builders.DatasourceVariable:
    return (
        dashboard_builders.DatasourceVariable(DATASOURCE_VAR)
        .label("Data source")
        .description("The Prometheus that scrapes celery-events-exporter.")
        .type("prometheus")
    )


def regex_textbox(name: str, label: str, description: str) -> dashboard_builders.TextBoxVariable:
    return (
        dashboard_builders.TextBoxVariable(name)
        .label(label)
        .description(description)
        .default_value(".*")
        .current(dashboard.VariableOption(selected=True, text=".*", value=".*"))
    )


def dashboard_shell(
    uid: str, title: str, description: str, other_uid: str, other_title: str
) -> dashboard_builders.Dashboard:
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .timezone("browser")
        .time("now-1h", "now")
        .refresh(DEFAULT_REFRESH)
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(REFRESH_INTERVALS))
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .link(
            dashboard_builders.DashboardLink(other_title)
            .type(dashboard.DashboardLinkType.LINK)
            .url(f"/d/{other_uid}")
            .icon("dashboard")
            .tooltip(f"Open the {other_title} dashboard")
            .keep_time(True)
            .include_vars(True)
        )
        .link(
            dashboard_builders.DashboardLink("Celery dashboards")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(True)
        )
    )
