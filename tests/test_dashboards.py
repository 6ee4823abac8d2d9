"""The generated Grafana dashboards: fresh, valid PromQL over catalogue metrics, Flower's layout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from celery_events_exporter.exposition import catalogue as metrics
from celery_events_exporter.tasks.store import STATES
from celery_events_exporter.web.api import TASK_PARAMETERS as TASK_API_PARAMETERS
from celery_events_exporter.web.api import TASK_ROW_KEYS
from grafana import generate
from grafana.dashboards_src import (
    history_sql,
    panels,
    queues,
    recent_tasks,
    tasks,
    worker_page,
    workers,
)
from grafana.dashboards_src.serialize import round_trip
from tests.replicas import undeduplicated

REPO = Path(__file__).resolve().parent.parent
UIDS = list(generate.DASHBOARDS)
VIEWS = [panels.WORKERS_UID, panels.TASKS_UID, panels.QUEUES_UID]
"""Flower's three tabs; the others are the task and worker pages."""
# Which label each dashboard's search variable filters, and the variable's name.
FILTERS = {
    panels.WORKERS_UID: (metrics.WORKER, workers.WORKER_VAR),
    panels.TASKS_UID: (metrics.TASK, tasks.TASK_VAR),
    panels.QUEUES_UID: (metrics.QUEUE, queues.QUEUE_VAR),
    history_sql.WORKER_PAGE_UID: (metrics.WORKER, worker_page.WORKER_VAR),
}

# Flower's Workers columns as /work/shared/seed-flower-monitoring.md lists them, Load Average
# split into its three figures (Grafana cannot render three numbers in one cell).
FLOWER_WORKER_COLUMNS = [
    "Worker Name",
    "Status",
    "Active",
    "Processed",
    "Failed",
    "Succeeded",
    "Retried",
    "Load Average (1 min)",
    "Load Average (5 min)",
    "Load Average (15 min)",
]


def committed(uid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(generate.output_path(uid).read_text(encoding="utf-8"))
    return data


def all_panels(board: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector of a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield from selectors(node.expr)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)


def metric_names(expr: str) -> set[str]:
    names = {selector.name for selector in selectors(promql_parser.parse(expr))}
    assert None not in names, f"selector without a metric name in {expr}"
    return {name for name in names if name is not None}


@pytest.mark.parametrize("uid", UIDS)
def test_committed_json_is_what_the_generator_writes(uid: str) -> None:
    path = generate.output_path(uid)
    assert path.exists(), f"{path} missing: run python grafana/generate.py"
    assert path.read_text(encoding="utf-8") == generate.render(uid), (
        f"{path} is stale: run python grafana/generate.py"
    )


def test_generation_is_deterministic() -> None:
    for uid in UIDS:
        assert generate.render(uid) == generate.render(uid)


def test_check_flag_fails_on_a_stale_file_and_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for uid in UIDS:
        (tmp_path / generate.DASHBOARDS[uid][0]).write_text(generate.render(uid), "utf-8")
    monkeypatch.setattr(generate, "DASHBOARD_DIR", tmp_path)
    assert generate.main(["--check"]) == 0

    stale = tmp_path / generate.DASHBOARDS[panels.TASKS_UID][0]
    stale.write_text("{}\n", encoding="utf-8")
    assert generate.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "{}\n"

    assert generate.main([]) == 0
    assert stale.read_text(encoding="utf-8") == generate.render(panels.TASKS_UID)


def test_a_selector_reaches_every_query_as_in_the_rules(tmp_path: Path) -> None:
    selector = 'cluster="eu", namespace=~"celery-.*"'
    assert generate.main(["--selector", selector, "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, _ in generate.DASHBOARDS.values()
    )
    variables = {"worker": ".*", "task": ".*", "queue": ".*"}
    checked = 0
    for path in tmp_path.iterdir():
        board = json.loads(path.read_text(encoding="utf-8"))
        for _, target in generate.iter_targets(board):
            expr = generate.substitute(str(target["expr"]), variables)
            for selector_node in selectors(promql_parser.parse(expr)):
                matchers = {
                    (m.name, m.value)
                    for m in selector_node.matchers.matchers
                    if m.name != "__name__"
                }
                assert {("cluster", "eu"), ("namespace", "celery-.*")} <= matchers, expr
                checked += 1
    assert checked > 100
    # The committed dashboards, made without one, carry no such matcher (nor a job=).
    assert "cluster=" not in generate.render(panels.TASKS_UID)
    assert 'job="' not in generate.render(panels.TASKS_UID)
    with pytest.raises(SystemExit):
        generate.main(["--selector", "cluster=eu", "--output-dir", str(tmp_path)])


def test_script_check_passes_on_the_committed_files() -> None:
    # The documented entry point, run as a script from the repository root.
    result = subprocess.run(
        [sys.executable, "grafana/generate.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("worker_regex", "task_regex"),
    [(".*", ".*"), ("celery@web-1", "blurit\\.image"), ('odd"quote\\.x', 'x"y')],
)
def test_every_expression_parses(worker_regex: str, task_regex: str) -> None:
    queries = generate.all_queries(worker_regex, task_regex)
    # The task page reads the history only (SQL).
    assert {uid for uid, _, _ in queries} == set(UIDS) - {history_sql.TASK_PAGE_UID}
    for uid, title, expr in queries:
        try:
            promql_parser.parse(expr)
        except ValueError as error:
            pytest.fail(f"{uid} / {title}: {error}\n{expr}")


def test_every_metric_is_in_the_catalogue() -> None:
    exported = metrics.sample_names()
    used: set[str] = set()
    for uid, title, expr in generate.all_queries():
        names = metric_names(expr)
        assert names, f"{uid} / {title} reads no metric: {expr}"
        assert names <= exported, f"{uid} / {title}: unknown {sorted(names - exported)}"
        used |= names
    required = {
        *(spec.sample_names[0] for spec in metrics.TASK_STATE_COUNTERS.values()),
        metrics.TASK_EXCEPTIONS.sample_names[0],
        *metrics.TASK_RUNTIME.sample_names,
        f"{metrics.TASK_QUEUE_WAIT.name}_bucket",
        metrics.WORKER_ONLINE.name,
        metrics.WORKER_ACTIVE_TASKS.name,
        metrics.WORKER_LOAD1.name,
        metrics.WORKER_LOAD5.name,
        metrics.WORKER_LOAD15.name,
    }
    assert required - used == set()


def test_every_fleet_series_is_deduplicated_across_exporter_replicas() -> None:
    # Two exporters of one broker (an HA pair) must not double a panel: each series is folded
    # with max without (instance, pod), after rate/increase, before any sum.
    for uid, title, expr in generate.all_queries():
        assert undeduplicated(expr) == [], f"{uid} / {title} counts replicas twice: {expr}"


def test_the_replica_check_catches_a_plain_sum() -> None:
    assert undeduplicated('sum by (worker) (celery_task_received_total{worker=~"w"})') == [
        "celery_task_received_total"
    ]
    assert undeduplicated("count(max without (instance) (celery_worker_online) == 1)") == [
        "celery_worker_online"
    ]
    assert undeduplicated("max without (instance, pod) (delta(celery_worker_load1[5m]))") == [
        "celery_worker_load1"
    ]


@pytest.mark.parametrize("uid", list(FILTERS))
def test_every_selector_honours_the_search_variable(uid: str) -> None:
    label, variable = FILTERS[uid]
    sentinel = "sentinel-(a|b).*"
    queries = generate.all_queries(worker_regex=sentinel, task_regex=sentinel, queue_regex=sentinel)
    for query_uid, title, expr in queries:
        if query_uid != uid:
            continue
        for selector in selectors(promql_parser.parse(expr)):
            filters = [
                (matcher.op, matcher.value)
                for matcher in selector.matchers.matchers
                if matcher.name == label
            ]
            assert filters == [(promql_parser.MatchOp.Re, sentinel)], (
                f"{uid} / {title}: {selector.name} not filtered by ${variable}"
            )


@pytest.mark.parametrize("uid", UIDS)
def test_range_functions_use_grafana_windows(uid: str) -> None:
    for panel, target in generate.iter_targets(committed(uid)):
        expr = str(target["expr"])
        windows = re.findall(r"\[([^\]]*)\]", expr)
        if re.search(r"\b(rate|increase)\(", expr):
            assert windows, f"{panel['title']}: rate or increase without a range: {expr}"
        assert set(windows) <= {"$__rate_interval", "$__range"}, (panel["title"], windows)
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", (panel["title"], expr)


def test_substitution_rejects_unknown_variables_and_macros() -> None:
    with pytest.raises(KeyError):
        generate.substitute('up{worker=~"$wroker"}', {"worker": ".*"})
    with pytest.raises(KeyError):
        generate.substitute("rate(up[$__rate_intervl])", {})
    assert (
        generate.substitute(
            'rate(x{a=~"${worker}", b=~"${task:regex}", c=~"$task"}[$__rate_interval]) '
            "+ increase(x[$__range])",
            {"worker": "w", "task": "t"},
        )
        == 'rate(x{a=~"w", b=~"t", c=~"t"}[1m]) + increase(x[1h])'
    )


def workers_table() -> Mapping[str, Any]:
    board = committed(panels.WORKERS_UID)
    [table] = [p for p in all_panels(board) if p.get("title") == workers.TABLE_TITLE]
    assert table["type"] == "table"
    return table


def visible_columns(table: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field name, title) of the columns the organize transformation shows, in order."""
    [organize] = [t for t in table["transformations"] if t["id"] == "organize"]
    options = organize["options"]
    shown = [
        name for name in options["indexByName"] if not options["excludeByName"].get(name, False)
    ]
    shown.sort(key=lambda name: options["indexByName"][name])
    return [(name, options["renameByName"].get(name, name)) for name in shown]


def test_workers_table_has_flowers_columns_in_flowers_order() -> None:
    table = workers_table()
    assert [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    columns = visible_columns(table)
    # Flower's columns first and as they are, then what this exporter adds.
    assert [title for _, title in columns] == [
        *FLOWER_WORKER_COLUMNS,
        "Prefetched",
        "Offline since",
    ]
    assert columns[0][0] == metrics.WORKER
    assert table["options"]["sortBy"] == [{"desc": False, "displayName": "Worker Name"}]


def test_workers_table_columns_read_the_right_metrics() -> None:
    table = workers_table()
    by_ref = {target["refId"]: target for target in table["targets"]}
    for target in by_ref.values():
        assert target["instant"] is True
        assert target["format"] == "table"
    online = metrics.WORKER_ONLINE.name
    # Task counts per worker come from celery_worker_tasks_total, which keeps the worker label
    # with --no-worker-label too (the task counters then lose it).
    per_worker = metrics.WORKER_TASKS.sample_names[0]
    states = {"Processed": "received", "Failed": "failed", "Succeeded": "succeeded"}
    states["Retried"] = "retried"
    expected = {
        "Status": {online},
        "Active": {metrics.WORKER_ACTIVE_TASKS.name},
        **{title: {per_worker, online} for title in states},
        "Load Average (1 min)": {metrics.WORKER_LOAD1.name},
        "Load Average (5 min)": {metrics.WORKER_LOAD5.name},
        "Load Average (15 min)": {metrics.WORKER_LOAD15.name},
        "Prefetched": {metrics.WORKER_PREFETCHED_TASKS.name},
        "Offline since": {metrics.WORKER_LAST_HEARTBEAT.name, online},
    }
    for field, title in visible_columns(table)[1:]:
        ref = field.removeprefix("Value #")
        expr = generate.substitute(by_ref[ref]["expr"], {workers.WORKER_VAR: ".*"})
        assert metric_names(expr) == expected[title], title
        # One value per worker: gauges keep the worker's own sample, counters add up its tasks.
        kind = "sum" if title in ("Processed", "Failed", "Succeeded", "Retried") else "max"
        assert row_aggregation(expr) == (kind, [metrics.WORKER]), title
        if title in states:
            state_matchers = [
                (matcher.op, matcher.value)
                for selector in selectors(promql_parser.parse(expr))
                if selector.name == per_worker
                for matcher in selector.matchers.matchers
                if matcher.name == metrics.STATE
            ]
            assert state_matchers == [(promql_parser.MatchOp.Re, states[title])], title


def row_aggregation(expr: str) -> tuple[str, list[str]]:
    """The aggregation that decides a column's rows (the left side of a zero-filling `or`)."""
    node: Any = promql_parser.parse(expr)
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    if isinstance(node, promql_parser.BinaryExpr) and str(node.op) in ("or", "and"):
        node = node.lhs
    assert isinstance(node, promql_parser.AggregateExpr), expr
    assert node.modifier is not None, expr
    assert node.modifier.type == promql_parser.AggModifierType.By, expr
    return str(node.op), list(node.modifier.labels)


def test_workers_status_maps_online_green_and_offline_red() -> None:
    table = workers_table()
    [status] = [o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Status"]
    properties = {prop["id"]: prop["value"] for prop in status["properties"]}
    [mapping] = properties["mappings"]
    assert mapping["type"] == "value"
    assert {key: (v["text"], v["color"]) for key, v in mapping["options"].items()} == {
        "1": ("Online", "green"),
        "0": ("Offline", "red"),
    }


@pytest.mark.parametrize("uid", UIDS)
def test_every_panel_has_a_description_and_every_data_panel_a_unit(uid: str) -> None:
    for panel in all_panels(committed(uid)):
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        if panel.get("targets"):
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"{panel['title']}: no unit"


@pytest.mark.parametrize("uid", UIDS)
def test_datasource_is_a_variable_used_everywhere(uid: str) -> None:
    board = committed(uid)
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    reference = {"type": "prometheus", "uid": "${datasource}"}
    # The recent-tasks table reads the exporter's API through its own datasource variable.
    api = {"type": recent_tasks.INFINITY_TYPE, "uid": f"${{{recent_tasks.API_DATASOURCE_VAR}}}"}
    # The history's tables read PostgreSQL through theirs.
    history = {"type": history_sql.POSTGRES_TYPE, "uid": f"${{{history_sql.DATASOURCE_VAR}}}"}
    for panel in all_panels(board):
        if panel.get("datasource") == history:
            assert [t["datasource"] for t in panel["targets"]] == [history], panel["title"]
    data_panels = [
        p
        for p in all_panels(board)
        if p["type"] not in ("row", "text") and p.get("datasource") not in (api, history)
    ]
    if uid == history_sql.TASK_PAGE_UID:
        assert not data_panels
        return
    assert data_panels
    for panel in data_panels:
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]


def datasource_references(node: Any) -> Iterator[Any]:
    """Every value of a "datasource" key anywhere in the dashboard JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item)


@pytest.mark.parametrize("uid", UIDS)
def test_data_sources_are_chosen_in_any_grafana(uid: str) -> None:
    # Imported into an existing Grafana, the dashboards must work with whatever data sources it
    # has: every reference goes through a datasource variable, none names a uid, and nothing
    # points at the compose stack's hosts.
    board = committed(uid)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    expected_types = {
        panels.DATASOURCE_VAR: "prometheus",
        recent_tasks.API_DATASOURCE_VAR: recent_tasks.INFINITY_TYPE,
        history_sql.DATASOURCE_VAR: history_sql.POSTGRES_TYPE,
    }
    references = list(datasource_references(board))
    assert references
    for reference in references:
        assert isinstance(reference, dict), reference
        name = str(reference["uid"]).removeprefix("${").removesuffix("}")
        assert name in expected_types, reference
        assert (variables[name]["type"], variables[name]["query"]) == (
            "datasource",
            expected_types[name],
        )
        assert reference["type"] == expected_types[name]
        # No preselected uid: Grafana takes the default data source of the type.
        assert "current" not in variables[name] or not variables[name]["current"]
    assert [v["name"] for v in variables.values() if v["type"] == "constant"] == []
    text = generate.render(uid)
    assert "exporter:19808" not in text and "localhost" not in text


@pytest.mark.parametrize("uid", UIDS)
def test_links_sit_in_the_top_bar(uid: str) -> None:
    # placement "inControlsMenu" (the SDK's default) hides links in the controls menu of current
    # Grafana and drops the dashboards-type dropdown there; without it they are in the top bar.
    links = committed(uid)["links"]
    assert [link["type"] for link in links] == ["link", "dashboards"]
    for link in links:
        assert "placement" not in link, link


@pytest.mark.parametrize("uid", VIEWS)
def test_dashboard_chrome(uid: str) -> None:
    board = committed(uid)
    _, variable = FILTERS[uid]
    assert board["uid"] == uid
    assert "celery" in board["tags"]
    assert board["refresh"] == "30s"
    assert "30s" in board["timepicker"]["refresh_intervals"]
    [search] = [v for v in board["templating"]["list"] if v["name"] == variable]
    assert (search["type"], search["query"]) == ("textbox", ".*")
    others = {f"/d/{u}" for u in UIDS if u != uid}
    assert any(link.get("url") in others for link in board["links"])
    assert any(
        link["type"] == "dashboards" and link["tags"] == ["celery"] for link in board["links"]
    )


@pytest.mark.parametrize("uid", UIDS)
def test_panels_fit_the_grid_without_overlapping(uid: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    ids = []
    for panel in committed(uid)["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    assert len(set(ids)) == len(ids) and 0 not in ids


def test_tasks_dashboard_covers_the_brief() -> None:
    board = committed(panels.TASKS_UID)
    titles = [panel["title"] for panel in all_panels(board)]
    for _, state in tasks.STATES:
        assert f"{state} per second" in titles
    for required in (
        "Failure ratio per task",
        "Runtime p50 per task",
        "Runtime p95 per task",
        "Runtime p99 per task",
        "Queue wait p95 per task",
        "Slowest tasks (time range)",
        "Failures by exception class",
    ):
        assert required in titles
    [slowest] = [p for p in all_panels(board) if p["title"] == "Slowest tasks (time range)"]
    assert slowest["options"]["sortBy"] == [{"desc": True, "displayName": "Runtime p95"}]
    assert [title for _, title in visible_columns(slowest)][:2] == ["Name", "Runtime p95"]


def recent_tasks_table() -> Mapping[str, Any]:
    board = committed(panels.TASKS_UID)
    top = board["panels"]
    [row_index] = [
        i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == tasks.RECENT_TASKS_ROW
    ]
    table: Mapping[str, Any] = top[row_index + 1]
    assert (table["type"], table["title"]) == ("table", recent_tasks.TITLE)
    return table


def test_recent_tasks_table_reads_the_exporter_api_through_infinity() -> None:
    table = recent_tasks_table()
    variables = {v["name"]: v for v in committed(panels.TASKS_UID)["templating"]["list"]}
    api = variables[recent_tasks.API_DATASOURCE_VAR]
    assert (api["type"], api["query"]) == ("datasource", "yesoreyeram-infinity-datasource")
    assert table["datasource"] == {
        "type": "yesoreyeram-infinity-datasource",
        "uid": f"${{{recent_tasks.API_DATASOURCE_VAR}}}",
    }
    [target] = table["targets"]
    assert (target["type"], target["source"], target["format"], target["parser"]) == (
        "json", "url", "table", "backend",
    )  # fmt: skip
    # A path only: the Infinity data source chosen in the variable supplies the exporter's URL.
    assert target["url"] == "/api/tasks"
    params = {p["key"]: p["value"] for p in target["url_options"]["params"]}
    # Every search box is a textbox variable, empty by default, wired to its API parameter.
    assert params == {
        "uuid": "${task_uuid}",
        "name": "${task_name}",
        "state": "${task_state}",
        "worker": "${task_worker}",
        "search": "${task_search}",
        "from": "${__from}",
        "to": "${__to}",
        "limit": "500",
    }
    for parameter, value in params.items():
        assert parameter in TASK_API_PARAMETERS
        name = value.strip("${}")
        if not name.startswith("__") and parameter != "limit":
            assert (variables[name]["type"], variables[name]["query"]) == ("textbox", "")
    # Flower's Tasks columns, in its order, and the failure's exception next to the result.
    assert [(c["selector"], c["text"]) for c in target["columns"]] == [
        ("name", "Name"), ("uuid", "UUID"), ("state", "State"), ("args", "args"),
        ("kwargs", "kwargs"), ("result", "Result"), ("exception_type", "Exception"),
        ("received", "Received"), ("started", "Started"), ("runtime", "Runtime"),
        ("worker", "Worker"), ("retries", "Retries"),
    ]  # fmt: skip
    assert {c["selector"] for c in target["columns"]} <= set(TASK_ROW_KEYS)
    assert table["options"]["sortBy"] == [{"desc": True, "displayName": "Received"}]


def test_recent_tasks_states_are_coloured_and_runtime_has_units() -> None:
    overrides = {
        o["matcher"]["options"]: {prop["id"]: prop["value"] for prop in o["properties"]}
        for o in recent_tasks_table()["fieldConfig"]["overrides"]
    }
    [mapping] = overrides["State"]["mappings"]
    colors = {state: result["color"] for state, result in mapping["options"].items()}
    assert {k: colors[k] for k in ("SUCCESS", "FAILURE", "STARTED")} == {
        "SUCCESS": "green", "FAILURE": "red", "STARTED": "blue",
    }  # fmt: skip
    assert set(colors) == set(STATES)
    assert overrides["State"]["custom.cellOptions"]["type"] == "color-background"
    assert overrides["Runtime"]["unit"] == "s"
    assert overrides["Exception"]["color"] == {"fixedColor": "red", "mode": "fixed"}


@pytest.mark.parametrize("uid", UIDS)
def test_json_round_trips_through_the_sdk_models(uid: str) -> None:
    # from_json drops keys the schema does not know, so a misspelt key shows up as a difference.
    # __requires is the import format's (Grafana's export writes it), not the dashboard model's.
    data = committed(uid)
    del data["__requires"]
    assert round_trip(data) == data


def _used_plugins(board: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(panel types, data source types) the dashboard uses, found without the generator's help:
    every panel, every "datasource" reference and every data source variable."""
    panel_types = {p["type"] for p in all_panels(board)} - {"row"}
    datasource_types = {ref["type"] for ref in datasource_references(board)}
    datasource_types |= {
        v["query"] for v in board["templating"]["list"] if v["type"] == "datasource"
    }
    return panel_types, datasource_types


@pytest.mark.parametrize("uid", UIDS)
def test_requires_lists_every_panel_and_data_source_the_dashboard_uses(uid: str) -> None:
    board = committed(uid)
    declared: dict[str, set[str]] = {}
    for entry in board["__requires"]:
        assert set(entry) == {"type", "id", "name", "version"}, entry
        assert entry["name"], entry
        declared.setdefault(entry["type"], set()).add(entry["id"])
    panel_types, datasource_types = _used_plugins(board)
    assert declared == {
        "grafana": {"grafana"},
        "panel": panel_types,
        "datasource": datasource_types,
    }
    [grafana] = [e for e in board["__requires"] if e["type"] == "grafana"]
    # Infinity's current version needs Grafana 11.6 or later.
    assert tuple(map(int, grafana["version"].split("."))) >= (11, 6, 0)


def test_the_tasks_dashboard_declares_the_infinity_plugin() -> None:
    requires = committed(panels.TASKS_UID)["__requires"]
    assert {
        "type": "datasource",
        "id": recent_tasks.INFINITY_TYPE,
        "name": "Infinity",
        "version": "",
    } in requires
    for uid in (panels.WORKERS_UID, panels.QUEUES_UID):
        assert recent_tasks.INFINITY_TYPE not in {e["id"] for e in committed(uid)["__requires"]}


def _alert_threshold(alert: str) -> float:
    """The number the committed alert compares its first clause with: ``... > 0.1``."""
    rules_file = REPO / "prometheus" / "rules" / "celery-alerts.rules.yml"
    for group in yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                first_clause = rule["expr"].splitlines()[0]
                return float(re.fullmatch(r".* > ([0-9.e+-]+)", first_clause).group(1))  # type: ignore[union-attr]
    raise AssertionError(f"no alert {alert} in {rules_file}")


def _threshold_steps(board: Mapping[str, Any], title: str) -> list[list[dict[str, Any]]]:
    """The threshold steps of every panel titled ``title`` and every table column so named."""
    found = []
    for panel in all_panels(board):
        if panel.get("title", "").startswith(title):
            found.append(panel["fieldConfig"]["defaults"]["thresholds"]["steps"])
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            if override["matcher"] == {"id": "byName", "options": title}:
                found += [
                    prop["value"]["steps"]
                    for prop in override["properties"]
                    if prop["id"] == "thresholds"
                ]
    return found


@pytest.mark.parametrize(
    ("alert", "title", "uids", "places"),
    [
        (
            "CeleryTaskFailureRatioHigh",
            "Failure ratio",
            (panels.WORKERS_UID, panels.TASKS_UID),
            # Workers' stat; Tasks' stat, table column and chart.
            4,
        ),
        # Queues' stat and chart.
        ("CeleryQueueOldestTaskOld", "Oldest waiting", (panels.QUEUES_UID,), 2),
    ],
)
def test_panels_turn_red_where_the_alert_fires(
    alert: str, title: str, uids: tuple[str, ...], places: int
) -> None:
    threshold = _alert_threshold(alert)
    steps = [s for uid in uids for s in _threshold_steps(committed(uid), title)]
    assert len(steps) == places, steps
    for levels in steps:
        colours = [(step["value"], step["color"]) for step in levels]
        red = [value for value, colour in colours if colour == "red"]
        assert red == [threshold], colours
        # Below the alert's level, a panel may warn (yellow) but never shows red.
        assert all(value is None or value <= threshold for value, _ in colours), colours


# Flower's Broker tab: Name, Messages, Unacked, Ready, Consumers; then the oldest waiting task.
BROKER_COLUMNS = ["Name", "Messages", "Unacked", "Ready", "Consumers", "Oldest waiting"]


def test_queues_table_is_flowers_broker_tab() -> None:
    board = committed(panels.QUEUES_UID)
    [table] = [p for p in all_panels(board) if p.get("title") == queues.TABLE_TITLE]
    assert table["type"] == "table"
    assert table["fieldConfig"]["defaults"]["custom"]["filterable"] is True
    columns = visible_columns(table)
    assert [title for _, title in columns] == BROKER_COLUMNS
    assert columns[0][0] == metrics.QUEUE
    by_ref = {target["refId"]: target for target in table["targets"]}
    length, unacked = metrics.QUEUE_LENGTH.name, metrics.QUEUE_UNACKED.name
    expected = {
        "Messages": {length, unacked},
        "Unacked": {unacked},
        "Ready": {length},
        "Consumers": {metrics.QUEUE_CONSUMERS.name},
        "Oldest waiting": {metrics.QUEUE_OLDEST_TASK_AGE.name},
    }
    for field, title in columns[1:]:
        target = by_ref[field.removeprefix("Value #")]
        assert (target["instant"], target["format"]) == (True, "table")
        expr = generate.substitute(target["expr"], {queues.QUEUE_VAR: ".*"})
        assert metric_names(expr) == expected[title], title
        assert row_aggregation(expr) == ("max", [metrics.QUEUE]), title
    # The search box: a regex over queue names, like the other dashboards' ones.
    [search] = [v for v in board["templating"]["list"] if v["name"] == queues.QUEUE_VAR]
    assert (search["type"], search["query"]) == ("textbox", ".*")


def test_the_unacked_figures_say_why_they_are_empty_on_redis() -> None:
    board = committed(panels.QUEUES_UID)
    [stat] = [p for p in all_panels(board) if p.get("title") == "Unacked messages"]
    # Shown in the panel itself when it has no value, and explained in its description.
    assert "Redis" in stat["fieldConfig"]["defaults"]["noValue"]
    assert "management API" in stat["fieldConfig"]["defaults"]["noValue"]
    for text in (stat["description"], queues.UNACKED_ONLY_WITH_MANAGEMENT):
        assert "Redis" in text and "'unacked' hash" in text, text
        assert "--rabbitmq-management-url" in text, text
    [table] = [p for p in all_panels(board) if p.get("title") == queues.TABLE_TITLE]
    assert "empty on Redis" in table["description"]


def test_queues_dashboard_charts_length_age_and_in_out() -> None:
    board = committed(panels.QUEUES_UID)
    charts = {
        p["title"]: {
            name
            for target in p["targets"]
            for name in metric_names(generate.substitute(target["expr"], {"queue": ".*"}))
        }
        for p in all_panels(board)
        if p["type"] == "timeseries"
    }
    assert charts == {
        "Queue length": {metrics.QUEUE_LENGTH.name},
        "Oldest waiting task per queue": {metrics.QUEUE_OLDEST_TASK_AGE.name},
        "In and out per queue": {metrics.TASK_SENT.sample_names[0], metrics.QUEUE_LENGTH.name},
    }


_LINK = re.compile(r"^/d/([\w-]+|\$\{__dashboard\.uid\})(?:\?(.*))?$")


def _links(node: Any) -> Iterator[str]:
    """The url of every dashboard link and data link."""
    if isinstance(node, dict):
        if isinstance(node.get("url"), str):
            yield node["url"]
        for key, value in node.items():
            if key != "targets":  # the Infinity query's url is the API's path, not a link
                yield from _links(value)
    elif isinstance(node, list):
        for item in node:
            yield from _links(item)


@pytest.mark.parametrize("uid", UIDS)
def test_links_point_to_dashboards_and_variables_that_exist(uid: str) -> None:
    names = {u: {v["name"] for v in committed(u)["templating"]["list"]} for u in UIDS}
    urls = list(_links(committed(uid)))
    assert urls
    for url in urls:
        match = _LINK.match(url)
        assert match, url
        target = uid if match.group(1) == "${__dashboard.uid}" else match.group(1)
        assert target in names, url
        for part in (match.group(2) or "").split("&"):
            if part.startswith("var-"):
                assert part[4:].split("=", 1)[0] in names[target], url
            elif part.startswith("${") and part.endswith(":queryparam}"):
                variable = part[2:].removesuffix(":queryparam}")
                # The variable is carried from this dashboard into one that has it too.
                assert variable in names[uid] and variable in names[target], url
            else:
                assert part in ("", "${__url_time_range}"), url


def test_task_and_worker_cells_link_to_their_pages() -> None:
    tasks_urls = list(_links(committed(panels.TASKS_UID)))
    assert any(u.startswith(f"/d/{history_sql.TASK_PAGE_UID}?var-uuid=") for u in tasks_urls)
    assert any(u.startswith(f"/d/{history_sql.WORKER_PAGE_UID}?var-worker=") for u in tasks_urls)
    workers_urls = list(_links(committed(panels.WORKERS_UID)))
    assert any(u.startswith(f"/d/{history_sql.WORKER_PAGE_UID}?var-worker=") for u in workers_urls)
    page_urls = list(_links(committed(history_sql.TASK_PAGE_UID)))
    assert sum(u.startswith(f"/d/{history_sql.TASK_PAGE_UID}?") for u in page_urls) >= 3


@pytest.mark.parametrize("uid", UIDS)
def test_every_sql_variable_is_quoted_by_grafana(uid: str) -> None:
    from grafana.sql_macros import substitute

    names = {v["name"] for v in committed(uid)["templating"]["list"]}
    found = 0
    for panel in all_panels(committed(uid)):
        for target in panel.get("targets") or []:
            if "rawSql" in target:
                found += 1
                # Raises for a variable interpolated raw, or one the dashboard lacks.
                substitute(target["rawSql"], dict.fromkeys(names, "x'y"), time_from=0, time_to=1)
    assert found or uid in VIEWS


def test_requires_names_the_postgresql_data_source() -> None:
    for uid in (panels.TASKS_UID, history_sql.TASK_PAGE_UID, history_sql.WORKER_PAGE_UID):
        assert {
            "type": "datasource",
            "id": "grafana-postgresql-datasource",
            "name": "PostgreSQL",
            "version": "",
        } in committed(uid)["__requires"]


@pytest.mark.parametrize("column", ["seen_at", "uuid", "events", "parent_id", "exception_type"])
def test_a_renamed_history_column_fails_generation(
    column: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SQL names columns only through history_sql.col(), checked against history/row.py.
    from celery_events_exporter.history.row import COLUMNS

    renamed = tuple(f"{c}_v2" if c == column else c for c in COLUMNS)
    monkeypatch.setattr(history_sql, "HISTORY_COLUMNS", renamed)
    with pytest.raises(ValueError, match=f"no column '{column}'"):
        for uid in (panels.TASKS_UID, history_sql.TASK_PAGE_UID, history_sql.WORKER_PAGE_UID):
            generate.dashboard_dict(uid)


def test_the_history_sql_reads_only_the_history_table() -> None:
    from celery_events_exporter.history.sql import TABLE

    read = set()
    for uid in UIDS:
        for panel in all_panels(committed(uid)):
            for target in panel.get("targets") or []:
                if "rawSql" in target:
                    read |= set(re.findall(r"\bFROM (\w+)", target["rawSql"]))
    # The search box's terms come from a set-returning function, not a table.
    assert read == {TABLE, "regexp_split_to_table"}
