"""The release artefacts, as a user gets them: `python -m build`, `twine check`, the wheel
installed into a fresh virtualenv, and `pipx install .`, each ending in a command that runs.

The build runs on a copy of the repository without the development leftovers (.venv, egg-info),
with build isolation, so it sees only what a fresh clone has.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# Every test here runs pip, build, twine or pipx (and reaches the package index).
pytestmark = pytest.mark.integration

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
DIST_NAME = "celery_events_exporter"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".prometheus-data",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "node_modules",
)  # fmt: skip


def _environment() -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE (set on these machines) makes setuptools warn that it skips
    # byte-compiling: a warning of the environment, not of the project. The dev venv stays out.
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV"}
    }
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=_environment(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}:\n{output}"
    )
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the dist folder, the build's output) of `python -m build` on a clean copy."""
    source = tmp_path_factory.mktemp("source") / "celery-events-exporter"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    output = _run([sys.executable, "-m", "build", "--outdir", "dist", "."], source)
    return source / "dist", output


def test_build_gives_a_wheel_and_an_sdist_without_warnings(built: tuple[Path, str]) -> None:
    dist, output = built
    warnings = [line for line in output.splitlines() if re.search(r"warn|deprecat", line, re.I)]
    assert warnings == []
    assert sorted(p.name for p in dist.iterdir()) == [
        f"{DIST_NAME}-{VERSION}-py3-none-any.whl",
        f"{DIST_NAME}-{VERSION}.tar.gz",
    ]
    with zipfile.ZipFile(dist / f"{DIST_NAME}-{VERSION}-py3-none-any.whl") as wheel:
        info = f"{DIST_NAME}-{VERSION}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        names = set(wheel.namelist())
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "Description-Content-Type: text/markdown\n" in metadata
    assert "celery-events-exporter = celery_events_exporter.cli:main" in entry_points
    assert "celery_events_exporter/cli.py" in names
    # Only the exporter is distributed: no tests, demo, bench or dashboards' generator.
    assert {name.split("/", 1)[0] for name in names} == {"celery_events_exporter", info}
    # The plain reference counting is the tests' specification, not the exporter's code.
    assert "celery_events_exporter/state/reference.py" not in names
    with tarfile.open(dist / f"{DIST_NAME}-{VERSION}.tar.gz") as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"PKG-INFO", "pyproject.toml", "README.md", "celery_events_exporter/cli.py"} <= members


def test_twine_check_passes(built: tuple[Path, str]) -> None:
    dist, _ = built
    files = sorted(dist.iterdir())
    output = _run([sys.executable, "-m", "twine", "check", "--strict", *files], dist)
    assert output.count("PASSED") == len(files) == 2, output


def _version_line(command: Path) -> str:
    output = _run([command, "--version"], command.parent, timeout=60)
    assert re.search(rf"\b{re.escape(VERSION)}\b", output), output
    return output


def test_the_wheel_installs_into_a_fresh_venv_and_runs(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    dist, _ = built
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    wheel = dist / f"{DIST_NAME}-{VERSION}-py3-none-any.whl"
    _run([venv / "bin" / "pip", "install", "--quiet", wheel], tmp_path)
    assert _version_line(venv / "bin" / "celery-events-exporter").startswith(
        "celery-events-exporter"
    )


def test_pipx_install_gives_a_working_command(tmp_path: Path) -> None:
    source = tmp_path / "celery-events-exporter"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    home, bin_dir = tmp_path / "pipx-home", tmp_path / "bin"
    env_run = [
        "env", f"PIPX_HOME={home}", f"PIPX_BIN_DIR={bin_dir}", f"PIPX_MAN_DIR={tmp_path / 'man'}",
        sys.executable, "-m", "pipx", "install", "--python", sys.executable, ".",
    ]  # fmt: skip
    output = _run([*env_run], source)
    assert "celery-events-exporter" in output, output
    assert _version_line(bin_dir / "celery-events-exporter").startswith("celery-events-exporter")
