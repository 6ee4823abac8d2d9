"""Generate the Grafana dashboards from the metric catalogue.

Usage: ``python grafana/generate.py`` rewrites grafana/dashboards/*.json;
``python grafana/generate.py --check`` writes nothing and exits 1 if the committed JSON is stale.
``--selector 'cluster="eu"' --output-dir DIR`` writes dashboards whose every query reads the
exporter's series through that selector, as ``prometheus/generate_rules.py --selector`` does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    # Run as a script (python grafana/generate.py): make the repository root importable so the
    # `grafana` package and `exporter` resolve the same way as under pytest.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_events_exporter.exposition import promql as q
from grafana.dashboards_src import (
    history_sql,
    panels,
    queues,
    requires,
    task_page,
    tasks,
    worker_page,
    workers,
)
from grafana.dashboards_src.serialize import to_dict

if TYPE_CHECKING:
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# uid -> (file name, builder). The order is the order of all_queries().
DASHBOARDS: dict[str, tuple[str, Callable[[], dashboard_builders.Dashboard]]] = {
    panels.WORKERS_UID: ("celery-workers.json", workers.build),
    panels.TASKS_UID: ("celery-tasks.json", tasks.build),
    panels.QUEUES_UID: ("celery-queues.json", queues.build),
    history_sql.TASK_PAGE_UID: ("celery-task.json", task_page.build),
    history_sql.WORKER_PAGE_UID: ("celery-worker.json", worker_page.build),
}

# What the macros expand to when an expression is checked or run outside Grafana.
MACRO_VALUES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

_MACRO = re.compile(r"\$(__\w+)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")


def dashboard_dict(uid: str, selector: str = "") -> dict[str, Any]:
    """The dashboard as Grafana's JSON model, with stable panel ids and, as Grafana's export
    writes it, the ``__requires`` list its import checks; every PromQL query reads the
    exporter's series through ``selector`` (none by default)."""
    _, build = DASHBOARDS[uid]
    model = build().build()
    # The SDK leaves ids at 0; Grafana keys panel state (links, edit, repeats) on unique ids.
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    board = to_dict(model)
    for panel in board.get("panels") or []:
        for nested in [panel, *(panel.get("panels") or [])]:
            for target in nested.get("targets") or []:
                if "expr" in target:
                    target["expr"] = q.with_selector(target["expr"], selector)
    return {"__requires": requires.requires(board), **board}


def render(uid: str, selector: str = "") -> str:
    return (
        json.dumps(dashboard_dict(uid, selector), indent=2, sort_keys=True, ensure_ascii=False)
        + "\n"
    )


def output_path(uid: str, output_dir: Path | None = None) -> Path:
    return (output_dir or DASHBOARD_DIR) / DASHBOARDS[uid][0]


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Expand Grafana macros and dashboard variables the way Grafana would before querying.

    Variable values land inside PromQL double-quoted strings, so they are escaped for that. An
    unknown macro or variable raises KeyError: a typo must not pass as a literal.
    """

    def macro(match: re.Match[str]) -> str:
        return MACRO_VALUES[match.group(1)]

    def variable(match: re.Match[str]) -> str:
        value = variables[match.group(1) or match.group(2)]
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return _VARIABLE.sub(variable, _MACRO.sub(macro, expr))


def iter_targets(board: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(panel, target) for every PromQL query of the dashboard, rows' nested panels included."""
    for panel in board.get("panels", []):
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets") or []:
                # Only PromQL: the recent-tasks table queries the exporter's API through Infinity.
                if "expr" in target:
                    yield nested, target


def all_queries(
    worker_regex: str = ".*", task_regex: str = ".*", queue_regex: str = ".*"
) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL ready to run) for every query of every dashboard."""
    variables = {
        workers.WORKER_VAR: worker_regex,
        tasks.TASK_VAR: task_regex,
        queues.QUEUE_VAR: queue_regex,
        worker_page.WORKER_VAR: worker_regex,
    }
    return [
        (uid, str(panel["title"]), substitute(str(target["expr"]), variables))
        for uid in DASHBOARDS
        for panel, target in iter_targets(dashboard_dict(uid))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed dashboard differs from the generated one",
    )
    parser.add_argument(
        "--selector",
        default="",
        help="label matchers every query adds to the exporter's series, e.g. 'cluster=\"eu\"' "
        "(the rules' --selector); default: none",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where to write (default: grafana/dashboards)"
    )
    args = parser.parse_args(argv)
    try:
        q.parse_selector(args.selector)
    except ValueError as error:
        parser.error(str(error))
    stale: list[Path] = []
    for uid in DASHBOARDS:
        path = output_path(uid, args.output_dir)
        fresh = render(uid, args.selector)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == fresh:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fresh, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"stale: {path} (run python grafana/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
