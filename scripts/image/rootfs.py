"""The image's root file system: the files of a few Debian packages and their dependencies,
copied out of a debootstrap root, without the package manager, the shell or the docs.

    python rootfs.py BUILD_ROOT OUTPUT_ROOT

Which packages: the closure of ``ROOTS`` over Depends and Pre-Depends as the build root's dpkg
database records them, minus ``EXCLUDED`` (what a Python program never runs: dpkg, debconf, the
shells, coreutils, the openssl command). What files: those the packages' ``.list`` files name,
plus ``EXTRA_PATHS`` that maintainer scripts generate at install time (the CA bundle, the
dynamic linker's cache) and the exporter's venv. Scanners (trivy, grype) find the packages'
records in ``/var/lib/dpkg/status.d/``, as in distroless images.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path, PurePosixPath

ROOTS = ("python3", "ca-certificates", "netbase")
EXCLUDED = frozenset(
    {
        "apt",
        "bash",
        "coreutils",
        "dash",
        "debconf",
        "debconf-2.0",
        "debianutils",
        "dpkg",
        "openssl",
        "perl-base",
        "python3-pip-whl",
        "python3-setuptools-whl",
        "python3-venv",
        "python3.11-venv",
        "tzdata",
    }
)
EXTRA_PATHS = (
    "etc/ssl/certs",
    "etc/ssl/openssl.cnf",
    "usr/lib/ssl/cert.pem",
    "usr/lib/ssl/certs",
    "usr/lib/ssl/openssl.cnf",
    "etc/ld.so.cache",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d",
    "etc/os-release",
    "usr/lib/os-release",
    "etc/debian_version",
)
# Documentation goes, licences stay (each package's copyright file).
DROPPED = re.compile(
    r"^usr/share/(man|info|locale|lintian|bug|doc-base)(/|$)"
    r"|^usr/share/doc/[^/]+/(?!copyright$)"
    r"|^usr/bin/(py3clean|py3compile|pydoc3|pygettext3)"
)
TOP_LEVEL_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
EMPTY_DIRECTORIES = {
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    # The task history's data directory (a volume; owned by the exporter's user in the layer).
    "var/lib/celery-events-exporter": 0o700,
}
USER, UID = "exporter", 10001
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    f"{USER}:x:{UID}:{UID}:celery-events-exporter:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": f"root:x:0:\nnogroup:x:65534:\n{USER}:x:{UID}:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\nservices: files\n"
    "protocols: files\n",
}


def parse_status(text: str) -> dict[str, dict[str, str]]:
    """dpkg's status file: package name -> its fields (installed packages only)."""
    packages: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line
            elif ":" in line:
                last, value = line.split(":", 1)
                fields[last] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields | {"_stanza": stanza.strip("\n")}
    return packages


def _dependencies(fields: dict[str, str]) -> list[list[str]]:
    """Depends and Pre-Depends as lists of alternatives (names only)."""
    groups = []
    for key in ("Pre-Depends", "Depends"):
        for group in filter(None, (g.strip() for g in fields.get(key, "").split(","))):
            names = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            groups.append(names)
    return groups


def closure(
    packages: dict[str, dict[str, str]], roots: tuple[str, ...], excluded: frozenset[str]
) -> list[str]:
    """The installed packages ``roots`` need, following the first installed alternative of each
    dependency and stopping at ``excluded``."""
    providers: dict[str, str] = {}
    for name, fields in packages.items():
        for provided in filter(None, (p.strip() for p in fields.get("Provides", "").split(","))):
            providers.setdefault(re.split(r"[\s(]", provided, maxsplit=1)[0], name)
    wanted: set[str] = set()
    queue = list(roots)
    while queue:
        name = queue.pop()
        if name in wanted or name in excluded:
            continue
        if name not in packages:
            raise SystemExit(f"rootfs: {name} is not installed in the build root")
        wanted.add(name)
        for alternatives in _dependencies(packages[name]):
            if any(alt in excluded for alt in alternatives):
                continue
            installed = [providers.get(alt, alt) for alt in alternatives]
            chosen = next((alt for alt in installed if alt in packages), None)
            if chosen is None:
                raise SystemExit(f"rootfs: {name} needs one of {alternatives}; none is installed")
            queue.append(chosen)
    return sorted(wanted)


def _canonical(root: Path, path: str) -> str:
    """``path`` (absolute, as dpkg lists it) with its directories resolved inside ``root``:
    merged /usr turns /lib/x/libc.so.6 into usr/lib/x/libc.so.6. The last component stays as it
    is (it may be a symlink we copy as a link)."""
    relative = PurePosixPath(path).relative_to("/")
    if not relative.parts:
        return ""
    parent = (root / relative.parent).resolve()
    inside = parent.relative_to(root.resolve())
    return str(PurePosixPath(*inside.parts, relative.name))


def _tree(path: Path) -> list[Path]:
    """``path`` and, for a real directory, everything under it; symlinks are not followed."""
    if not (path.is_symlink() or path.exists()):
        return []
    found = [path]
    if path.is_dir() and not path.is_symlink():
        for directory, subdirectories, files in os.walk(path):
            found += [Path(directory, name) for name in subdirectories + files]
    return found


def _copy(source_root: Path, target_root: Path, relative: str) -> None:
    source, target = source_root / relative, target_root / relative
    # Never write through a link: an absolute one would point into the build machine.
    if not target.parent.resolve().is_relative_to(target_root.resolve()):
        raise SystemExit(f"rootfs: {relative} lies behind a symlink out of the root")
    info = source.lstat()
    target.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(info.st_mode):
        if not target.is_symlink():
            target.symlink_to(os.readlink(source))
    elif stat.S_ISDIR(info.st_mode):
        target.mkdir(exist_ok=True)
        target.chmod(stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        shutil.copyfile(source, target)
        target.chmod(stat.S_IMODE(info.st_mode))


def _package_list(build_root: Path, name: str, fields: dict[str, str]) -> Path:
    info = build_root / "var/lib/dpkg/info"
    for candidate in (f"{name}:{fields.get('Architecture', '')}.list", f"{name}.list"):
        if (info / candidate).is_file():
            return info / candidate
    raise SystemExit(f"rootfs: no file list for {name}")


def assemble(build_root: Path, output: Path) -> list[str]:
    """Fill ``output`` (which must not exist) and return the packages it holds."""
    packages = parse_status((build_root / "var/lib/dpkg/status").read_text(encoding="utf-8"))
    chosen = closure(packages, ROOTS, EXCLUDED)
    output.mkdir()
    for link, target in TOP_LEVEL_LINKS.items():
        (output / target).mkdir(parents=True, exist_ok=True)
        (output / link).symlink_to(target)
    for directory, mode in EMPTY_DIRECTORIES.items():
        (output / directory).mkdir(parents=True)
        (output / directory).chmod(mode)
    paths: set[str] = set()
    for name in chosen:
        listed = _package_list(build_root, name, packages[name]).read_text(encoding="utf-8")
        for line in listed.splitlines():
            relative = _canonical(build_root, line)
            if relative and not DROPPED.search(relative) and relative not in TOP_LEVEL_LINKS:
                paths.add(relative)
    for extra in (*EXTRA_PATHS, "opt/celery-events-exporter"):
        for path in _tree(build_root / extra):
            if "__pycache__" not in path.parts:
                paths.add(str(path.relative_to(build_root)))
    for relative in sorted(paths):
        if (build_root / relative).is_symlink() or (build_root / relative).exists():
            _copy(build_root, output, relative)
    for relative, text in ETC_FILES.items():
        (output / relative).write_text(text, encoding="utf-8")
        (output / relative).chmod(0o644)
    records = output / "var/lib/dpkg/status.d"
    records.mkdir(parents=True)
    for name in chosen:
        stanza = packages[name]["_stanza"]
        # Only what a scanner reads: no conffile hashes of files that are not there.
        kept = re.sub(r"\nConffiles:(\n .*)*", "", stanza)
        (records / name).write_text(kept + "\n", encoding="utf-8")
    return chosen


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for name in assemble(Path(argv[0]), Path(argv[1])):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
