"""The README's first command, for real: a fresh virtualenv, `pip install .`, the exporter runs.

The development environment has packages that a user's does not (pytest pulls in `packaging`,
for one); this installs the project alone to catch a dependency that is used but not declared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from testkit.ports import free_port
from tests.conftest import REPO, Metrics, Processes, wait_until


def test_a_plain_install_runs_and_connects(
    tmp_path: Path, redis_url: str, processes: Processes
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    port = free_port()
    processes.spawn(
        [str(venv / "bin" / "celery-events-exporter"), "--broker-url", redis_url,
         "--web.listen-address", f"127.0.0.1:{port}"],
        "installed-exporter.log",
    )  # fmt: skip

    def connected() -> bool:
        page = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        return Metrics.parse(page).get("celery_exporter_broker_connected") == 1.0

    wait_until(connected, timeout=30, what="the installed exporter connected to Redis")
