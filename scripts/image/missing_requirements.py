"""Print the requirements a wheelhouse lacks for the Python that runs this script.

scripts/build-image runs it with the image's own interpreter (Debian's 3.11.2): pip on the build
machine evaluates environment markers with its own Python, so a marker such as
``python_full_version < "3.11.3"`` (redis-py's async-timeout) may differ between the two. Only
the standard library and pip's vendored ``packaging`` are used: the image's venv has nothing else
yet.

    python missing_requirements.py WHEELHOUSE REQUIREMENT...

prints one requirement a line (markers dropped) for every distribution that some wheel in the
closure needs and the wheelhouse has no wheel of; nothing when the closure is complete.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    return metadata.get_all("Requires-Dist") or []


def wheelhouse(folder: Path) -> dict[str, Path]:
    """Canonical distribution name -> its wheel (a wheel's name starts with it)."""
    return {canonicalize_name(w.name.split("-")[0]): w for w in sorted(folder.glob("*.whl"))}


def missing(folder: Path, roots: list[str]) -> list[str]:
    """Requirements of the closure of ``roots`` that no wheel in ``folder`` provides."""
    wheels = wheelhouse(folder)
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [Requirement(root) for root in roots]
    lacking: dict[str, str] = {}
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        wheel = wheels.get(name)
        if wheel is None:
            requirement.marker = None
            lacking.setdefault(name, str(requirement))
            continue
        for line in wheel_requirements(wheel):
            needed = Requirement(line)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                queue.append(needed)
    return [lacking[name] for name in sorted(lacking)]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for line in missing(Path(argv[0]), argv[1:]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
