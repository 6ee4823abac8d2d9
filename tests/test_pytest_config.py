"""The suite's own pytest configuration (pyproject.toml's ``[tool.pytest.ini_options]``), run
on a small test file by pytest itself (pytester): what it promises the suite, it does."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

THREAD_RAISES = """
import threading

def test_its_thread_raises():
    def check():
        assert 1 + 1 == 3, "an assertion in a helper thread"

    thread = threading.Thread(target=check)
    thread.start()
    thread.join()

def test_next():
    pass
"""


def _filterwarnings() -> list[str]:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    filters: list[str] = options["ini_options"]["filterwarnings"]
    return filters


def _ini(filters: list[str]) -> str:
    lines = "".join(f"    {line}\n" for line in filters)
    return f"[pytest]\nfilterwarnings =\n{lines}"


def test_an_exception_in_a_thread_fails_the_test_that_started_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(_ini(_filterwarnings()))
    pytester.makepyfile(THREAD_RAISES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: an assertion in a helper thread",
            "FAILED *::test_its_thread_raises*",
        ]
    )


def test_without_the_setting_pytest_only_warns(pytester: pytest.Pytester) -> None:
    """The control: pytest's default passes such a test, with a warning."""
    pytester.makeini(_ini(["default"]))
    pytester.makepyfile(THREAD_RAISES)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, warnings=1)
