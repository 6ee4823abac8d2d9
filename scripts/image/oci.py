"""Write a root file system as a one-layer OCI image layout, byte for byte the same for the same
root and arguments.

    python oci.py ROOT LAYOUT --version V --created EPOCH --annotation KEY=VALUE ...
        --entrypoint PATH --user UID:GID --env KEY=VALUE ... --port N --tag T ...

Reproducible by construction: entries sorted by path, every mtime set to EPOCH, owners 0:0 with
no user or group names, hard links recorded in path order, gzip without a name or a time, JSON
with sorted keys, no history timestamps but EPOCH. ``skopeo`` and ``umoci`` read the result
(tests/test_image.py unpacks it with umoci).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def _entries(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        base = Path(directory)
        # A symlink to a directory is listed among subdirectories: it is an entry, not a walk.
        names = sorted(files + [d for d in subdirectories if (base / d).is_symlink()])
        found += [base / d for d in subdirectories if not (base / d).is_symlink()]
        found += [base / name for name in names]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def layer_tar(root: Path, epoch: int, owned: dict[str, tuple[int, int]] | None = None) -> bytes:
    """The uncompressed layer: every entry under ``root``, normalised: owned by root, but for
    the paths ``owned`` gives an owner (uid, gid) of their own."""
    owned = owned or {}
    buffer = io.BytesIO()
    first_paths: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in _entries(root):
            name = path.relative_to(root).as_posix()
            info = path.lstat()
            entry = tarfile.TarInfo(name)
            entry.mtime = epoch
            entry.uid, entry.gid = owned.get(name, (0, 0))
            entry.uname = entry.gname = ""
            entry.mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entry.type, entry.linkname = tarfile.SYMTYPE, os.readlink(path)
                archive.addfile(entry)
            elif stat.S_ISDIR(info.st_mode):
                entry.type = tarfile.DIRTYPE
                archive.addfile(entry)
            elif stat.S_ISREG(info.st_mode):
                inode = (info.st_dev, info.st_ino)
                if info.st_nlink > 1 and inode in first_paths:
                    entry.type, entry.linkname = tarfile.LNKTYPE, first_paths[inode]
                    archive.addfile(entry)
                    continue
                first_paths[inode] = name
                entry.size = info.st_size
                with path.open("rb") as content:
                    archive.addfile(entry, content)
            else:
                raise SystemExit(f"oci: {name} is neither a file, a directory nor a symlink")
    return buffer.getvalue()


def gzipped(data: bytes) -> bytes:
    """gzip with no file name and time 0, at zlib's default level."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """An OCI image layout folder being written."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            shutil.rmtree(path)
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_bytes(_canonical_json({"imageLayoutVersion": "1.0.0"}))
        self.path = path

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def index(self, manifest: dict[str, Any], tags: list[str]) -> None:
        manifests = [
            manifest | {"annotations": {"org.opencontainers.image.ref.name": tag}} for tag in tags
        ]
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
        (self.path / "index.json").write_bytes(_canonical_json(index))


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_image(
    root: Path,
    layout_path: Path,
    *,
    epoch: int,
    annotations: dict[str, str],
    entrypoint: list[str],
    user: str,
    env: list[str],
    ports: list[int],
    tags: list[str],
    architecture: str,
    volumes: list[str] = [],  # noqa: B006  # read only
) -> str:
    """Write the layout; returns the manifest's digest. Each of ``volumes`` (an absolute
    directory of the root) is declared a volume and owned by ``user`` (numeric UID:GID), so
    that the image's user can write there whether or not a runtime mounts anything on it."""
    uid, gid = (int(part) for part in user.split(":"))
    tar = layer_tar(root, epoch, {path.lstrip("/"): (uid, gid) for path in volumes})
    layout = Layout(layout_path)
    layer = layout.blob(gzipped(tar), LAYER)
    created = rfc3339(epoch)
    config = {
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": {
            "User": user,
            "Entrypoint": entrypoint,
            "Env": env,
            "ExposedPorts": {f"{port}/tcp": {} for port in ports},
            **({"Volumes": {path: {} for path in volumes}} if volumes else {}),
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": annotations,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
        "history": [{"created": created, "created_by": "scripts/build-image"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": layout.blob(_canonical_json(config), CONFIG),
        "layers": [layer],
        "annotations": annotations,
    }
    descriptor = layout.blob(_canonical_json(manifest), MANIFEST)
    layout.index(descriptor | {"platform": {"architecture": architecture, "os": "linux"}}, tags)
    return str(descriptor["digest"])


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, separator, rest = value.partition("=")
        if not separator:
            raise SystemExit(f"oci: {value!r} is not KEY=VALUE")
        pairs[key] = rest
    return pairs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oci.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("layout", type=Path)
    parser.add_argument("--created", type=int, required=True, metavar="EPOCH")
    parser.add_argument("--annotation", action="append", default=[])
    parser.add_argument("--entrypoint", action="append", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--port", type=int, action="append", default=[])
    parser.add_argument("--tag", action="append", required=True)
    parser.add_argument("--volume", action="append", default=[], metavar="DIR")
    parser.add_argument(
        "--architecture", default=ARCHITECTURES.get(platform.machine(), platform.machine())
    )
    args = parser.parse_args(argv)
    digest = write_image(
        args.root,
        args.layout,
        epoch=args.created,
        annotations=_pairs(args.annotation),
        entrypoint=args.entrypoint,
        user=args.user,
        env=args.env,
        ports=args.port,
        tags=args.tag,
        architecture=args.architecture,
        volumes=args.volume,
    )
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
