"""docker-compose.yml, offline: two real validators, then the cross-references between the
compose file, the Prometheus config and the Grafana provisioning that no validator sees."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import PUBLISHED_IMAGE, VERSION, require_tool

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DATASOURCES = REPO / "grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = REPO / "grafana/provisioning/dashboards/celery.yml"
# The stack runs its own config (basic auth, the compose address); prometheus/prometheus.yml is
# the no-Docker one.
PROMETHEUS_CONFIG = REPO / "prometheus/compose/prometheus.yml"
EXPORTER_TARGETS = REPO / "prometheus/compose/targets/exporter.yml"
DASHBOARDS = (
    "celery-workers.json",
    "celery-tasks.json",
    "celery-queues.json",
    "celery-task.json",
    "celery-worker.json",
)
INFINITY_PLUGIN = "yesoreyeram-infinity-datasource"
# ${NAME}, ${NAME:?msg}, ${NAME:-default}...; "$$" is compose's escaped dollar.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>\w+)(?P<modifier>[^}]*)\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)


def _load(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = _load(COMPOSE)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _compose_env() -> dict[str, str]:
    """The caller's environment minus anything the compose file interpolates."""
    used = {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    return {key: value for key, value in os.environ.items() if key not in used}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _option(command: list[str], name: str) -> str:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in an argv."""
    for position, part in enumerate(command):
        if part == name:
            return command[position + 1]
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    raise AssertionError(f"{name} not found in {command}")


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) for every bind mount of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((REPO / volume["source"], PurePosixPath(volume["target"])))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((REPO / source, PurePosixPath(target)))
    return mounts


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path a container reads comes from in this repo (the deepest bind mount)."""
    # A container resolves `..` in the config's relative paths the way normpath does here (the
    # mounts hold no symlinks).
    wanted = PurePosixPath(posixpath.normpath(container_path))
    candidates = [(h, t) for h, t in _bind_mounts(service) if wanted.is_relative_to(t)]
    assert candidates, f"{container_path} is not bind-mounted from the repo"
    host, target = max(candidates, key=lambda mount: len(mount[1].parts))
    return host / wanted.relative_to(target)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def _exporter_port(services: dict[str, dict[str, Any]]) -> int:
    listen = _option(_command(services["exporter"]), "--web.listen-address")
    return int(listen.rsplit(":", 1)[1])


def _datasource(uid: str) -> dict[str, Any]:
    for source in _load(DATASOURCES)["datasources"]:
        if source["uid"] == uid:
            found: dict[str, Any] = source
            return found
    raise AssertionError(f"no datasource with uid {uid!r} in {DATASOURCES.relative_to(REPO)}")


@pytest.mark.integration
def test_dclint_validates_against_the_compose_spec() -> None:
    dclint = require_tool("dclint", "npm install -g dclint@3")
    done = subprocess.run(
        [dclint, "--max-warnings", "0", "-c", ".dclintrc", "-f", "json", COMPOSE.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    problems = [message for result in report for message in result["messages"]]
    assert problems == [], json.dumps(problems, indent=2)
    assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_docker_compose_1_29_accepts_the_file_with_the_example_env() -> None:
    docker_compose = require_tool("docker-compose", "apt-get install -y docker-compose")
    done = subprocess.run(
        [docker_compose, "--env-file", ENV_EXAMPLE.name, "-f", COMPOSE.name, "config", "-q"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _example_env() -> dict[str, str]:
    defined: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            defined[key.strip()] = value.strip()
    return defined


@pytest.mark.parametrize(
    "missing", ["GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD", "EXPORTER_PASSWORD"]
)
@pytest.mark.integration
def test_the_stack_refuses_to_start_without_each_credential(tmp_path: Path, missing: str) -> None:
    docker_compose = require_tool("docker-compose", "apt-get install -y docker-compose")
    partial = tmp_path / "partial.env"
    partial.write_text(
        "".join(f"{key}={value}\n" for key, value in _example_env().items() if key != missing)
    )
    done = subprocess.run(
        [docker_compose, "--env-file", str(partial), "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"set {missing} in .env" in done.stderr, done.stderr


def test_every_bind_mounted_host_path_exists(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, host) for name, s in services.items() for host, _ in _bind_mounts(s)]
    assert mounts, "no bind mounts found: the parser is broken"
    missing = [f"{name}: {host.relative_to(REPO)}" for name, host in mounts if not host.exists()]
    assert missing == []


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source!r}"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert not check.get("disable", False), f"service {name} disables its healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name


def test_dependencies_wait_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule == {"condition": "service_healthy"}, (name, dependency, rule)
    assert set(services["exporter"]["depends_on"]) == {"redis", "postgres"}
    assert "postgres" in services["grafana"]["depends_on"]
    assert "exporter" in services["prometheus"]["depends_on"]
    assert "prometheus" in services["grafana"]["depends_on"]


def test_workers_run_the_demo_app_with_distinct_node_names(
    services: dict[str, dict[str, Any]],
) -> None:
    workers = {name: s for name, s in services.items() if "worker" in _command(s)}
    assert len(workers) >= 2
    nodes = set()
    for name, service in workers.items():
        command = _command(service)
        assert command[:4] == ["celery", "-A", "demo.app", "worker"], name
        assert "-E" in command, name
        node = _option(command, "-n")
        # %h is the container hostname, so each worker must set its own.
        nodes.add(node.replace("%h", service.get("hostname", "")))
        pinged = " ".join(service["healthcheck"]["test"][1:])
        assert f"-d {node.replace('%h', '$$HOSTNAME')}" in pinged, name
    assert len(nodes) == len(workers), nodes


def test_every_client_uses_the_redis_service_as_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    urls = {_option(_command(services["exporter"]), "--broker-url")}
    for service in services.values():
        if service.get("build") == ".":  # the demo image's workers and load generator
            urls.add(_environment(service)["CELERY_BROKER_URL"])
    assert len(urls) == 1, urls
    broker = urlsplit(urls.pop())
    assert broker.scheme == "redis"
    assert broker.hostname in services
    assert services[str(broker.hostname)]["image"].startswith("redis:")
    assert broker.port == 6379


def test_exporter_port_matches_targets_healthcheck_and_infinity(
    services: dict[str, dict[str, Any]],
) -> None:
    port = _exporter_port(services)
    targets = [t for group in _load(EXPORTER_TARGETS) for t in group["targets"]]
    assert targets == [f"exporter:{port}"]
    healthcheck = " ".join(services["exporter"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    infinity = _datasource("infinity")
    assert infinity["type"] == INFINITY_PLUGIN
    # The Tasks table's query is a path; the data source's URL, from Grafana's environment, is
    # the only host Infinity may reach (and send the exporter's credentials to).
    reference = "$__env{CELERY_EXPORTER_URL}"
    assert (infinity["url"], infinity["jsonData"]["allowedHosts"]) == (reference, [reference])
    grafana_env = _environment(services["grafana"])
    assert grafana_env["CELERY_EXPORTER_URL"] == f"http://exporter:{port}"


def test_prometheus_reads_config_rules_and_targets_from_the_repo(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v2.")
    config_in_container = _option(_command(prometheus), "--config.file")
    assert _host_path(prometheus, config_in_container) == PROMETHEUS_CONFIG
    config = _load(PROMETHEUS_CONFIG)
    # Prometheus resolves relative paths against the config file's directory.
    base = PurePosixPath(config_in_container).parent
    patterns = list(config.get("rule_files", []))
    for job in config["scrape_configs"]:
        for discovery in job.get("file_sd_configs", []):
            patterns += discovery["files"]
    assert patterns
    for pattern in patterns:
        in_container = base / pattern
        host_dir = _host_path(prometheus, str(in_container.parent))
        assert sorted(host_dir.glob(in_container.name)), f"{pattern} matches no file"
    rule_dirs = {(base / pattern).parent for pattern in config["rule_files"]}
    assert len(rule_dirs) == 1, rule_dirs
    rules = _host_path(prometheus, str(rule_dirs.pop()))
    assert rules.resolve() == REPO / "prometheus" / "rules"
    for expected in ("celery-recording.rules.yml", "celery-alerts.rules.yml"):
        assert (rules / expected).is_file(), expected
    sd_files = [
        _host_path(prometheus, str(base / f))
        for job in config["scrape_configs"]
        for d in job.get("file_sd_configs", [])
        for f in d["files"]
    ]
    assert any(EXPORTER_TARGETS in p.parent.glob(p.name) for p in sd_files)


def test_grafana_prometheus_datasource_points_at_the_prometheus_service(
    services: dict[str, dict[str, Any]],
) -> None:
    source = _datasource("prometheus")
    assert source["type"] == "prometheus"
    assert source.get("isDefault") is True
    url = urlsplit(source["url"])
    assert url.scheme == "http"
    assert url.hostname in services
    prometheus = services[str(url.hostname)]
    assert prometheus["image"].startswith("prom/prometheus:")
    command = _command(prometheus)
    listen = next((p for p in command if p.startswith("--web.listen-address")), "=:9090")
    assert url.port == int(listen.rsplit(":", 1)[1])
    config = _load(PROMETHEUS_CONFIG)
    exporter_jobs = [
        job for job in config["scrape_configs"] if job.get("file_sd_configs") is not None
    ]
    intervals = {
        job.get("scrape_interval", config["global"]["scrape_interval"]) for job in exporter_jobs
    }
    assert intervals == {source["jsonData"]["timeInterval"]}


def test_dashboard_provider_loads_the_mounted_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    providers = _load(DASHBOARD_PROVIDERS)["providers"]
    assert [p["type"] for p in providers] == ["file"]
    host = _host_path(grafana, providers[0]["options"]["path"])
    assert host == REPO / "grafana/dashboards"
    for dashboard in DASHBOARDS:
        assert (host / dashboard).is_file(), f"grafana/dashboards/{dashboard} is missing"
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning / "datasources" / DATASOURCES.name == DATASOURCES
    assert provisioning / "dashboards" / DASHBOARD_PROVIDERS.name == DASHBOARD_PROVIDERS
    home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home) == host / "celery-workers.json"


def test_grafana_installs_the_plugin_its_datasource_needs(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    repository, tag = grafana["image"].split(":")
    major, minor = (int(part) for part in tag.split(".")[:2])
    assert repository == "grafana/grafana"
    # GF_PLUGINS_PREINSTALL_SYNC exists from Grafana 11.5 on.
    assert (11, 5) <= (major, minor) < (13, 0)
    preinstalled = _environment(grafana)["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    assert _datasource("infinity")["type"] in [p.split("@")[0] for p in preinstalled]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]


def test_env_example_defines_every_interpolated_variable() -> None:
    uses = list(INTERPOLATION.finditer(COMPOSE.read_text()))
    assert uses, "the compose file should take Grafana's credentials from .env"
    defined = _example_env()
    for use in uses:
        assert defined.get(use["name"]), f"{use['name']} is not set in .env.example"
        # ":?" makes compose stop with a message instead of inventing a value.
        assert use["modifier"].startswith(":?"), f"{use['name']} must be ${{VAR:?message}}"


def test_no_hard_coded_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in _environment(service).items():
            if SECRET_KEY.search(key):
                # From .env, under its own name or another secret's (libpq's PGPASSWORD is
                # the database's POSTGRES_PASSWORD).
                reference = re.fullmatch(r"\$\{(\w+):\?[^}]+\}", value)
                assert reference and SECRET_KEY.search(reference[1]), (
                    f"{name}: {key} must come from .env as ${{{key}:?message}}"
                )
    credentials_in_url = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    for path in (COMPOSE, DATASOURCES, DASHBOARD_PROVIDERS):
        text = path.read_text()
        assert not credentials_in_url.search(text), f"credentials in a URL in {path.name}"
    grafana_env = _environment(services["grafana"])
    for source in _load(DATASOURCES)["datasources"]:
        assert "basicAuthPassword" not in source, source["uid"]
        # Secrets only as references to Grafana's environment, which takes them from .env.
        for key, value in source.get("secureJsonData", {}).items():
            reference = re.fullmatch(r"\$__env\{(\w+)\}", str(value))
            assert reference, f"{source['uid']}: {key} must be $__env{{VARIABLE}}"
            assert reference[1] in grafana_env, f"grafana has no {reference[1]} in its environment"


@pytest.mark.integration
def test_local_env_file_stays_out_of_git_and_the_image() -> None:
    git = require_tool("git", "apt-get install -y git")
    ignored = subprocess.run([git, "check-ignore", "-q", ".env"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, ".env must be listed in .gitignore"
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in dockerignore


def test_the_demo_image_carries_the_demo_and_the_exporter_runs_the_published_one(
    services: dict[str, dict[str, Any]],
) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert 'pip install ".[demo]"' in dockerfile
    assert re.search(r"^COPY demo ", dockerfile, re.MULTILINE)
    built = [name for name, s in services.items() if s.get("build") == "."]
    assert set(built) == {"loadgen", "worker-1", "worker-2"}
    assert len({services[name]["image"] for name in built}) == 1
    # The production image (scripts/build-image, no demo in it) of this very version.
    assert "build" not in services["exporter"]
    assert services["exporter"]["image"] == f"{PUBLISHED_IMAGE}:{VERSION}"
    pyproject = (REPO / "pyproject.toml").read_text()
    # tomllib is 3.11+ and the project still supports 3.10: a narrow regex will do.
    demo_extra = re.search(r"^demo\s*=\s*\[(?P<requirements>[^\]]*)\]", pyproject, re.MULTILINE)
    assert demo_extra and re.search(r"[\"']pillow", demo_extra["requirements"], re.IGNORECASE), (
        "pyproject.toml needs a 'demo' extra with Pillow (the image installs .[demo])"
    )


def _entrypoint_script(service: dict[str, Any]) -> list[str]:
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] in (["sh", "-c"], ["/bin/sh", "-c"]), entrypoint
    return shlex.split(entrypoint[2].replace("$$", "$"))


def test_exporter_credentials_are_wired_from_one_password(
    services: dict[str, dict[str, Any]],
) -> None:
    """The exporter hashes EXPORTER_PASSWORD into its web config; Prometheus and Grafana send
    the same user and password. A mismatch would only show as 401s in a running stack."""
    exporter = services["exporter"]
    # The image has no shell: the helper writes the config, then execs the command without
    # the password's variable (tests/test_auth.py runs that for real).
    script = exporter["entrypoint"]
    assert script[:4] == ["python", "-m", "celery_events_exporter.web.webconfig", "write"]
    assert script[-1] == "--exec"
    assert _command(exporter)[0] == "celery-events-exporter"
    web_config = _option(script, "--output")
    assert _option(_command(exporter), "--web.config.file") == web_config
    username = _option(script, "--username")
    variable = _option(script, "--password-env")
    assert variable in _environment(exporter)

    job = _load(PROMETHEUS_CONFIG)["scrape_configs"][0]
    assert job["basic_auth"]["username"] == username
    prometheus = services["prometheus"]
    prometheus_script = " ".join(_entrypoint_script(prometheus))
    # shlex has dropped the quotes around "$EXPORTER_PASSWORD".
    written = f"printf %s ${variable} > {job['basic_auth']['password_file']} && exec env -u"
    assert written in prometheus_script, prometheus_script
    assert variable in _environment(prometheus)

    infinity = _datasource("infinity")
    assert (infinity["basicAuth"], infinity["basicAuthUser"]) == (True, username)
    assert infinity["jsonData"]["auth_method"] == "basicAuth"
    assert infinity["secureJsonData"] == {"basicAuthPassword": f"$__env{{{variable}}}"}


def _history_url(services: dict[str, dict[str, Any]]) -> Any:
    return urlsplit(_option(_command(services["exporter"]), "--tasks.store"))


def test_the_history_lives_in_the_postgres_service_and_grafana_reads_it(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    environment = _environment(postgres)
    history = _history_url(services)
    # The exporter writes as the database's owner, its password from libpq's environment.
    assert (history.scheme, history.hostname, history.port) == ("postgresql", "postgres", 5432)
    assert history.password is None
    assert history.username == environment["POSTGRES_USER"]
    assert history.path == f"/{environment['POSTGRES_DB']}"
    assert _environment(services["exporter"])["PGPASSWORD"] == environment["POSTGRES_PASSWORD"]
    # Grafana reads as grafana_reader, created by the init script with Grafana's password.
    source = _datasource("celery-history")
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["url"] == f"{history.hostname}:{history.port}"
    assert source["jsonData"]["database"] == environment["POSTGRES_DB"]
    assert source["user"] == "grafana_reader"
    variable = re.fullmatch(r"\$__env\{(\w+)\}", source["secureJsonData"]["password"])
    assert variable
    assert variable[1] in environment and variable[1] in _environment(services["grafana"])
    init = _host_path(postgres, "/docker-entrypoint-initdb.d")
    script = (init / "grafana-reader.sh").read_text()
    assert "CREATE ROLE grafana_reader" in script and f"${variable[1]}" in script
    assert f"ON DATABASE {environment['POSTGRES_DB']} TO grafana_reader" in script
    assert postgres["healthcheck"]["test"][1] == "pg_isready"


@pytest.mark.integration
def test_the_init_script_makes_a_reader_that_can_only_select(
    private_postgres: Any, services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    import os

    import psycopg

    from celery_events_exporter.history.sql import POSTGRESQL

    environment = _environment(services["postgres"])
    owner, database = environment["POSTGRES_USER"], environment["POSTGRES_DB"]
    with private_postgres.running() as cluster:
        with psycopg.connect(cluster.server_url, autocommit=True) as conn:
            # The image's POSTGRES_USER is the cluster's superuser.
            conn.execute(f'CREATE ROLE "{owner}" LOGIN SUPERUSER')
            conn.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
        script = _host_path(services["postgres"], "/docker-entrypoint-initdb.d")
        # The image runs the script with psql on its local socket as POSTGRES_USER.
        env = {
            **os.environ,
            "PATH": f"/usr/lib/postgresql/15/bin:{os.environ['PATH']}",
            "POSTGRES_USER": owner,
            "POSTGRES_DB": database,
            "GRAFANA_DB_PASSWORD": "it's-a-secret",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
        }
        done = subprocess.run(
            ["sh", str(script / "grafana-reader.sh")], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        base = cluster.server_url.rsplit("/", 1)[0].replace("postgres@", f"{owner}@")
        with psycopg.connect(f"{base}/{database}", autocommit=True) as conn:
            for statement in POSTGRESQL.schema():
                conn.execute(statement.encode())
            conn.execute("INSERT INTO celery_tasks (uuid, events) VALUES ('u1', '[]')")
        reader = base.replace(f"{owner}@", "grafana_reader@")
        with psycopg.connect(f"{reader}/{database}", autocommit=True) as conn:
            assert conn.execute("SELECT uuid FROM celery_tasks").fetchall() == [("u1",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM celery_tasks")
