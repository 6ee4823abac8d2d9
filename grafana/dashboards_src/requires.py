"""``__requires``: what a dashboard needs from the Grafana it is imported into.

Grafana's import reads this list (as its own export writes it) to say which Grafana version,
data source plugins and panel plugins a dashboard uses, and to warn when one is missing, e.g.
the Infinity plugin of the Tasks dashboard's recent-tasks table. It is derived from the
generated dashboard, so a new panel type or data source cannot be left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

GRAFANA_VERSION = "11.6.0"
"""The oldest Grafana the dashboards are made for: the Infinity plugin's current version (the
Tasks dashboard's recent-tasks table) needs 11.6; the three dashboards link to each other and
are installed together."""

# Display names of the plugins Grafana ships (and Infinity), as its export writes them; another
# plugin is listed under its id.
PLUGIN_NAMES: Mapping[str, str] = {
    "prometheus": "Prometheus",
    "grafana-postgresql-datasource": "PostgreSQL",
    "postgres": "PostgreSQL",
    "yesoreyeram-infinity-datasource": "Infinity",
    "stat": "Stat",
    "table": "Table",
    "text": "Text",
    "timeseries": "Time series",
    "barchart": "Bar chart",
    "bargauge": "Bar gauge",
    "gauge": "Gauge",
    "piechart": "Pie chart",
    "state-timeline": "State timeline",
    "status-history": "Status history",
    "logs": "Logs",
}
# Not plugins: a row is layout, and these data source types are Grafana's own pseudo sources.
_NOT_PANELS = frozenset({"row"})
_NOT_DATASOURCES = frozenset({"grafana", "datasource", "dashboard", "__expr__"})


def _datasource_types(node: Any) -> Iterator[str]:
    """The type of every data source reference, and of every data source variable."""
    if isinstance(node, dict):
        reference = node.get("datasource")
        if isinstance(reference, dict) and isinstance(reference.get("type"), str):
            yield reference["type"]
        if node.get("type") == "datasource" and isinstance(node.get("query"), str):
            yield node["query"]  # a data source variable: its query is the plugin id
        for value in node.values():
            yield from _datasource_types(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_types(item)


def panel_types(board: Mapping[str, Any]) -> set[str]:
    """Every panel plugin the dashboard uses, rows' nested panels included."""
    found = set()
    for panel in board.get("panels") or []:
        for nested in [panel, *(panel.get("panels") or [])]:
            found.add(str(nested["type"]))
    return found - _NOT_PANELS


def datasource_types(board: Mapping[str, Any]) -> set[str]:
    """Every data source plugin the dashboard's panels, queries and variables refer to."""
    return set(_datasource_types(dict(board))) - _NOT_DATASOURCES


def requires(board: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``__requires`` list of ``board``: Grafana, then data sources, then panels, by id."""

    def entry(kind: str, plugin: str) -> dict[str, str]:
        return {"type": kind, "id": plugin, "name": PLUGIN_NAMES.get(plugin, plugin), "version": ""}

    return [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
        *(entry("datasource", plugin) for plugin in sorted(datasource_types(board))),
        *(entry("panel", plugin) for plugin in sorted(panel_types(board))),
    ]
