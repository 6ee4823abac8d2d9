"""Generate README.md's metric and configuration tables from the code that defines them.

python scripts/readme_tables.py          # rewrite the tables in README.md
python scripts/readme_tables.py --check  # exit 1 if README.md is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from celery_events_exporter.cli import SETTINGS, full_help
from celery_events_exporter.exposition.catalogue import CATALOGUE

README = Path(__file__).resolve().parents[1] / "README.md"


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in CATALOGUE:
        names = " ".join(f"`{name}`" for name in spec.sample_names[:1])
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        rows.append(f"| {names} | {spec.kind.value} | {labels} | {_cell(spec.help)} |")
    return "\n".join(rows)


def config_table() -> str:
    """One row per setting declared in exporter.config.Config."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for item in SETTINGS:
        flags = (item.setting.flag, *filter(None, [item.setting.negation]))
        flag = " / ".join(f"`{name}`" for name in flags)
        default = item.default_text()
        shown = f"`{default}`" if default is not None else "—"
        if isinstance(item.default, bool):
            shown = default or "—"
        row = f"| {flag} | `{item.setting.env}` | {_cell(shown)} | {_cell(full_help(item))} |"
        rows.append(row)
    return "\n".join(rows)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


TABLES = {"metrics": metrics_table, "configuration": config_table}


def render(readme: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(
            rf"(<!-- {name}:begin -->\n)(?:.*?\n)?(<!-- {name}:end -->)", flags=re.DOTALL
        )
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- {name}:begin/end --> markers")
        readme = _fill(pattern, readme, make())
    return readme


def _fill(pattern: re.Pattern[str], text: str, table: str) -> str:
    return pattern.sub(lambda match: f"{match.group(1)}{table}\n{match.group(2)}", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(
                "README.md tables are stale: run python scripts/readme_tables.py", file=sys.stderr
            )
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
