"""scripts/pytest-layers, the two test layers scripts/test (and CI) runs, on a small project of
its own: an emptied layer fails the run, arguments may narrow a layer away, and the unit layer
has no network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs pytest, unshare and ip

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pytest-layers"

PYPROJECT = """
[tool.pytest.ini_options]
addopts = "--strict-markers -p no:cacheprovider"
markers = ["unit: pure logic", "integration: real things"]
"""


def _project(path: Path, unit_marker: str, unit_body: str = "assert 1 + 1 == 2") -> Path:
    """A project of one test per layer; ``unit_marker`` is the pure test's marker."""
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / "test_layers.py").write_text(
        "import socket\nimport pytest\n\n"
        f"@pytest.mark.{unit_marker}\ndef test_pure():\n    {unit_body}\n\n"
        "@pytest.mark.integration\ndef test_real():\n    pass\n"
    )
    return path


def _run(
    project: Path, *args: str, path_first: Path | None = None, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    # The project's Python is this one: the layers run `python -m pytest`.
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    if path_first is not None:
        path = f"{path_first}:{path}"
    env = {**os.environ, "PATH": path}
    env.pop("UNIT_LAYER_NETWORK", None)
    env.update(env_vars)
    return subprocess.run(
        [str(SCRIPT), *args], cwd=project, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_both_layers_run_their_tests(tmp_path: Path) -> None:
    done = _run(_project(tmp_path, "unit"), "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("1 passed, 1 deselected") == 2


def test_a_layer_a_marker_mistake_emptied_fails_the_run(tmp_path: Path) -> None:
    project = _project(tmp_path, "integration")
    done = _run(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the unit layer collected no test (pytest exit 5)" in done.stderr
    assert "integration layer" not in done.stdout  # it stopped at the empty layer
    # Arguments that select nothing away (CI passes -p no:cacheprovider) do not excuse it.
    done = _run(project, "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the unit layer has no test even without the arguments given (-q)" in done.stderr


def test_arguments_may_narrow_a_layer_away(tmp_path: Path) -> None:
    project = _project(tmp_path, "unit")
    done = _run(project, "-q", "-k", "real")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the unit layer: no test matches the arguments given" in done.stdout
    assert "1 passed, 1 deselected" in done.stdout
    done = _run(project, "-q", "-k", "nothing_is_called_this")
    assert done.returncode == 5, done.stdout + done.stderr
    assert "no test was selected in either layer" in done.stderr


def test_a_unit_test_cannot_reach_a_server_on_this_machine(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        reach = f"socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
        project = _project(tmp_path, "unit", reach)
        # The control: pytest alone runs the same test with the network, and it passes.
        alone = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "unit"], cwd=project,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert alone.returncode == 0, alone.stdout
        done = _run(project, "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED test_layers.py::test_pure - ConnectionRefusedError" in done.stdout


def _no_namespaces(path: Path) -> Path:
    """A directory whose ``unshare`` fails as it does where namespaces are not allowed (some
    containers: "unshare failed: Operation not permitted"), to put first on the PATH."""
    path.mkdir()
    unshare = path / "unshare"
    unshare.write_text(
        "#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n"
    )
    unshare.chmod(0o755)
    return path


def test_no_network_namespace_fails_the_run_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    project = _project(tmp_path / "project", "unit")
    done = _run(project, "-q", path_first=_no_namespaces(tmp_path / "bin"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot isolate the unit layer: no network namespace can be made here" in done.stderr
    assert "passed" not in done.stdout  # neither layer ran


def test_the_network_allowed_knowingly_runs_both_layers_loudly(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    project = _project(tmp_path / "project", "unit")
    done = _run(
        project, "-q", path_first=_no_namespaces(tmp_path / "bin"), UNIT_LAYER_NETWORK="allowed"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NO NETWORK ISOLATION" in done.stderr
    assert "unit layer (pure logic), WITH the network" in done.stdout
    assert done.stdout.count("1 passed, 1 deselected") == 2
