"""Release notes from CHANGELOG.md: the section of one version, checked against pyproject.toml.

    python scripts/release_notes.py v0.1.0 > notes.md     (the release workflow, from the tag)

The tag is ``v`` and the version; it must be pyproject.toml's version, and CHANGELOG.md must
have a non-empty section for it (``## 0.1.0``, ``## [0.1.0]`` or ``## 0.1.0 - 2026-12-24``):
a tag without either fails the release before anything is published.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ReleaseError(ValueError):
    """The tag, the version and the changelog do not agree."""


def version_of_tag(tag: str) -> str:
    if not re.fullmatch(r"v\d+\.\d+\.\d+(?:[-.]?(?:a|b|rc|post|dev)\d+)?", tag):
        raise ReleaseError(f"tag {tag!r} is not v<version> (v1.2.3, v1.2.3rc1)")
    return tag[1:]


def section(changelog: str, version: str) -> str:
    """The body of ``version``'s section: from its heading to the next ``## `` heading."""
    dated = r"(?:[ \t]+-[ \t]+\S.*)?"  # "## 1.2.0 - 2027-01-15"
    heading = re.compile(rf"^## \[?{re.escape(version)}\]?{dated}[ \t]*$", re.MULTILINE)
    found = heading.search(changelog)
    if found is None:
        raise ReleaseError(f"CHANGELOG.md has no section '## {version}'")
    following = re.compile(r"^## ", re.MULTILINE).search(changelog, found.end())
    body = changelog[found.end() : following.start() if following else len(changelog)].strip()
    if not body:
        raise ReleaseError(f"CHANGELOG.md's section for {version} is empty")
    return body + "\n"


def notes(tag: str, changelog: str, pyproject: str) -> str:
    version = version_of_tag(tag)
    declared = tomllib.loads(pyproject)["project"]["version"]
    if declared != version:
        raise ReleaseError(f"tag {tag} but pyproject.toml says version {declared}")
    return section(changelog, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tag", help="the release tag, v<version>")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        text = notes(
            args.tag,
            (args.repo / "CHANGELOG.md").read_text(encoding="utf-8"),
            (args.repo / "pyproject.toml").read_text(encoding="utf-8"),
        )
    except ReleaseError as exc:
        print(f"release_notes: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
