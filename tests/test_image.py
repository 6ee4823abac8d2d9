"""The production image, tested as it ships: built by scripts/build-image (no container engine),
unpacked with umoci, its entrypoint run under chroot as the image's user against a real Redis and
a real celery worker.

The build takes one to two minutes, about 20 s once this machine has bootstrapped the same Debian
root before (``BUILD_CACHE``). Set CELERY_EXPORTER_IMAGE_LAYOUT to an OCI layout that
scripts/build-image wrote from this same checkout to test that one instead: the release
workflow's `test` job sets it to the layout its `build` job made, the one its `image` job pushes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.ports import free_port
from tests.conftest import REPO, Metrics, Processes, client, require_tool, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
VENV = "/opt/celery-events-exporter"
UID = 10001
DATA_DIR = "/var/lib/celery-events-exporter"
"""The image's one volume: the SQLite task history's directory."""
WORKER = "image@test"
MAX_COMPRESSED_BYTES = 100 * 1000 * 1000
BUILD_CACHE = "/var/cache/celery-events-exporter/build-image"
"""scripts/build-image's BUILD_IMAGE_CACHE unless the environment sets one: the debootstrap root,
kept between runs on this machine under a name that hashes its inputs (the script says which).
Everything after debootstrap is built anew on each run; the digest is the same either way."""
WORK_ON_TMPFS_BYTES = 2 << 30
"""Free bytes /dev/shm must have for the build's work dir to go there (the roots take ~400 MB):
dpkg's fsyncs and the removal of ~10 000 files cost nothing on a tmpfs and seconds on a disk."""


@dataclass(frozen=True)
class Image:
    layout: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    digests: dict[str, str]
    """Tag -> manifest digest, from index.json."""

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _run(args: list[str], timeout: float = 120, **kwargs: Any) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    given = os.environ.get("CELERY_EXPORTER_IMAGE_LAYOUT")
    if given:
        layout = Path(given)
    else:
        if os.geteuid() != 0:
            pytest.fail("scripts/build-image needs root (debootstrap, chroot)", pytrace=False)
        layout = tmp_path_factory.mktemp("image") / "oci"
        env = {"BUILD_IMAGE_CACHE": BUILD_CACHE, **os.environ, "PYTHON": sys.executable}
        if _tmpfs_free("/dev/shm") >= WORK_ON_TMPFS_BYTES:
            env["TMPDIR"] = "/dev/shm"
        started = time.monotonic()
        _run([str(REPO / "scripts" / "build-image"), str(layout)], timeout=840, cwd=REPO, env=env)
        print(f"scripts/build-image took {time.monotonic() - started:.0f} s")
    index = json.loads((layout / "index.json").read_text())
    digests = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    manifest_path = layout / "blobs" / "sha256" / digests["latest"].removeprefix("sha256:")
    manifest = json.loads(manifest_path.read_text())
    config_path = layout / "blobs" / "sha256" / manifest["config"]["digest"].removeprefix("sha256:")
    return Image(layout, manifest, json.loads(config_path.read_text()), digests)


def _tmpfs_free(path: str) -> int:
    """Free bytes of the tmpfs mounted at ``path``; 0 if none is."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    if not any(line.split()[1:3] == [path, "tmpfs"] for line in mounts):
        return 0
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _unpack(image: Image, into: Path) -> Path:
    umoci = require_tool("umoci", "apt-get install -y umoci")
    _run([umoci, "unpack", "--image", f"{image.layout}:{VERSION}", str(into)])
    return into


@pytest.fixture(scope="module")
def bundle(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image unpacked by umoci: ``rootfs/`` and the runtime ``config.json`` it derives."""
    return _unpack(image, tmp_path_factory.mktemp("bundle") / "bundle")


def test_tags_annotations_user_and_entrypoint(image: Image) -> None:
    skopeo = require_tool("skopeo", "apt-get install -y skopeo")
    assert set(image.digests) == {"latest", VERSION}
    assert image.digests["latest"] == image.digests[VERSION]
    inspected = json.loads(_run([skopeo, "inspect", f"oci:{image.layout}:{VERSION}"]))
    assert inspected["Digest"] == image.digests[VERSION]
    revision = _run(["git", "rev-parse", "HEAD"], cwd=REPO).strip()
    annotations = image.manifest["annotations"]
    created = datetime.fromtimestamp(int(_run(["git", "log", "-1", "--format=%ct"], cwd=REPO)), UTC)
    expected = {
        "org.opencontainers.image.version": VERSION,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": PYPROJECT["project"]["urls"]["Homepage"],
        "org.opencontainers.image.licenses": PYPROJECT["project"]["license"],
        "org.opencontainers.image.created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert {key: annotations.get(key) for key in expected} == expected
    assert inspected["Labels"] == annotations
    assert inspected["Created"] == expected["org.opencontainers.image.created"]
    runtime = image.config["config"]
    assert runtime["User"] == f"{UID}:{UID}"
    assert runtime["Entrypoint"] == [f"{VENV}/bin/celery-events-exporter"]
    assert runtime["ExposedPorts"] == {"19808/tcp": {}}
    assert runtime["Volumes"] == {DATA_DIR: {}}
    assert f"CELERY_EXPORTER_DATA_DIR={DATA_DIR}" in runtime["Env"]
    compressed = sum(layer["size"] for layer in image.manifest["layers"])
    assert compressed <= MAX_COMPRESSED_BYTES, f"{compressed / 1e6:.1f} MB compressed"


def test_the_root_holds_the_exporter_and_no_tools(bundle: Path) -> None:
    root = bundle / "rootfs"
    present = [
        path
        for path in (
            "bin/sh", "bin/bash", "bin/dash", "usr/bin/dpkg", "usr/bin/apt", "usr/bin/apt-get",
            "usr/bin/perl", "usr/bin/gcc", "usr/bin/cc", "usr/bin/pip", "usr/bin/pip3",
            f"{VENV}/bin/pip", "usr/share/python-wheels",
        )
        if (root / path).exists() or (root / path).is_symlink()
    ]  # fmt: skip
    assert present == []
    site = next((root / VENV.lstrip("/") / "lib").glob("python3.*/site-packages"))
    distributions = sorted(p.name.split("-")[0].lower() for p in site.glob("*.dist-info"))
    assert "celery_events_exporter" in distributions
    assert not {"pip", "setuptools", "pillow", "demo"} & set(distributions), distributions
    assert not (site / "demo").exists() and not (site / "pip").exists()
    assert not any(root.glob("usr/lib/python3*/site-packages/*")), "only the venv has packages"
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert f"exporter:x:{UID}:{UID}:celery-events-exporter:/nonexistent:/usr/sbin/nologin" in passwd
    # Scanners read the package records; the licences stay with the packages.
    records = {p.name for p in (root / "var/lib/dpkg/status.d").iterdir()}
    assert {"python3.11-minimal", "libc6", "ca-certificates"} <= records
    assert not {"dpkg", "bash", "dash", "apt", "coreutils"} & records
    assert (root / "usr/share/doc/libc6/copyright").is_file()
    # The volume's directory is the exporter's own (umoci keeps the layer's owners).
    data_dir = (root / DATA_DIR.lstrip("/")).stat()
    assert (data_dir.st_uid, data_dir.st_gid, data_dir.st_mode & 0o777) == (UID, UID, 0o700)


def test_the_layout_is_a_function_of_the_root_alone(image: Image, tmp_path: Path) -> None:
    """Writing the unpacked root again with the image's own settings gives the same digest:
    nothing but the files (no time, no owner name, no order of the walk) reaches the layer."""
    root = _unpack(image, tmp_path / "again") / "rootfs"
    runtime = image.config["config"]
    args = [sys.executable, str(REPO / "scripts/image/oci.py"), str(root), str(tmp_path / "oci")]
    args += ["--created", str(int(datetime.fromisoformat(image.config["created"]).timestamp()))]
    args += [f"--annotation={k}={v}" for k, v in sorted(image.manifest["annotations"].items())]
    args += [f"--entrypoint={part}" for part in runtime["Entrypoint"]]
    args += [f"--user={runtime['User']}", *(f"--env={e}" for e in runtime["Env"])]
    args += [f"--port={port.split('/')[0]}" for port in runtime["ExposedPorts"]]
    args += [f"--volume={volume}" for volume in runtime["Volumes"]]
    args += ["--tag=latest", f"--tag={VERSION}", f"--architecture={image.config['architecture']}"]
    assert _run(args).strip() == image.digests["latest"]


@pytest.fixture
def container_root(bundle: Path) -> Iterator[Path]:
    """The unpacked root with what a container runtime gives every container: /proc (the
    process metrics read it), /dev/null and /dev/urandom, and the root read-only, as the
    Kubernetes manifests run it (readOnlyRootFilesystem). The mounts are made by the process
    itself in a mount namespace of its own (see ``_chroot_command``), so they go with it even
    if the test is killed; this checks that none is left on the machine."""
    root = bundle / "rootfs"
    for device in ("null", "urandom"):
        (root / "dev" / device).touch()
    try:
        yield root
    finally:
        leftover = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(root))
        ]
        for device in ("null", "urandom"):
            (root / "dev" / device).unlink()
        assert leftover == [], f"mounts left behind: {leftover}"


def _chroot_command(root: Path, config: dict[str, Any], volume: Path, args: list[str]) -> list[str]:
    """unshare (a private mount namespace, no new pid namespace: the pid is the exporter's),
    the runtime mounts (``volume`` on the image's one volume, the task history's directory),
    then ``chroot --userspec`` into the image's user and entrypoint. The host's sh does the
    mounts; each ``exec`` keeps the pid, so SIGTERM reaches the exporter."""
    process = config["process"]
    user = f"{process['user']['uid']}:{process['user']['gid']}"
    script = (
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
        'mount -t proc proc "$0/proc" && mount --bind /dev/null "$0/dev/null" && '
        'mount --bind /dev/urandom "$0/dev/urandom" && '
        f'mount --bind "$1" "$0{DATA_DIR}" && '
        'user=$2 && shift 2 && exec chroot --userspec="$user" "$0" "$@"'
    )
    unshare = require_tool("unshare", "apt-get install -y util-linux")
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, str(root),
            str(volume), user, *process["args"], *args]  # fmt: skip


def _succeeded_and_failed(page: str) -> tuple[float | None, float | None]:
    metrics = Metrics.parse(page, "celery_task_succeeded", "celery_task_failed")
    return (
        metrics.get("celery_task_succeeded_total", task="tests.add", worker=WORKER),
        metrics.get("celery_task_failed_total", task="tests.fail", worker=WORKER),
    )


def test_the_entrypoint_counts_a_real_worker_as_its_own_user(
    bundle: Path, container_root: Path, redis_url: str, processes: Processes
) -> None:
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"] == {"uid": UID, "gid": UID}
    port = free_port()
    log_path = processes.tmp_path / "image-exporter.log"
    # The image's one volume, the task history's directory, as a runtime gives it: writable
    # by the image's user, on a root that is read-only.
    volume = processes.tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, UID, UID)
    command = _chroot_command(
        container_root, config, volume, ["--broker-url", redis_url, "--web.listen-address",
                                         f"127.0.0.1:{port}"],
    )  # fmt: skip
    with log_path.open("wb") as log:
        # Only the image's environment (as a runtime sets it), none of the test's.
        environment = dict(item.split("=", 1) for item in config["process"]["env"])
        assert environment["CELERY_EXPORTER_DATA_DIR"] == DATA_DIR
        # A process group of its own, as Processes.spawn makes: the fixture's killpg stops it
        # when the test fails before its SIGTERM.
        proc = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    processes.started.append(proc)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log_path.read_text()}"
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200

    wait_until(ready, timeout=30, what="the image's exporter ready")
    status = Path(f"/proc/{proc.pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.M), status
    assert re.search(rf"^Gid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.M), status
    assert Path(f"/proc/{proc.pid}/root").resolve() == container_root.resolve()
    # What the exporter sees as / is read-only (the last mount on / is the one in effect).
    root_mounts = [
        line.split() for line in Path(f"/proc/{proc.pid}/mounts").read_text().splitlines()
    ]
    options = [fields[3] for fields in root_mounts if fields[1] == "/"][-1]
    assert options.split(",")[0] == "ro", root_mounts

    processes.worker(redis_url, WORKER)
    with client(redis_url) as app:
        for i in range(7):
            app.send_task("tests.add", (i, i))
        for i in range(3):
            app.send_task("tests.fail", (f"boom {i}",))

    def counted() -> bool:
        return _succeeded_and_failed(requests.get(f"{url}/metrics", timeout=5).text) == (7, 3)

    wait_until(counted, timeout=60, what="7 successes and 3 failures counted")
    page = requests.get(f"{url}/metrics", timeout=5).text
    time.sleep(1)  # nothing more arrives: the counts are exact, not lower bounds
    assert _succeeded_and_failed(requests.get(f"{url}/metrics", timeout=5).text) == (7, 3)
    resident = Metrics.parse(page, "process_resident_memory_bytes").get(
        "process_resident_memory_bytes"
    )
    assert resident is not None and resident > 10e6, "process metrics read the mounted /proc"

    # From the signal to the process's exit (wait() notices it within 50 ms): the exporter's
    # shutdown and the interpreter's exit, all of it under a second.
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(10)
    stopped_in = time.monotonic() - sent
    assert returncode == 0, log_path.read_text()
    stamps = {
        match["msg"]: datetime.fromisoformat(match["ts"])
        for match in re.finditer(
            r'^ts=(?P<ts>\S+) .*?msg="(?P<msg>[^"]+)"', log_path.read_text(), re.M
        )
    }
    shutdown = (stamps["exporter stopped"] - stamps["shutting down"]).total_seconds()
    print(f"SIGTERM: exited {stopped_in:.2f} s after the signal ({shutdown:.2f} s logged shutdown)")
    assert stopped_in < 1.0, log_path.read_text()
    # The task history, on the volume: one row per task, in its final state.
    with sqlite3.connect(volume / "tasks.sqlite3") as history:
        states = history.execute(
            "SELECT name, state, count(*) FROM celery_tasks GROUP BY name, state ORDER BY name"
        ).fetchall()
    assert states == [("tests.add", "SUCCESS", 7), ("tests.fail", "FAILURE", 3)]
