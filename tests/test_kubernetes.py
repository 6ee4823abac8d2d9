"""deploy/kubernetes/: rendered with the real `kubectl kustomize`, validated offline, and run.

Every rendered object is validated against the Kubernetes API schemas (kubernetes-validate,
strict: unknown fields are errors) and the prometheus-operator objects against the CRDs'
OpenAPI schemas compiled by npm's @kubernetes-models/prometheus-operator, plus a TypeScript
excess-property check with the same package's types (a CRD schema lets unknown fields through,
and the API server would silently drop a misspelt one). tests/kubernetes/ holds that package's
manifest; scripts/test installs it.

The rendered Deployment is then run for real: its command and environment, its Secrets' files,
in a network namespace of the test's own so that the exporter listens on the manifest's port,
and its probes and the ServiceMonitor's scrape (with the overlay's credentials) must answer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import kubernetes_validate
import pytest
import yaml

from tests.conftest import PUBLISHED_IMAGE, REPO, VERSION, Metrics, require_tool, wait_until
from tests.netns import Namespace, open_namespace

# Every test here runs tools: kubectl, node, tsc, a real exporter in a network namespace.
pytestmark = pytest.mark.integration

KUBERNETES = REPO / "deploy" / "kubernetes"
GENERATOR = KUBERNETES / "generate.py"
GENERATED = KUBERNETES / "base" / "generated"
NODE_DIR = REPO / "tests" / "kubernetes"
MODELS = NODE_DIR / "node_modules" / "@kubernetes-models" / "prometheus-operator"
NODE_HINT = "scripts/test installs it: npm install --prefix tests/kubernetes --no-package-lock"
# The oldest and the newest Kubernetes minor versions the schemas cover.
KUBERNETES_VERSIONS = ("1.29", "1.37")
NAME = "celery-events-exporter"
OVERLAYS = {
    "base": KUBERNETES / "base",
    "ha": KUBERNETES / "overlays" / "ha",
    "basic-auth": KUBERNETES / "overlays" / "basic-auth",
    "history-postgresql": KUBERNETES / "overlays" / "history-postgresql",
}
CRD_GROUP = "monitoring.coreos.com/v1"
CRD_TYPES = {
    "ServiceMonitor": ("ServiceMonitor", "IServiceMonitor"),
    "PrometheusRule": ("PrometheusRule", "IPrometheusRule"),
}
KINDS = {
    "base": {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
             "PersistentVolumeClaim"},
    "ha": {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
           "PodDisruptionBudget", "PersistentVolumeClaim"},
    "basic-auth": {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
                   "Secret", "PersistentVolumeClaim"},
    "history-postgresql": {"Deployment", "Service", "ServiceMonitor", "PrometheusRule",
                           "ConfigMap", "PersistentVolumeClaim"},
}  # fmt: skip


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "scripts/provision installs it (kubectl 1.33, from npm)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        _rendered[overlay] = render(OVERLAYS[overlay])
    return _rendered[overlay]


def one(objects: list[dict[str, Any]], kind: str, name: str = NAME) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return dict(found)


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- generated files -------------------------------------------------------------------------


def _generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_generated_files_are_fresh_and_the_check_catches_drift(tmp_path: Path) -> None:
    check = _generate("--check")
    assert (check.returncode, check.stderr) == (0, "")
    assert _generate("--output-dir", tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in GENERATED.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_text() == (GENERATED / path.name).read_text()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(stale.read_text().replace("for: 5m", "for: 6m", 1))
    drift = _generate("--check", "--output-dir", tmp_path)
    assert drift.returncode == 1
    assert drift.stderr == (f"{stale} is stale: run `python deploy/kubernetes/generate.py`\n")


def _documented_kustomizations() -> list[str]:
    """The directory of every `kubectl apply -k DIR` the READMEs give (placeholders aside)."""
    found = []
    for readme in (REPO / "README.md", KUBERNETES / "README.md"):
        text = readme.read_text(encoding="utf-8")
        found += [d for d in re.findall(r"kubectl apply -k ([\w./-]+)", text) if d != "DIR"]
    return found


def test_the_readmes_apply_commands_render() -> None:
    directories = _documented_kustomizations()
    # The first screen of the Kubernetes section: the base and the HA overlay.
    assert {"deploy/kubernetes/base", "deploy/kubernetes/overlays/ha"} <= set(directories)
    for directory in directories:
        objects = render(REPO / directory)
        assert one(objects, "Deployment")["spec"]["template"]["spec"]["containers"], directory
        assert {o["kind"] for o in objects} >= KINDS["base"], directory


def test_the_prometheus_rule_is_the_rule_files() -> None:
    rule = one(rendered("base"), "PrometheusRule")
    groups = [
        group
        for path in sorted((REPO / "prometheus" / "rules").glob("*.rules.yml"))
        for group in _yaml(path)["groups"]
    ]
    assert groups, "no rule groups under prometheus/rules"
    assert rule["spec"]["groups"] == groups


def test_the_dashboards_are_config_maps_for_grafanas_sidecar() -> None:
    maps = {o["metadata"]["name"]: o for o in rendered("base") if o["kind"] == "ConfigMap"}
    dashboards = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    assert sorted(maps) == [f"{NAME}-dashboard-{path.stem}" for path in dashboards]
    for path in dashboards:
        config_map = maps[f"{NAME}-dashboard-{path.stem}"]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        # Byte for byte the committed dashboard, and within a ConfigMap's 1 MiB.
        assert config_map["data"] == {path.name: path.read_text(encoding="utf-8")}
        assert len(path.read_bytes()) < 1024 * 1024
        assert json.loads(config_map["data"][path.name])["uid"]


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = rendered(overlay)
    assert {o["kind"] for o in objects} == KINDS[overlay]
    core = [o for o in objects if o["apiVersion"] != CRD_GROUP]
    assert core
    for version in KUBERNETES_VERSIONS:
        for obj in core:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {error}")


def _node() -> str:
    node = require_tool("node", NODE_HINT)
    if not MODELS.is_dir():
        pytest.fail(f"{MODELS} is missing; {NODE_HINT}", pytrace=False)
    return node


def _validate_crds(objects: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    listing = tmp_path / "objects.json"
    listing.write_text(json.dumps(objects))
    result = subprocess.run(
        [_node(), str(NODE_DIR / "validate-crds.mjs"), str(listing)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer: list[dict[str, Any]] = json.loads(result.stdout)
    return answer


def _excess_properties(objects: list[dict[str, Any]], tmp_path: Path) -> str:
    """tsc's complaints about the objects as literals of the CRDs' TypeScript types."""
    _node()
    lines = []
    for module, interface in CRD_TYPES.values():
        lines.append(
            f'import type {{ {interface} }} from "{MODELS}/monitoring.coreos.com/v1/{module}";'
        )
    for number, obj in enumerate(objects):
        interface = CRD_TYPES[obj["kind"]][1]
        lines.append(f"export const object{number}: {interface} = {json.dumps(obj)};")
    source = tmp_path / "objects.ts"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [str(NODE_DIR / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
         "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext",
         "--skipLibCheck", str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result.stdout + result.stderr


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_prometheus_operator_objects_are_valid_against_the_crd_schemas(
    overlay: str, tmp_path: Path
) -> None:
    objects = [o for o in rendered(overlay) if o["apiVersion"] == CRD_GROUP]
    assert sorted(o["kind"] for o in objects) == ["PrometheusRule", "ServiceMonitor"]
    results = _validate_crds(objects, tmp_path)
    assert results == [
        {"kind": o["kind"], "name": o["metadata"]["name"], "error": None} for o in objects
    ]
    assert _excess_properties(objects, tmp_path) == ""


def test_the_crd_checks_catch_a_wrong_type_and_an_unknown_field(tmp_path: Path) -> None:
    monitor = one(rendered("base"), "ServiceMonitor")
    wrong_type = json.loads(json.dumps(monitor))
    wrong_type["spec"]["endpoints"][0]["interval"] = 15
    (result,) = _validate_crds([wrong_type], tmp_path)
    assert result["error"] == (
        "data/spec/endpoints/0/interval must be string, data/spec/endpoints/0/interval must be "
        "string"
    )
    misspelt = json.loads(json.dumps(monitor))
    misspelt["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    assert _validate_crds([misspelt], tmp_path)[0]["error"] is None  # the schema lets it pass
    assert "'\"scrapeTimout\"' does not exist in type 'IEndpoint'" in _excess_properties(
        [misspelt], tmp_path
    )


# --- how the objects fit together -------------------------------------------------------------


def documented_variables() -> set[str]:
    """The environment variables of the README's configuration table."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- configuration:begin -->", 1)[1].split("<!-- configuration:end -->")
    return set(re.findall(r"\| `(CELERY_EXPORTER_\w+)` \|", table[0]))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_container_sets_only_settings_the_exporter_reads(overlay: str) -> None:
    """An unknown CELERY_EXPORTER_* variable is ignored without a word: it must be a real one."""
    names = {variable["name"] for variable in _container(rendered(overlay))["env"]}
    assert "CELERY_EXPORTER_BROKER_URL" in names
    assert names <= documented_variables(), names - documented_variables()


def test_the_deployment_is_locked_down_and_probed() -> None:
    objects = rendered("base")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = _container(objects)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert container["resources"]["limits"].keys() == {"memory"}
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 19808)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "\nUID_GID=10001:10001\n" in (REPO / "scripts" / "build-image").read_text()
    # The published image of this version; its PATH has the console script (test_image.py).
    assert container["image"] == f"{PUBLISHED_IMAGE}:{VERSION}"
    assert container["command"] == ["celery-events-exporter"]


def _rules_job() -> set[str]:
    jobs = set()
    for group in one(rendered("base"), "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            if 'job="' in expr:
                jobs.add(expr.split('job="', 1)[1].split('"', 1)[0])
    return jobs


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_selectors_ports_job_and_interval_fit_together(overlay: str) -> None:
    objects = rendered(overlay)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in {p["name"] for p in _container(objects)["ports"]}
    monitor = one(objects, "ServiceMonitor")
    monitor_selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor_selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == "/metrics"
    # Without jobLabel the operator names the job after the Service: the rules' job.
    assert "jobLabel" not in monitor["spec"]
    assert _rules_job() == {service["metadata"]["name"]}
    # One job whose targets differ only by instance and pod: no per-target labels added.
    assert not {"podTargetLabels", "targetLabels"} & monitor["spec"].keys()
    assert not {"relabelings", "metricRelabelings"} & endpoint.keys()
    scrape_interval = _yaml(REPO / "prometheus" / "prometheus.yml")["global"]["scrape_interval"]
    assert endpoint["interval"] == scrape_interval


def test_the_ha_overlay_is_two_replicas_of_the_same_job() -> None:
    base, ha = rendered("base"), rendered("ha")
    assert one(base, "Deployment")["spec"]["replicas"] == 1
    deployment = one(ha, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    budget = one(ha, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # Everything but the Deployment and the budget is the base's, object for object: the
    # replicas share one Service, one ServiceMonitor (one job), the same rules and dashboards.
    def rest(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [o for o in objects if o["kind"] not in {"Deployment", "PodDisruptionBudget"}]

    assert rest(ha) == rest(base)


def _replica_series(objects: list[dict[str, Any]], replicas: int) -> list[dict[str, str]]:
    """The target labels prometheus-operator gives each replica's series: one job (the
    Service's name), the same namespace, service, endpoint and container; instance and pod of
    their own."""
    service = one(objects, "Service")
    (port,) = service["spec"]["ports"]
    shared = {
        "job": service["metadata"]["name"],
        "namespace": "monitoring",
        "service": service["metadata"]["name"],
        "endpoint": port["name"],
        "container": _container(objects)["name"],
    }
    return [
        {**shared, "instance": f"10.0.0.{n}:{port['port']}", "pod": f"{NAME}-{n}"}
        for n in range(1, replicas + 1)
    ]


def _promql_labels(labels: dict[str, str]) -> str:
    return ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_ha_pair_reads_the_same_as_one_exporter(replicas: int, tmp_path: Path) -> None:
    """The rendered HA overlay's own PrometheusRule, fed the series two replicas scrape as one
    job: every per-task and per-worker rate reads what one exporter gives (one task a second),
    not twice that."""
    objects = rendered("ha")
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(
        yaml.safe_dump({"groups": one(objects, "PrometheusRule")["spec"]["groups"]})
    )
    # Every per-task and per-worker rate recorded straight from an exporter counter.
    selected = {}
    for group in one(objects, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            scope = re.fullmatch(r"(task|worker):celery_\w+:rate5m", rule.get("record", ""))
            counter = re.search(r"\brate\((celery_\w+_total)(?:\{([^}]*)\})?\[", rule["expr"])
            if scope and counter:
                matchers = dict(re.findall(r'(\w+)=~?"(\w+)"', counter.group(2) or ""))
                selected[rule["record"]] = (scope.group(1), counter.group(1), matchers)
    assert len(selected) >= 10, selected
    series = {}
    for _, metric, matchers in selected.values():
        for replica in _replica_series(objects, replicas):
            labels = _promql_labels({**replica, "task": "t", "worker": "w", **matchers})
            # One task a second, scraped once a minute.
            series[f"{metric}{{{labels}}}"] = "0+60x15"
    cases = [
        {
            "expr": record,
            "eval_time": "15m",
            "exp_samples": [
                {"labels": f'{record}{{{scope}="{scope[0]}"}}', "value": 1},
            ],
        }
        for record, (scope, _, _) in selected.items()
    ]
    series_list = [{"series": name, "values": values} for name, values in series.items()]
    unit = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series_list, "promql_expr_test": cases}],
    }
    unit_file = tmp_path / "ha.test.yml"
    unit_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "test", "rules", str(unit_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_basic_auth_example_credentials_match() -> None:
    objects = rendered("basic-auth")
    web_config = yaml.safe_load(
        one(objects, "Secret", f"{NAME}-web-config")["stringData"]["web-config.yml"]
    )
    scrape = one(objects, "Secret", f"{NAME}-scrape")["stringData"]
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["basicAuth"] == {
        "username": {"name": f"{NAME}-scrape", "key": "username"},
        "password": {"name": f"{NAME}-scrape", "key": "password"},
    }
    hashed = web_config["basic_auth_users"][scrape["username"]]
    assert bcrypt.checkpw(scrape["password"].encode(), hashed.encode())


# --- the rendered Deployment, run --------------------------------------------------------------


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    yield from open_namespace(tmp_path)


def _pod_environment(
    objects: list[dict[str, Any]], files: Path
) -> tuple[dict[str, str], dict[str, Path]]:
    """The container's environment with its Secret references resolved, and its Secret volumes
    written under ``files`` ({mount path: where its files are here})."""
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objects if o["kind"] == "Secret"}
    # The broker Secret is the user's to create (base/broker-secret.example.yaml): here it names
    # the namespace's own Redis, at the example's path.
    secrets[f"{NAME}-broker"] = {"url": "redis://localhost:6379/0"}
    container = _container(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mounts: dict[str, Path] = {}
    for volume in pod["volumes"]:
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        local = files / volume["name"]
        local.mkdir()
        if "secret" in volume:
            for key, value in secrets[volume["secret"]["secretName"]].items():
                (local / key).write_text(value)
        mounts[mount["mountPath"]] = local
    env = {}
    for variable in container["env"]:
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        else:
            value = variable["value"]
        # A path in a mounted volume points at that volume's files here.
        for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value.startswith(mount_path + "/"):
                value = str(local) + value.removeprefix(mount_path)
                break
        env[variable["name"]] = value
    return env, mounts


@pytest.mark.parametrize("overlay", ["base", "basic-auth"])
def test_the_rendered_deployment_runs_and_answers_its_probes_and_scrape(
    overlay: str, tmp_path: Path, namespace: Namespace
) -> None:
    objects = rendered(overlay)
    container = _container(objects)
    env, _ = _pod_environment(objects, tmp_path)
    namespace.redis(tmp_path)
    # The manifest's environment only: none of this shell's CELERY_EXPORTER_* settings.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_")}
    command = [require_tool(container["command"][0]), *container["command"][1:]]
    exporter = namespace.spawn(command, tmp_path, "exporter.log", env={**clean, **env})
    port = container["ports"][0]["containerPort"]
    base = f"http://localhost:{port}"

    def probe(path: str) -> int:
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited:\n{namespace.logs()}")
        return namespace.get(f"{base}{path}")[0]

    wait_until(lambda: probe(container["readinessProbe"]["httpGet"]["path"]) == 200,
               timeout=60, what="the readiness probe")  # fmt: skip
    assert probe(container["livenessProbe"]["httpGet"]["path"]) == 200
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    auth = None
    if "basicAuth" in endpoint:
        secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
        ref = endpoint["basicAuth"]
        auth = (
            secrets[ref["username"]["name"]]["stringData"][ref["username"]["key"]],
            secrets[ref["password"]["name"]]["stringData"][ref["password"]["key"]],
        )
        assert namespace.get(f"{base}{endpoint['path']}")[0] == 401
    status, page = namespace.get(f"{base}{endpoint['path']}", auth=auth)
    assert status == 200
    assert Metrics.parse(page).get("celery_exporter_broker_connected") == 1.0
    # CELERY_EXPORTER_LOG_FORMAT=json: one JSON object per line.
    first_line = (tmp_path / "exporter.log").read_text().splitlines()[0]
    assert isinstance(json.loads(first_line), dict)
