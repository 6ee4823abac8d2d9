"""The command line and the HTTP endpoints, through the installed console script."""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
import signal
import socket
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import click
import pytest
import requests

from celery_events_exporter.cli import command
from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from testkit.ports import free_port
from tests.conftest import Metrics, Processes, client, require_tool, wait_until
from tests.logfmt import parse_lines

pytestmark = pytest.mark.integration


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("celery-events-exporter"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def log_lines(text: str) -> list[dict[str, str]]:
    """Every line of an exporter's stderr as logfmt; a line in any other format fails the test."""
    return parse_lines(text)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--web.listen-address", "nowhere"], {}, "expected HOST:PORT or :PORT, got 'nowhere'"),
        (["--listen-address", ":http"], {}, "port must be a number"),
        ([], {"CELERY_EXPORTER_WEB_LISTEN_ADDRESS": ":99999"}, "port must be within 0-65535"),
        ([], {"CELERY_EXPORTER_LISTEN_ADDRESS": ":99999"}, "port must be within 0-65535"),
        (["--broker-url", "localhost:6379"], {},
         "'localhost:6379' has no scheme: write it as a URL, e.g. redis://localhost:6379"),
        (["--broker-url", "redis//host"], {},
         "'redis//host' has no ':' after its scheme: did you mean 'redis://host'?"),
        (["--broker-url", "carrier-pigeon://coop"], {},
         "unknown broker URL scheme 'carrier-pigeon'; kombu knows amqp"),
        (["--runtime-buckets", "1,0.5"], {}, "bucket bounds must be strictly increasing"),
        (["--runtime-buckets", "fast"], {}, "buckets must be comma-separated numbers"),
        (["--queue-wait-buckets", "0,1"], {}, "bucket bounds must be positive and finite"),
        (["--broker-transport-option", "no-equals-sign"], {}, "expected KEY=VALUE or KEY:=JSON"),
        (["--broker-transport-option", "max_connections=many"], {},
         "transport option max_connections: expected a whole number"),
        (["--worker-timeout", "-1"], {}, "expected a number of seconds >= 0, got '-1'"),
        (["--log.format", "xml"], {}, "expected one of logfmt, json, got 'xml'"),
        (["--log-format", "xml"], {}, "expected one of logfmt, json, got 'xml'"),
        (["--web.telemetry-path", "/healthz"], {}, "/healthz is one of the exporter's other"),
        (["--no-such-flag"], {}, "No such option '--no-such-flag'"),
        (["--event-exchange", " "], {}, "must not be empty"),
        ([], {"CELERY_EXPORTER_EVENT_QUEUE_TTL": "-1"}, "-1"),
        (["--tasks.search-scan-rows", "-1"], {},
         "expected a whole number within 0-1000000000, got '-1'"),
        ([], {"CELERY_EXPORTER_TASKS_SEARCH_SCAN_ROWS": "1e6"},
         "expected a whole number, got '1e6'"),
    ],
)  # fmt: skip
def test_bad_flags_get_one_clear_log_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    [line] = log_lines(result.stderr)  # one line, and it is logfmt
    assert (line["level"], line["msg"]) == ("error", "invalid configuration")
    assert message in line["error"]
    assert result.stdout == ""


def test_a_bad_flag_is_logged_in_the_format_asked_for() -> None:
    result = run_cli("--log.format=json", "--broker-url", "localhost:6379")
    assert result.returncode == 2
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["msg"] == "invalid configuration"
    assert "has no scheme" in line["error"]
    env_json = run_cli("--broker-url", "localhost:6379", env={"CELERY_EXPORTER_LOG_FORMAT": "json"})
    assert json.loads(env_json.stderr)["level"] == "error"


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_taken_listen_port_is_one_log_line(fmt: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--broker-url", "redis://127.0.0.1:1/0", "--web.listen-address",
            f"127.0.0.1:{port}", "--log.format", fmt,
        )  # fmt: skip
    assert result.returncode == 1
    lines = (
        [json.loads(text) for text in result.stderr.splitlines()]
        if fmt == "json"
        else log_lines(result.stderr)
    )
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["msg"] == "cannot listen"
    assert error["address"] == f"127.0.0.1:{port}"
    assert error["error"] == "Address already in use"
    assert "Traceback" not in result.stderr


def test_a_history_directory_that_cannot_be_made_is_one_clear_log_line(tmp_path: Path) -> None:
    """A read-only root without a volume, or any data directory that cannot be made: the
    exporter says it is the task history, and how to give it a place, instead of a traceback or
    a word about listening."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(
        "--broker-url", "redis://127.0.0.1:1/0", "--web.listen-address", "127.0.0.1:0",
        "--data-dir", str(blocker / "history"), "--log.format", "json",
    )  # fmt: skip
    assert result.returncode == 1
    [error] = [
        line for line in map(json.loads, result.stderr.splitlines()) if line["level"] == "error"
    ]
    assert error["msg"] == "cannot open the task history"
    assert error["error"] == (
        f"sqlite:///{blocker}/history/tasks.sqlite3: [Errno 20] Not a directory: "
        f"'{blocker}/history'"
    )
    assert "--data-dir" in error["hint"]
    assert "Traceback" not in result.stderr


def test_version_prints_the_build_details() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"celery-events-exporter, version {version('celery-events-exporter')}"
    details = dict(line.split(":", 1) for line in lines[1:])
    assert details["  python"].split()[0] == platform.python_version()
    assert details["  celery"].strip() == version("celery")
    assert details["  kombu"].strip() == version("kombu")


def test_help_names_every_flag_with_its_twin_and_never_cuts_a_number() -> None:
    result = run_cli("--help", env={"COLUMNS": "80"})
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # undo click's line wrapping
    options = [
        param
        for param in command.params
        if isinstance(param, click.Option) and param.name not in ("help", "version")
    ]
    shown = [option for option in options if not option.hidden]
    assert len(shown) >= 20
    for option in shown:
        flag = option.opts[0]
        twin = "CELERY_EXPORTER_" + flag.removeprefix("--").upper().replace("-", "_")
        twin = twin.replace(".", "_")
        assert option.envvar == twin, flag
        assert f"env var: {twin}" in help_text, flag
        assert option.help, flag
    for flag in ("--listen-address", "--web-config-file", "--log-level", "--log-format"):
        assert f"Formerly {flag}" in help_text
    # Wrapped at spaces only: each default bucket list reads whole once the lines are joined.
    for bounds in (DEFAULT_RUNTIME_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS):
        assert "default: " + ", ".join(f"{b:g}" for b in bounds) + "]" in help_text
    for line in result.stdout.splitlines():
        assert not re.search(r"(\d\.|-)$", line), line  # no number or flag cut at the end


def test_environment_twins_configure_it(redis_url: str, processes: Processes) -> None:
    port = free_port()
    proc, log_path = processes.spawn(
        [require_tool("celery-events-exporter")],
        "env-exporter.log",
        env={
            "CELERY_EXPORTER_BROKER_URL": redis_url,
            "CELERY_EXPORTER_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "CELERY_EXPORTER_WEB_TELEMETRY_PATH": "/internal/metrics",
            "CELERY_EXPORTER_RUNTIME_BUCKETS": "1,2",
            "CELERY_EXPORTER_LOG_FORMAT": "json",
        },
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
    page = Metrics.parse(requests.get(f"{url}/internal/metrics", timeout=5).text)
    assert page.get("celery_exporter_broker_connected") == 1.0
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 404
    assert 'href="internal/metrics"' in requests.get(f"{url}/", timeout=5).text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = [json.loads(text) for text in log_path.read_text().splitlines()]
    [started] = [line for line in lines if line["msg"] == "exporter started"]
    assert started["listen"] == f"127.0.0.1:{port}"
    assert started["telemetry_path"] == "/internal/metrics"
    assert lines[-1]["msg"] == "exporter stopped"
    assert not [line for line in lines if line["level"] == "warning"]


def test_deprecated_names_still_work_and_warn_once(redis_url: str, processes: Processes) -> None:
    port = free_port()
    proc, log_path = processes.spawn(
        [
            require_tool("celery-events-exporter"),
            "--broker-url", redis_url,
            "--log-format", "console",
            "--log-level", "debug",
        ],
        "deprecated-exporter.log",
        env={"CELERY_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = log_lines(log_path.read_text())  # console now means logfmt
    warnings = [(x["msg"], x["name"], x["use"]) for x in lines if x["level"] == "warning"]
    assert sorted(warnings) == [
        ("deprecated environment variable", "CELERY_EXPORTER_LISTEN_ADDRESS",
         "CELERY_EXPORTER_WEB_LISTEN_ADDRESS"),
        ("deprecated flag", "--log-format", "--log.format"),
        ("deprecated flag", "--log-level", "--log.level"),
        ("deprecated log format", "console", "logfmt"),
    ]  # fmt: skip
    assert any(line["level"] == "debug" for line in lines)  # --log-level debug applied


def test_every_line_of_a_run_is_logfmt(redis_url: str, processes: Processes) -> None:
    port = free_port()
    proc, log_path = processes.spawn(
        [
            require_tool("celery-events-exporter"),
            "--broker-url", redis_url,
            "--web.listen-address", f"127.0.0.1:{port}",
            "--log.level", "debug",
        ],
        "logfmt-exporter.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=1).status_code == 200)
    requests.get(f"{url}/metrics", timeout=5).raise_for_status()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = log_lines(log_path.read_text())
    assert [list(line)[:4] for line in lines] == [["ts", "level", "logger", "msg"]] * len(lines)
    messages = [line["msg"] for line in lines]
    for expected in ("exporter started", "broker connected", "shutting down", "exporter stopped"):
        assert expected in messages
    requests_logged = [line["request"] for line in lines if line["msg"] == "http request"]
    assert '"GET /metrics HTTP/1.1" 200 -' in requests_logged


def _stop_time(proc: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    return time.monotonic() - started


def test_sigterm_stops_it_within_a_second_or_so(redis_url: str, processes: Processes) -> None:
    """Each thread watches the stop event; a controller waiting out its 30 s broadcast interval
    used to hold every stop up for 5 s (the join deadline)."""
    exporter = processes.exporter(redis_url)
    took = _stop_time(exporter.proc)
    print(f"SIGTERM to exit, connected: {took:.2f} s")
    assert took < 3.0
    assert "exporter stopped" in exporter.log()


def test_sigterm_stops_it_while_the_broker_is_unreachable(processes: Processes) -> None:
    closed = free_port()
    exporter = processes.exporter(f"redis://:hunter2@127.0.0.1:{closed}/0", wait_connected=False)
    wait_until(lambda: "broker unreachable" in exporter.log(), what="a retry")
    took = _stop_time(exporter.proc)
    print(f"SIGTERM to exit, broker unreachable: {took:.2f} s")
    assert took < 3.0
    lines = [json.loads(text) for text in exporter.log().splitlines()]
    [retry, *_] = [line for line in lines if line["msg"] == "broker unreachable"]
    assert retry["address"] == f"127.0.0.1:{closed}"
    assert retry["broker"] == f"redis://:**@127.0.0.1:{closed}/0"
    assert "hunter2" not in exporter.log()


def test_a_numeric_looking_key_prefix_stays_text(redis_url: str, processes: Processes) -> None:
    """global_keyprefix=4711 was read as the number 4711: kombu raised a TypeError at every
    connection attempt, logged as "broker unreachable", and the exporter never got ready."""
    exporter = processes.exporter(redis_url, "--broker-transport-option", "global_keyprefix=4711")
    assert exporter.metrics().get("celery_exporter_broker_connected") == 1.0
    assert "broker unreachable" not in exporter.log()
    with client(redis_url) as app:  # an app of the same prefix publishes three events
        app.conf.broker_transport_options = {"global_keyprefix": "4711"}
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="prefixed@test", enabled=True)
            for number in range(3):
                dispatcher.send("task-received", uuid=f"task-{number}", name="prefixed.task")
            dispatcher.flush()
    wait_until(
        lambda: (
            exporter.metrics().get(
                "celery_task_received_total", task="prefixed.task", worker="prefixed@test"
            )
            == 3.0
        ),
        what="3 events under the key prefix 4711",
    )


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
