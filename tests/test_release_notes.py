"""scripts/release_notes.py: the release's notes are CHANGELOG.md's section for the tag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, VERSION

SCRIPT = REPO / "scripts" / "release_notes.py"
CHANGELOG = """# Changelog

## Unreleased

### Added
- Next thing.

## [1.2.0] - 2027-01-15

### Added
- The image.
- Release notes.

### Fixed
- A typo.

## 1.1.0

- Older.
"""
PYPROJECT = '[project]\nname = "x"\nversion = "{}"\n'


def run(tag: str, changelog: str, version: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(version))
    return subprocess.run(
        [sys.executable, str(SCRIPT), tag, "--repo", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.unit
def test_the_notes_are_the_section_of_the_tagged_version(tmp_path: Path) -> None:
    done = run("v1.2.0", CHANGELOG, "1.2.0", tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == ("### Added\n- The image.\n- Release notes.\n\n### Fixed\n- A typo.\n")
    last = run("v1.1.0", CHANGELOG, "1.1.0", tmp_path)
    assert last.stdout == "- Older.\n"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("tag", "version", "changelog", "message"),
    [
        ("v1.2.0", "1.2.1", CHANGELOG, "tag v1.2.0 but pyproject.toml says version 1.2.1"),
        ("v1.3.0", "1.3.0", CHANGELOG, "CHANGELOG.md has no section '## 1.3.0'"),
        ("1.2.0", "1.2.0", CHANGELOG, "tag '1.2.0' is not v<version>"),
        ("v1.2", "1.2", CHANGELOG, "tag 'v1.2' is not v<version>"),
        ("v2.0.0", "2.0.0", "## 2.0.0\n\n## 1.0.0\n- x\n", "section for 2.0.0 is empty"),
        # 1.2.0 must not match the section of 1.2.01 or of 11.2.0.
        ("v1.2.0", "1.2.0", "## 1.2.01\n- a\n## 11.2.0\n- b\n", "no section '## 1.2.0'"),
    ],
)
def test_a_release_that_does_not_add_up_fails_with_a_reason(
    tag: str, version: str, changelog: str, message: str, tmp_path: Path
) -> None:
    done = run(tag, changelog, version, tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert message in done.stderr


@pytest.mark.unit
def test_this_version_is_unreleased_until_its_section_is_written() -> None:
    """The repository as it is: a tag of the current version fails until CHANGELOG.md gets its
    section (docs/releasing.md: the release commit moves Unreleased under the version)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), f"v{VERSION}"], capture_output=True, text=True, timeout=60
    )
    changelog = (REPO / "CHANGELOG.md").read_text()
    if f"\n## {VERSION}" in changelog or f"\n## [{VERSION}]" in changelog:
        assert done.returncode == 0 and done.stdout.strip(), done.stderr
    else:
        assert done.returncode == 1
        assert f"no section '## {VERSION}'" in done.stderr
