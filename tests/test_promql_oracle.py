"""tests/promql_oracle.py against Prometheus' own engine (promtool test rules): what increase()
makes of a counter's samples, and why a short window with few samples reads more than it holds.

A counter at 1 after a warm-up rises to 3 (a batch of 2). Scraped every minute, a window from
the last 1 to the 3 reads 2. With the scrapes in between missed, the same window holds the same
rise of 2, yet increase() extrapolates it towards the window's start as far as the point where
the counter would be 0: it reads 3, the batch and the warm-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import promql_oracle
from tests.conftest import require_tool

pytestmark = pytest.mark.integration  # runs promtool

MINUTE = 60_000
DENSE: list[int | None] = [0, 1, 1, 1, 1, 1, 1, 1, 1, 3]
SPARSE: list[int | None] = [0, 1, None, None, None, None, 1, None, None, 3]
"""Samples at 0, 1, ..., 9 minutes; None: the scrape was missed."""


def _points(values: list[int | None], start_ms: int, end_ms: int) -> list[promql_oracle.Point]:
    """The samples a window [start_ms, end_ms] selects (both ends included in Prometheus 2.x)."""
    return [
        (i * MINUTE, float(v))
        for i, v in enumerate(values)
        if v is not None and start_ms <= i * MINUTE <= end_ms
    ]


def test_increase_reads_the_rise_or_more_as_promtool_does(tmp_path: Path) -> None:
    at, window = 9 * MINUTE, 5 * MINUTE
    cases = {"dense": DENSE, "sparse": SPARSE}
    expected = {}
    for replica, values in cases.items():
        points = _points(values, at - window, at)
        series = promql_oracle.Series({"replica": replica}, points)
        assert series.rise() == 2  # each window holds the batch, exactly
        expected[replica] = promql_oracle.increase(points, at - window, at)
    assert expected == {"dense": 2.0, "sparse": 3.0}

    def notation(values: list[int | None]) -> str:
        return " ".join("_" if v is None else str(v) for v in values)

    test_file = tmp_path / "increase.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {
                                "series": f'celery_task_failed_total{{replica="{replica}"}}',
                                "values": notation(values),
                            }
                            for replica, values in cases.items()
                        ],
                        "promql_expr_test": [
                            {
                                "expr": "increase(celery_task_failed_total[5m])",
                                "eval_time": "9m",
                                "exp_samples": [
                                    {"labels": f'{{replica="{replica}"}}', "value": value}
                                    for replica, value in expected.items()
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    done = subprocess.run(
        [require_tool("promtool", "apt-get install prometheus"), "test", "rules", str(test_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
