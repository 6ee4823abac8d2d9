"""The README's promises: its two first-screen commands exist, its tables match the code."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PUBLISHED_IMAGE, REPO, VERSION


def test_readme_tables_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/readme_tables.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_first_screen_gives_the_install_and_test_commands() -> None:
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:20])
    assert ".venv/bin/pip install . && .venv/bin/celery-events-exporter" in first_screen
    assert "\nscripts/test\n" in first_screen
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_first_screen_says_how_to_pull_and_run_the_release() -> None:
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:20])
    # The image the release workflow pushes, of this version; the package PyPI gets.
    assert f"\ndocker run --rm --network host {PUBLISHED_IMAGE}:{VERSION} --broker-url " in (
        first_screen
    )
    assert "\npipx install celery-events-exporter && celery-events-exporter --broker-url " in (
        first_screen
    )
