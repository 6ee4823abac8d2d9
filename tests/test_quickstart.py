"""The README's quick start without Docker, run as written, and the systemd unit it points to.

The commands come from the README's quickstart block, so the test breaks when the README drifts.
They run in a copy of the repository (the block creates `.venv` and `.prometheus-data` where it
runs). The block's servers (the lines ending in `&`) listen on fixed ports, 19808 and 9090, as a
user's would: they run in a network namespace of the test's own, with a Redis of its own on
localhost:6379, so that nothing else on this machine can clash with them or be reached by them.
The other commands (pip, promtool) run as they are, on the machine's network.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import REPO, require_tool, wait_until
from tests.netns import Namespace, open_namespace

# Every test here runs tools: pip, promtool, prometheus, systemd-analyze, servers in a netns.
pytestmark = pytest.mark.integration

README = REPO / "README.md"
UNIT = REPO / "deploy" / "systemd" / "celery-events-exporter.service"
JOB = "celery-events-exporter"
# Where the README's block expects Prometheus; the namespace makes these ports ours.
PROMETHEUS_API = "http://localhost:9090/api/v1"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".prometheus-data",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "node_modules",
)  # fmt: skip


def quickstart_commands() -> list[str]:
    """The shell commands of the README's quickstart block, comments and blank lines dropped."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- quickstart:begin -->\n```sh\n(.*?)```\n<!-- quickstart:end -->", text, re.DOTALL
    )
    assert found, "README.md has no ```sh block between the quickstart markers"
    lines = [line.strip() for line in found.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    yield from open_namespace(tmp_path)


def _query(space: Namespace, expr: str) -> list[dict[str, Any]]:
    body = space.get_json(f"{PROMETHEUS_API}/query?query={quote(expr)}")
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _rule_names() -> set[str]:
    names: set[str] = set()
    for path in sorted((REPO / "prometheus" / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {rule.get("record") or rule["alert"] for rule in group["rules"]}
    return names


def test_the_quickstart_block_runs_the_exporter_and_the_shipped_prometheus_config(
    tmp_path: Path, namespace: Namespace
) -> None:
    commands = quickstart_commands()
    servers = [line.removesuffix("&").strip() for line in commands if line.endswith("&")]
    # The block's shape is part of the promise: a pip install, the exporter, three promtool
    # checks, Prometheus. A block that lost one of them must fail here, not pass on less.
    assert [shlex.split(server)[0] for server in servers] == [
        ".venv/bin/celery-events-exporter",
        "prometheus",
    ]
    steps = [line for line in commands if not line.endswith("&")]
    assert [" ".join(shlex.split(step)[:3]) for step in steps] == [
        "python3 -m venv",
        "promtool check config",
        "promtool check rules",
        "promtool test rules",
    ]
    require_tool("prometheus", "apt-get install prometheus")
    require_tool("promtool", "apt-get install prometheus")
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=COPY_IGNORE)

    namespace.redis(tmp_path)

    def run(step: str) -> subprocess.CompletedProcess[str]:
        # The block is for a shell (globs, &&): run each line as one, without the user's venv.
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
        env["PATH"] = os.pathsep.join(
            p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
        )
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step],
            cwd=clone, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip

    install, *checks = steps
    result = run(install)
    assert result.returncode == 0, f"{install}\n{result.stdout}\n{result.stderr}"
    for step in checks:
        result = run(step)
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
        assert "SUCCESS" in result.stdout, (step, result.stdout)
        assert "FAILED" not in result.stdout + result.stderr, (step, result.stdout)

    for i, server in enumerate(servers):
        namespace.spawn(["bash", "-c", f"exec {server}"], clone, f"server-{i}.log")

    def scraped() -> list[dict[str, Any]]:
        for proc, _ in namespace.started:
            assert proc.poll() is None, f"a server exited:\n{namespace.logs()}"
        return _query(namespace, f'up{{job="{JOB}"}} == 1')

    # A fresh Prometheus takes about 5 s to its first scrape; the exporter needs its broker.
    try:
        (up,) = wait_until(
            scraped, timeout=120, interval=1, what="Prometheus scraping the exporter"
        )
        (connected,) = wait_until(
            lambda: _query(namespace, "celery_exporter_broker_connected == 1"),
            timeout=60,
            interval=1,
            what="the scraped exporter connected to Redis",
        )
    except BaseException:
        print(namespace.logs())
        raise
    assert up["metric"] == {"__name__": "up", "job": JOB, "instance": "localhost:19808"}
    assert connected["metric"]["instance"] == "localhost:19808"

    groups = namespace.get_json(f"{PROMETHEUS_API}/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == _rule_names()
    assert (clone / ".prometheus-data").is_dir()


# --- the systemd unit ----------------------------------------------------------------------------

UNIT_EXEC = "/opt/celery-events-exporter/bin/celery-events-exporter"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on a copy whose ExecStart names an executable that exists here
    (verify refuses a missing one; the README installs the exporter at UNIT_EXEC)."""
    executable = require_tool("celery-events-exporter")
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text.replace(f"ExecStart={UNIT_EXEC}", f"ExecStart={executable}"))
    return subprocess.run(
        [require_tool("systemd-analyze", "apt-get install systemd"), "verify", str(copy)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert _unit_settings()["ExecStart"] == [UNIT_EXEC]
    result = _verify(text, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # The check can fail: a misspelt key is reported (systemd would ignore it and run unhardened).
    typo = _verify(text.replace("ProtectSystem=strict", "ProtectSytem=strict"), tmp_path)
    assert "Unknown key 'ProtectSytem' in section [Service]" in typo.stderr, typo.stderr


def test_the_systemd_unit_is_hardened_as_the_readme_says() -> None:
    settings = _unit_settings()
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
    }.items():
        assert value in settings.get(key, []), f"{key}={value} missing from {UNIT.name}"
    assert settings["EnvironmentFile"] == ["-/etc/default/celery-events-exporter"]
    # Settings arrive as the flags' environment twins: the unit's own default must be one.
    assert settings["Environment"] == ["CELERY_EXPORTER_BROKER_URL=redis://localhost:6379/0"]
    readme = README.read_text(encoding="utf-8")
    assert "| `CELERY_EXPORTER_BROKER_URL` |" in readme
    commented = re.findall(r"Environment=(CELERY_EXPORTER_\w+)=", UNIT.read_text())
    for name in commented:
        assert f"| `{name}` |" in readme, f"{UNIT.name} names {name}, which the exporter ignores"

    security = subprocess.run(
        [require_tool("systemd-analyze", "apt-get install systemd"), "security",
         "--offline=yes", str(UNIT)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
    assert found, security.stdout + security.stderr
    readme = README.read_text(encoding="utf-8")
    claim = re.search(r"`systemd-analyze security` rates it (\d+\.\d+), \"(\w+)\"", readme)
    assert claim, "README.md no longer states the unit's exposure level"
    assert (found.group(1), found.group(2)) == claim.groups()
