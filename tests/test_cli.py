"""The command line and the HTTP endpoints, through the installed console script."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess

import click
import pytest
import requests

from exporter.cli import command
from testkit.ports import free_port
from tests.conftest import Metrics, Processes, require_tool, wait_until

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("celery-events-exporter"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen-address", "nowhere"], {}, "expected HOST:PORT or :PORT, got 'nowhere'"),
        (["--listen-address", ":http"], {}, "port must be a number"),
        ([], {"CELERY_EXPORTER_LISTEN_ADDRESS": ":99999"}, "port must be within 0-65535"),
        (["--broker-url", "carrier-pigeon://coop"], {}, "No such transport: carrier-pigeon"),
        (["--runtime-buckets", "1,0.5"], {}, "bucket bounds must be strictly increasing"),
        (["--runtime-buckets", "fast"], {}, "buckets must be comma-separated numbers"),
        (["--queue-wait-buckets", "0,1"], {}, "bucket bounds must be positive and finite"),
        (["--broker-transport-option", "no-equals-sign"], {}, "expected KEY=VALUE"),
        (["--worker-timeout", "-1"], {}, "-1"),
        (["--log-format", "xml"], {}, "'xml' is not one of 'auto', 'json', 'console'"),
        (["--no-such-flag"], {}, "No such option '--no-such-flag'"),
        (["--event-exchange", " "], {}, "must not be empty"),
        ([], {"CELERY_EXPORTER_EVENT_QUEUE_TTL": "-1"}, "-1"),
    ],
)
def test_bad_flags_get_one_clear_error(args: list[str], env: dict[str, str], message: str) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert message in error_lines[0]


def test_a_taken_listen_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--listen-address", f"127.0.0.1:{port}", "--log-format", "json")
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_every_flag_has_an_environment_twin_named_in_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # undo click's line wrapping
    options = [
        param
        for param in command.params
        if isinstance(param, click.Option) and param.name not in ("help", "version")
    ]
    assert len(options) >= 14
    for option in options:
        flag = max(option.opts, key=len)
        twin = "CELERY_EXPORTER_" + flag.removeprefix("--").upper().replace("-", "_")
        assert option.envvar == twin, flag
        assert f"env var: {twin}" in help_text, flag
        assert option.help, flag


def test_environment_twins_configure_it(redis_url: str, processes: Processes) -> None:
    port = free_port()
    _proc, log_path = processes.spawn(
        [require_tool("celery-events-exporter")],
        "env-exporter.log",
        env={
            "CELERY_EXPORTER_BROKER_URL": redis_url,
            "CELERY_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "CELERY_EXPORTER_RUNTIME_BUCKETS": "1,2",
            "CELERY_EXPORTER_LOG_FORMAT": "json",
        },
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
    log = log_path.read_text()
    assert '"event": "exporter started"' in log
    assert f"127.0.0.1:{port}" in log


def test_http_endpoints(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url)
    url = exporter.url

    text = requests.get(f"{url}/metrics", timeout=5)
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert Metrics.parse(text.text).get("celery_exporter_broker_connected") == 1.0

    openmetrics = requests.get(
        f"{url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")

    raw = requests.get(
        f"{url}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    assert b"celery_exporter_build_info" in gzip.decompress(raw.raw.read())

    assert requests.get(f"{url}/healthz", timeout=5).text == "ok\n"
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    assert 'href="metrics"' in requests.get(f"{url}/", timeout=5).text
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_promtool_accepts_the_metrics_page(redis_url: str, processes: Processes) -> None:
    """`promtool check metrics` lints names, units and help against Prometheus' conventions."""
    exporter = processes.exporter(redis_url)
    page = requests.get(f"{exporter.url}/metrics", timeout=5).text
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"], input=page, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
