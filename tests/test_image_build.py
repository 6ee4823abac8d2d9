"""The pure parts of scripts/build-image: the package closure of the image's root, the
requirements the image's own Python still needs, and the layer's bytes as a function of the
files alone. tests/test_image.py builds and runs the real image."""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "image" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rootfs = _load("rootfs")
oci = _load("oci")
missing_requirements = _load("missing_requirements")

STATUS = """Package: python3
Status: install ok installed
Pre-Depends: python3-minimal (= 3.11.2-1+b1)
Depends: python3.11 (>= 3.11.2-1~), libpython3-stdlib (= 3.11.2-1+b1)
Description: interactive high-level object-oriented language
 (default python3 version)

Package: python3-minimal
Status: install ok installed
Pre-Depends: python3.11-minimal (>= 3.11.2-1~)
Depends: dpkg (>= 1.13.20)

Package: python3.11
Status: install ok installed
Depends: python3.11-minimal, media-types | mime-support, awk

Package: python3.11-minimal
Status: install ok installed
Depends: libc6:any (>= 2.35)

Package: libpython3-stdlib
Status: install ok installed

Package: mime-support
Status: install ok installed

Package: mawk
Status: install ok installed
Provides: awk

Package: libc6
Status: install ok installed

Package: dpkg
Status: install ok installed
Depends: tar

Package: tar
Status: install ok installed

Package: media-types
Status: deinstall ok config-files
"""


def test_the_closure_follows_installed_alternatives_and_providers_and_stops_at_exclusions() -> None:
    packages = rootfs.parse_status(STATUS)
    assert "media-types" not in packages  # only config files left: not installed
    assert packages["python3"]["Description"].endswith("(default python3 version)")
    chosen = rootfs.closure(packages, ("python3",), frozenset({"dpkg"}))
    # media-types is not installed, so its alternative mime-support; awk is mawk's; dpkg (and
    # what only it needs, tar) stays out.
    assert chosen == [
        "libc6", "libpython3-stdlib", "mawk", "mime-support", "python3", "python3-minimal",
        "python3.11", "python3.11-minimal",
    ]  # fmt: skip


def test_a_dependency_nothing_installed_satisfies_is_an_error() -> None:
    packages = rootfs.parse_status("Package: a\nStatus: install ok installed\nDepends: b | c\n")
    with pytest.raises(SystemExit, match=r"a needs one of \['b', 'c'\]"):
        rootfs.closure(packages, ("a",), frozenset())


def _tree(root: Path, mtime: int) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "bin" / "python3.11").write_bytes(b"\x7fELF")
    (root / "usr" / "bin" / "python3.11").chmod(0o755)
    os.link(root / "usr" / "bin" / "python3.11", root / "usr" / "bin" / "python3")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    for path in [root / "usr", root / "usr" / "bin", *root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def test_the_layer_holds_the_files_only_not_their_times_or_the_walk(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    _tree(first, 1_000_000)
    _tree(second, 2_000_000)
    layer = oci.layer_tar(first, 1_700_000_000)
    assert layer == oci.layer_tar(second, 1_700_000_000)
    assert oci.gzipped(layer) == oci.gzipped(oci.layer_tar(second, 1_700_000_000))
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == [
        "bin", "tmp", "usr", "usr/bin", "usr/bin/python3", "usr/bin/python3.11",
    ]  # fmt: skip
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (1_700_000_000, 0, 0, "", "")
    }
    by_name = {m.name: m for m in members}
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"
    assert by_name["tmp"].mode == 0o1777
    # The second name of a hard link is a link to the first, in path order.
    assert by_name["usr/bin/python3"].isfile() and by_name["usr/bin/python3"].mode == 0o755
    assert by_name["usr/bin/python3.11"].islnk()
    assert by_name["usr/bin/python3.11"].linkname == "usr/bin/python3"


def _wheel(folder: Path, name: str, *requires: str) -> None:
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}-1.0.dist-info/METADATA", metadata)


def test_missing_requirements_are_those_the_running_python_needs(tmp_path: Path) -> None:
    _wheel(tmp_path, "app", "kombu[redis]>=5", 'old-only; python_version < "3"', "click")
    _wheel(tmp_path, "kombu", "amqp", 'redis>=6; extra == "redis"', 'zstd; extra == "zstd"')
    _wheel(tmp_path, "amqp")
    _wheel(tmp_path, "click")
    assert missing_requirements.missing(tmp_path, ["app"]) == ["redis>=6"]
    _wheel(tmp_path, "redis", 'async-timeout>=4; python_version >= "3"')
    assert missing_requirements.missing(tmp_path, ["app"]) == ["async-timeout>=4"]
    _wheel(tmp_path, "async_timeout")
    assert missing_requirements.missing(tmp_path, ["app"]) == []
