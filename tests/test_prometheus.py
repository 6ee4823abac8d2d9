"""The Prometheus side: config, generated rules, promtool unit tests, runbook links, metric names.

promtool and prometheus are real binaries (Debian's `prometheus` package); a missing one fails the
tests with an install hint instead of skipping them, since CI installs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import requests
import yaml

from celery_events_exporter.exposition import catalogue as metrics
from testkit.ports import free_port
from tests.conftest import require_tool
from tests.replicas import undeduplicated

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
# The compose stack's config: the same job and rules, with basic auth and the compose address.
COMPOSE_CONFIG = PROM_DIR / "compose" / "prometheus.yml"
RULES_DIR = PROM_DIR / "rules"
RECORDING = RULES_DIR / "celery-recording.rules.yml"
ALERTS = RULES_DIR / "celery-alerts.rules.yml"
TESTS_DIR = PROM_DIR / "tests"
GENERATOR = PROM_DIR / "generate_rules.py"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = (
    "https://github.com/celery-events-exporter/celery-events-exporter/blob/main/docs/runbook.md"
)
JOB = "celery-events-exporter"
# The alerts file's groups, one per concern, and their alerts.
EXPECTED_GROUPS = {
    "celery-workers.alerts": {
        "CeleryWorkerOffline",
        "CeleryWorkerTasksUncounted",
        "CeleryNoWorkerOnline",
        "CeleryTasksOrphaned",
    },
    "celery-tasks.alerts": {"CeleryTaskFailureRatioHigh", "CeleryTaskQueueWaitHigh"},
    "celery-queues.alerts": {
        "CeleryQueueBacklogHigh",
        "CeleryQueueNoConsumer",
        "CeleryQueueOldestTaskOld",
    },
    "celery-exporter.alerts": {
        "CeleryExporterDown",
        "CeleryBrokerDisconnected",
        "CeleryEventsRejected",
        "CeleryExporterFallingBehind",
        "CeleryExporterDroppingEvents",
        "CeleryExporterLabelOverflow",
        "CeleryWorkersSilent",
        "CeleryExporterConnectionLost",
        "CeleryTaskHistoryDropping",
    },
}
EXPECTED_ALERTS = set().union(*EXPECTED_GROUPS.values())
INSTALL_HINT = "install Debian's `prometheus` package: apt-get install prometheus"


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", INSTALL_HINT)


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return _rules(ALERTS)


def _unit_test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.test.yml"))


# --- promtool ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, COMPOSE_CONFIG], ids=["plain", "compose"])
def test_promtool_check_config(promtool: str, config: Path) -> None:
    result = _run(promtool, "check", "config", config)
    _assert_ok(result)
    rule_files = sorted(RULES_DIR.glob("*.rules.yml"))
    assert rule_files == sorted([RECORDING, ALERTS])
    # The glob in rule_files must pick up both generated files, relative to the config file.
    assert f"SUCCESS: {len(rule_files)} rule files found" in result.stdout


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RECORDING, ALERTS)
    _assert_ok(result)
    for path in (RECORDING, ALERTS):
        assert f"SUCCESS: {len(_rules(path))} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    files = _unit_test_files()
    assert len(files) >= 4, f"expected the promtool unit tests under {TESTS_DIR}, found {files}"
    result = _run(promtool, "test", "rules", *files)
    _assert_ok(result)
    assert result.stdout.count("SUCCESS") == len(files)


def _alert_rule_tests() -> list[dict[str, Any]]:
    return [
        case
        for path in _unit_test_files()
        for test in _load(path)["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = _alert_rule_tests()
    for name in EXPECTED_ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        firing = [case for case in mine if case.get("exp_alerts")]
        silent = [case for case in mine if not case.get("exp_alerts")]
        assert firing, f"no promtool case expects {name} to fire"
        assert silent, f"no promtool case expects {name} to stay silent"
        for case in firing:
            for alert in case["exp_alerts"]:
                assert "severity" in alert["exp_labels"], (name, alert)
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_every_recording_rule_has_an_expression_test() -> None:
    tested = " ".join(
        case["expr"]
        for path in _unit_test_files()
        for test in _load(path)["tests"]
        for case in test.get("promql_expr_test", [])
    )
    untested = [
        rule["record"]
        for rule in _rules(RECORDING)
        if not re.search(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])", tested)
    ]
    assert untested == []


# --- the generator -------------------------------------------------------------------------------


def _generate(output_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, GENERATOR, "--output-dir", output_dir, *options)


def test_committed_rules_match_the_generator(tmp_path: Path) -> None:
    _assert_ok(_generate(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([RECORDING.name, ALERTS.name])
    for committed in (RECORDING, ALERTS):
        fresh = (tmp_path / committed.name).read_text(encoding="utf-8")
        assert committed.read_text(encoding="utf-8") == fresh, (
            f"{committed.relative_to(ROOT)} is stale: run `python prometheus/generate_rules.py`"
        )


def test_generator_options_reach_the_rules(tmp_path: Path, promtool: str) -> None:
    _assert_ok(
        _generate(
            tmp_path,
            "--rate-window=10m",
            "--failure-ratio-threshold=0.25",
            "--failure-min-tasks=40",
            "--worker-offline-for=7m",
            "--job=celery-prod",
        )
    )
    alerts = {rule["alert"]: rule for rule in _rules(tmp_path / ALERTS.name)}
    failure = alerts["CeleryTaskFailureRatioHigh"]
    assert failure["expr"] == (
        "task:celery_task_failure_ratio:rate10m > 0.25\n"
        "and on (task)\n"
        "task:celery_task_completed:rate10m * 600 >= 40"
    )
    assert "threshold 25%" in failure["annotations"]["description"]
    assert alerts["CeleryWorkerOffline"]["for"] == "7m"
    assert 'up{job="celery-prod"}' in alerts["CeleryExporterDown"]["expr"]
    records = {rule["record"] for rule in _rules(tmp_path / RECORDING.name)}
    assert "task:celery_task_failure_ratio:rate10m" in records
    assert "task:celery_task_failure_ratio:rate5m" not in records
    _assert_ok(_run(promtool, "check", "rules", *sorted(tmp_path.iterdir())))


def test_check_passes_on_the_committed_rules_and_catches_drift(tmp_path: Path) -> None:
    fresh = _run(sys.executable, GENERATOR, "--check")
    assert (fresh.returncode, fresh.stderr) == (0, "")
    _assert_ok(_generate(tmp_path))
    stale = tmp_path / ALERTS.name
    stale.write_text(stale.read_text().replace("for: 5m", "for: 6m", 1))
    before = stale.read_text()
    drift = _run(sys.executable, GENERATOR, "--check", "--output-dir", tmp_path)
    assert drift.returncode == 1
    assert drift.stderr == f"stale: {stale} (run python prometheus/generate_rules.py)\n"
    assert stale.read_text() == before, "--check must write nothing"
    # Other options than the files were made with are drift too.
    other = _run(sys.executable, GENERATOR, "--check", "--failure-ratio-threshold=0.2")
    assert other.returncode == 1
    assert other.stderr.splitlines() == [
        f"stale: {path} (run python prometheus/generate_rules.py)" for path in (RECORDING, ALERTS)
    ]


def test_rule_groups_are_the_concerns() -> None:
    alert_groups = {
        group["name"]: {rule["alert"] for rule in group["rules"]}
        for group in _load(ALERTS)["groups"]
    }
    assert alert_groups == EXPECTED_GROUPS
    record_groups = {
        group["name"]: {rule["record"].split(":", 1)[0] for rule in group["rules"]}
        for group in _load(RECORDING)["groups"]
    }
    # Per-worker records in the workers' group, per-task ones in the tasks'.
    assert record_groups == {"celery-workers.rules": {"worker"}, "celery-tasks.rules": {"task"}}


def _reads(path: Path) -> list[tuple[str, promql_parser.VectorSelector]]:
    """(rule name, selector) for every series selection of every rule in ``path``."""
    return [
        (rule.get("alert") or rule["record"], selector)
        for rule in _rules(path)
        for selector in _selectors(_parse(rule["expr"]))
    ]


def _matchers(selector: promql_parser.VectorSelector) -> list[tuple[str, object, str]]:
    return [
        (matcher.name, matcher.op, matcher.value)
        for matcher in selector.matchers.matchers
        if matcher.name != "__name__"
    ]


def test_the_selector_reaches_every_series_the_rules_read(tmp_path: Path, promtool: str) -> None:
    _assert_ok(_generate(tmp_path, '--selector=cluster="eu", namespace=~"celery-.*"'))
    exporter_series = metrics.sample_names() | {"up"}
    reads = [(rule, s) for path in sorted(tmp_path.iterdir()) for rule, s in _reads(path)]
    checked = {s.name for _, s in reads if s.name in exporter_series}
    assert {"up", "celery_worker_online", "celery_task_failed_total"} <= checked
    for rule, selector in reads:
        matchers = _matchers(selector)
        has_selector = {m[0]: m[2] for m in matchers}.items() >= {
            "cluster": "eu",
            "namespace": "celery-.*",
        }.items()
        # Recorded series carry no such label: their rules read the selected series and sum.
        assert has_selector == (selector.name in exporter_series), (rule, selector.name, matchers)
    ups = {str(selector) for _, selector in reads if selector.name == "up"}
    # --job names up's job, which nothing else would.
    assert all('job="celery-events-exporter"' in up for up in ups), ups
    _assert_ok(_run(promtool, "check", "rules", *sorted(tmp_path.iterdir())))


def test_a_selector_on_job_replaces_the_job_option(tmp_path: Path) -> None:
    _assert_ok(_generate(tmp_path, '--selector=job="celery-prod"'))
    for rule, selector in _reads(tmp_path / ALERTS.name) + _reads(tmp_path / RECORDING.name):
        if selector.name in metrics.sample_names() | {"up"}:
            assert [m for m in _matchers(selector) if m[0] == "job"] == [
                ("job", promql_parser.MatchOp.Equal, "celery-prod")
            ], (rule, str(selector))


def test_the_selector_keeps_another_deployments_series_out(tmp_path: Path, promtool: str) -> None:
    """Two Celery deployments in one Prometheus, told apart by a cluster label: with the
    selector, a worker lost in one pages for that one only; without, for both."""
    unit = {
        "rule_files": [str(tmp_path / RECORDING.name), str(tmp_path / ALERTS.name)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": f'{name}{{job="{JOB}", cluster="{cluster}"{extra}}}', "values": v}
                    for cluster, worker_values in (("eu", "1x40"), ("us", "1x4 0x36"))
                    for name, extra, v in (
                        ("up", "", "1x40"),
                        ("celery_exporter_broker_connected", "", "1x40"),
                        ("celery_worker_online", ', worker="celery@w1"', worker_values),
                    )
                ],
                "alert_rule_test": [
                    {"alertname": "CeleryWorkerOffline", "eval_time": "5m", "exp_alerts": []}
                ],
            }
        ],
    }
    unit_file = tmp_path / "clusters.test.yml"
    unit_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    _assert_ok(_generate(tmp_path, '--selector=cluster="eu"'))
    _assert_ok(_run(promtool, "test", "rules", unit_file))
    for selector in ("", '--selector=cluster="us"'):
        _assert_ok(_generate(tmp_path, *([selector] if selector else [])))
        result = _run(promtool, "test", "rules", unit_file)
        assert result.returncode == 1, result.stdout
        assert 'alertname="CeleryWorkerOffline", cluster="us"' in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--rate-window=5 minutes", "not a Prometheus duration"),
        ("--failure-ratio-threshold=1.5", "fraction below 1"),
        ("--queue-wait-threshold=-1", "must not be negative"),
        ("--selector=job=celery", "not a label selector"),
    ],
)
def test_generator_rejects_bad_options(tmp_path: Path, option: str, message: str) -> None:
    result = _generate(tmp_path, option)
    assert result.returncode == 2
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- alerts and the runbook ----------------------------------------------------------------------


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {_github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.MULTILINE)}


def test_alerts_are_the_expected_set() -> None:
    names = [rule["alert"] for rule in _alerts()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


@pytest.mark.parametrize("alert", _alerts(), ids=lambda rule: str(rule["alert"]))
def test_alert_has_annotations_and_a_runbook_section(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
    assert all(value.strip() for value in alert["annotations"].values())
    assert alert["labels"]["severity"] in {"warning", "critical"}
    anchor = name.lower()
    assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_URL}#{anchor}"
    assert anchor in _runbook_anchors(), f"docs/runbook.md has no section '## {name}'"


def test_runbook_lists_the_groups_as_the_rules_have_them() -> None:
    rows = re.findall(
        r"^\| `(celery-\w+\.alerts)` \| (.+) \|$", RUNBOOK.read_text(encoding="utf-8"), re.M
    )
    assert {group: set(alerts.split(", ")) for group, alerts in rows} == EXPECTED_GROUPS


def test_runbook_has_no_section_without_an_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = re.findall(r"^## (\S+)\s*$", text, re.MULTILINE)
    assert sorted(sections) == sorted(EXPECTED_ALERTS)


# --- metric names --------------------------------------------------------------------------------


def _selected_names(node: object) -> Iterator[str]:
    """Every metric name a PromQL expression selects; a selector without a name is an error."""
    if isinstance(node, promql_parser.VectorSelector):
        names = [m.value for m in node.matchers.matchers if m.name == "__name__"]
        name = node.name or (names[0] if names else None)
        assert name, f"selector without a metric name: {node}"
        yield name
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _selected_names(node.vector_selector)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _selected_names(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _selected_names(node.expr)
        if node.param is not None:
            yield from _selected_names(node.param)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selected_names(node.lhs)
        yield from _selected_names(node.rhs)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield from _selected_names(node.expr)
    else:
        assert isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral), node


def _selectors(node: object) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for child in ("vector_selector", "expr", "lhs", "rhs", "param"):
        value = getattr(node, child, None)
        if value is not None:
            yield from _selectors(value)
    for arg in getattr(node, "args", None) or ():
        yield from _selectors(arg)


def _parse(expr: str) -> promql_parser.Expr:
    try:
        return promql_parser.parse(expr)
    except Exception as error:  # the parser raises a bare Exception subclass per failure
        pytest.fail(f"cannot parse PromQL {expr!r}: {error}")


def test_rules_select_only_catalogue_metrics_and_recorded_series() -> None:
    recorded = {rule["record"] for rule in _rules(RECORDING)}
    allowed = metrics.sample_names() | recorded | {"up"}
    selected: set[str] = set()
    for path in (RECORDING, ALERTS):
        for rule in _rules(path):
            names = set(_selected_names(_parse(rule["expr"])))
            assert names, f"{rule} selects no series"
            unknown = names - allowed
            assert not unknown, f"{rule.get('alert') or rule.get('record')} selects {unknown}"
            selected |= names
    # The walk must reach selectors inside functions, aggregations, offsets and set operators.
    assert {
        "up",
        *metrics.WORKER_ONLINE.sample_names,
        *metrics.EXPORTER_EVENTS_REJECTED.sample_names,
        *metrics.TASK_QUEUE_WAIT.sample_names[:1],
    } <= selected


def test_every_rule_counts_exporter_replicas_once() -> None:
    # Fleet series are folded with max without (instance, pod) before any sum; the exporter's own
    # series (celery_exporter_*, up) stay per instance.
    for path in (RECORDING, ALERTS):
        for rule in _rules(path):
            name = rule.get("alert") or rule.get("record")
            assert undeduplicated(rule["expr"]) == [], f"{name} counts replicas twice"


def test_unit_test_series_are_catalogue_metrics() -> None:
    """Test inputs with a misspelt name would prove nothing about the real series."""
    allowed = metrics.sample_names() | {"up"}
    for path in _unit_test_files():
        for test in _load(path)["tests"]:
            for series in test["input_series"]:
                name = series["series"].split("{", 1)[0].strip()
                assert name in allowed, f"{path.name}: {name} is not a metric the exporter exports"


def test_job_matchers_name_the_scrape_job() -> None:
    for path in (CONFIG, COMPOSE_CONFIG):
        jobs = [job["job_name"] for job in _load(path)["scrape_configs"]]
        assert jobs == [JOB], path
    matched = {
        matcher.value
        for rule in _alerts()
        for selector in _selectors(_parse(rule["expr"]))
        for matcher in selector.matchers.matchers
        if matcher.name == "job"
    }
    assert matched == {JOB}


@pytest.mark.parametrize(
    ("config", "target"),
    [(CONFIG, "localhost:19808"), (COMPOSE_CONFIG, "exporter:19808")],
    ids=["plain", "compose"],
)
def test_exporter_target_comes_from_file_sd(config: Path, target: str) -> None:
    (job,) = _load(config)["scrape_configs"]
    assert "static_configs" not in job
    assert job["file_sd_configs"] == [{"files": ["targets/*.yml"]}]
    groups = _load(config.parent / "targets" / "exporter.yml")
    assert groups == [{"targets": [target]}]


def test_only_the_compose_config_asks_for_basic_auth() -> None:
    """The plain config must work against an exporter started as the README's quick start
    starts it (no web config); the compose one scrapes the stack's exporter, which has one."""
    (plain,) = _load(CONFIG)["scrape_configs"]
    (compose,) = _load(COMPOSE_CONFIG)["scrape_configs"]
    assert "basic_auth" not in plain
    assert compose["basic_auth"] == {
        "username": "monitoring",
        "password_file": "/prometheus/exporter-password",
    }
    # Apart from auth and the target file's folder, the two configs are the same.
    assert {k: v for k, v in compose.items() if k != "basic_auth"} == plain
    plain_config, compose_config = _load(CONFIG), _load(COMPOSE_CONFIG)
    assert plain_config["global"] == compose_config["global"]
    assert compose_config["rule_files"] == [f"../{f}" for f in plain_config["rule_files"]]


# --- a real Prometheus loads the config ----------------------------------------------------------


def _poll(url: str, ready: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            data = requests.get(url, timeout=5).json()["data"]
        except (requests.RequestException, ValueError) as error:
            last = error
        else:
            if ready(data):
                return data
            last = data
        time.sleep(0.5)
    pytest.fail(f"{url} never became ready; last answer: {last}")


@pytest.mark.integration
def test_prometheus_discovers_the_exporter_and_loads_every_rule(tmp_path: Path) -> None:
    binary = require_tool("prometheus", INSTALL_HINT)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={CONFIG}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        targets = _poll(f"{base}/targets", lambda data: data["activeTargets"])
        assert [(t["labels"]["job"], t["scrapeUrl"]) for t in targets["activeTargets"]] == [
            (JOB, "http://localhost:19808/metrics")
        ]
        rules = _poll(f"{base}/rules", lambda data: data["groups"])
        loaded = {rule["name"] for group in rules["groups"] for rule in group["rules"]}
        expected = {rule["record"] for rule in _rules(RECORDING)} | EXPECTED_ALERTS
        assert loaded == expected
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
