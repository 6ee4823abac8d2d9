"""Real processes for the tests: brokers, the exporter via its console script, celery workers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import requests
import yaml
from celery import Celery
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from celery_events_exporter.broker_options import split_broker_urls
from testkit import postgres
from testkit.brokers import RabbitNode, RedisServer, VhostPool
from testkit.ports import free_port as free_port  # re-exported: tests import it from here

REPO = Path(__file__).resolve().parents[1]
VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "version"
]
PUBLISHED_IMAGE = "ghcr.io/celery-events-exporter/celery-events-exporter"
"""Where the release workflow pushes scripts/build-image's image, tagged with VERSION."""
T = TypeVar("T")

# pytest's own fixture for running pytest on a test file (tests/test_pytest_config.py).
pytest_plugins = ["pytester"]


def wait_until(
    predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (requests.RequestException, AssertionError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}: {last_error}"
    )


def require_tool(name: str, install: str = "scripts/test installs it") -> str:
    """The tool's path; a missing tool fails the test (never skips it) and says how to install.

    A unit test may not use one: the unit layer must run on a machine with nothing installed
    but the Python packages."""
    if _current_layer == "unit":
        pytest.fail(f"a unit test runs {name}: mark it @pytest.mark.integration", pytrace=False)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; {install}", pytrace=False)
    return path


def _tcp_ports(pid: int) -> set[int]:
    """The local ports of process ``pid``'s TCP sockets (its fds matched to /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def redis_subscriptions(url: str, *pids: int) -> int:
    """Channels and patterns the processes ``pids`` are subscribed to on the Redis server
    reached at ``url``, as the server counts them (CLIENT LIST's ``sub`` and ``psub`` of their
    connections). A failover list (``url;url``) counts on every server of it that answers."""
    ports = set().union(*map(_tcp_ports, pids))
    total = 0
    for each in split_broker_urls(url):
        try:
            with redis.Redis.from_url(each) as client:
                entries = client.client_list()
        except redis.ConnectionError:
            continue  # a dead URL of a failover list: the exporter is not there either
        total += sum(
            int(entry["sub"]) + int(entry["psub"])
            for entry in entries
            if int(entry["addr"].rsplit(":", 1)[1]) in ports
        )
    return total


# -- layers ------------------------------------------------------------------------------------

INTEGRATION_FIXTURES = frozenset(
    {
        "processes",
        "postgres_url",
        "private_postgres",
        "redis_url",
        "amqp_url",
        "broker_url",
        "private_redis",
        "rabbit_node",
        "promtool",
    }
)
"""Fixtures that start or reach a real broker or process: a test using one is an integration
test. Tests that run an external tool (promtool, prometheus, dclint, pip) without them say so with
``@pytest.mark.integration`` (or a module-level ``pytestmark``)."""


_current_layer = ""
"""The layer of the test running now (set by ``_layer``), for ``require_tool``'s check."""


@pytest.fixture(autouse=True)
def _exporter_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every exporter a test starts, however it starts it, keeps its task history in a
    directory of that test's own, never in the user's default data directory."""
    monkeypatch.setenv("CELERY_EXPORTER_DATA_DIR", str(tmp_path_factory.mktemp("exporter-data")))


@pytest.fixture(autouse=True)
def _layer(request: pytest.FixtureRequest) -> Iterator[None]:
    global _current_layer
    _current_layer = "unit" if request.node.get_closest_marker("unit") else "integration"
    try:
        yield
    finally:
        _current_layer = ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration``: ``pytest -m unit`` is the quick layer, pure
    logic in one process with no broker, no network and no external tool."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("integration") is None and fixtures & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)


# -- metrics ---------------------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]


@dataclass
class Metrics:
    """A parsed /metrics page: sample name -> {labels: value}."""

    samples: dict[str, dict[Labels, float]]

    @classmethod
    def parse(cls, text: str, *families: str) -> Metrics:
        """The samples of the page ``text``; of the named ``families`` only, if any are named
        (a page of thousands of workers takes seconds to parse whole)."""
        if families:
            names = tuple(families)
            text = "".join(
                line + "\n"
                for line in text.splitlines()
                if line.startswith(names)
                or (
                    line.startswith(("# HELP", "# TYPE", "# UNIT"))
                    and line.split(" ", 3)[2].startswith(names)
                )
            )
        samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
        return cls(samples)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def total(self, name: str, **match: str) -> float | None:
        """The sum of the series of ``name`` whose labels include ``match``; None if none."""
        found = self.series(name, **match)
        return sum(found.values()) if found else None

    def series(self, name: str, **match: str) -> dict[Labels, float]:
        """Series of ``name`` whose labels include ``match``."""
        wanted = set(match.items())
        return {k: v for k, v in self.samples.get(name, {}).items() if wanted <= set(k)}

    def by_label(self, name: str, label: str, **match: str) -> dict[str, float]:
        """{value of ``label``: sample value} for series of ``name`` matching ``match``."""
        return {dict(k)[label]: v for k, v in self.series(name, **match).items()}


# -- the exporter ------------------------------------------------------------------------------


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    auth: tuple[str, str] | None = None
    """Basic-auth credentials sent with every request but the probes."""
    ca_file: Path | None = None
    """Set when the exporter serves TLS: the CA that signed its certificate."""

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file is not None else "http"
        host = "localhost" if self.ca_file is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def get(self, path: str, params: dict[str, str] | None = None) -> requests.Response:
        return requests.get(
            f"{self.url}{path}",
            params=params,
            auth=self.auth,
            verify=str(self.ca_file) if self.ca_file is not None else True,
            timeout=10,
        )

    def metrics(self, *families: str) -> Metrics:
        """The exporter's page, parsed; of the named ``families`` only, if any are named."""
        response = self.get("/metrics")
        response.raise_for_status()
        return Metrics.parse(response.text, *families)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Processes:
    """Starts processes for one test and makes sure none outlives it."""

    tmp_path: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> Any:
        log_path = self.tmp_path / log_name
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches pool children too
        )
        log_file.close()
        self.started.append(proc)
        return proc, log_path

    def exporter(
        self,
        broker_url: str,
        *args: str,
        wait_connected: bool = True,
        auth: tuple[str, str] | None = None,
        ca_file: Path | None = None,
    ) -> ExporterProcess:
        port = free_port()
        command = require_tool("celery-events-exporter")
        proc, log_path = self.spawn(
            [
                command,
                "--broker-url",
                broker_url,
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--log.format",
                "json",
                "--log.level",
                "debug",
                *args,
            ],
            f"exporter-{port}.log",
            # Each exporter its own data directory (the SQLite task history); --data-dir in
            # ``args`` wins, for a test that restarts an exporter on the same history.
            {"CELERY_EXPORTER_DATA_DIR": str(self.tmp_path / f"data-{port}")},
        )
        exporter = ExporterProcess(proc, port, log_path, auth, ca_file)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"exporter exited {proc.returncode}:\n{exporter.log()}")
            return exporter.get("/healthz").status_code == 200

        wait_until(up, what="exporter /healthz")
        if wait_connected:
            # On Redis the exporter says connected once the server holds its subscription
            # (tests/test_broker_outage.py::test_connected_means_subscribed): from then on no
            # event is published to nobody.
            wait_until(
                lambda: exporter.metrics().get("celery_exporter_broker_connected") == 1.0,
                what="exporter connected to the broker",
            )
        return exporter

    def worker(
        self,
        broker_url: str,
        name: str,
        *,
        events: bool = True,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A ``celery worker`` of ``tests.celery_app``; ``env`` adds to its environment (the
        app reads TEST_BROKER_TRANSPORT_OPTIONS, TEST_PRIORITY_QUEUES, TEST_PREFETCH_MULTIPLIER,
        TEST_EVENT_EXCHANGE)."""
        celery = require_tool("celery")
        args = [
            celery,
            "-A",
            "tests.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            name,
            "--without-mingle",
            "-l",
            "info",
            *(["-E"] if events else []),
            *extra,
        ]
        proc, log_path = self.spawn(
            args, f"worker-{name}.log", {"TEST_BROKER_URL": broker_url, **(env or {})}
        )
        worker = WorkerProcess(proc, name, log_path)
        wait_until(worker.ready, timeout=30, what=f"worker {name} ready")
        return worker

    def stop_all(self) -> None:
        """SIGKILL what is still running, each process with its group (a worker's pool too).

        The test is over: nothing it asserts depends on how these end, and their brokers'
        leftovers go with the test's Redis database or virtual host. A test that checks a clean
        stop makes it itself (``ExporterProcess.stop``, ``WorkerProcess.stop``). SIGTERM here
        cost each test a celery worker's warm shutdown, about a second."""
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.started:
            proc.wait()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    name: str
    log_path: Path

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log_path.read_text()}")
        return " ready." in self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker, pool children included: no worker-offline is sent."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


@contextmanager
def client(broker_url: str, **conf: Any) -> Iterator[Celery]:
    """A client app of its own for ``broker_url``: send_task() and control broadcasts; ``conf``
    sets more of its settings (``event_exchange``...).

    Not the workers' module-level app: Celery's control broadcasts publish through the app's
    default producer pool even when given another connection.
    """
    app = Celery("tests-client", broker=broker_url, set_as_current=False)
    app.conf.task_send_sent_event = True
    app.conf.update(conf)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# -- brokers -----------------------------------------------------------------------------------


def _check_broker(url: str) -> None:
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.fail(f"broker {url} is not reachable ({exc}); .ci/run starts Redis and RabbitMQ")


REDIS_DB_LEASES = Path(tempfile.gettempdir()) / "celery-events-exporter-redis-dbs"


@contextmanager
def leased_redis_db(first: int = 1, last: int = 15, timeout: float = 120.0) -> Iterator[int]:
    """A database number of the machine's Redis that no other test run on this machine holds.

    Test runs may share the machine (CI beside a developer's run, two worktrees): each db is
    leased through an exclusive ``flock`` on a file of its own, which the kernel releases even
    when the holder is killed, so two runs never count each other's events.
    """
    REDIS_DB_LEASES.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    candidates = list(range(first, last + 1))
    while True:
        random.shuffle(candidates)
        for db in candidates:
            handle = (REDIS_DB_LEASES / f"db-{db}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield db
            finally:
                handle.close()  # closing the file releases the lock
            return
        if time.monotonic() > deadline:
            pytest.fail(f"every Redis db {first}-{last} stayed leased for {timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def own_redis_url() -> Iterator[str]:
    """A Redis database of our own on the machine's Redis: pub/sub channels carry the db number,
    so events of other users of this Redis do not reach our exporter. Emptied before and after.
    The ``redis_url`` fixture's, for a module-scoped fixture that needs one too."""
    with leased_redis_db() as db:
        url = f"redis://127.0.0.1:6379/{db}"
        _check_broker(url)
        with Connection(url) as conn:
            conn.default_channel.client.flushdb()
        try:
            yield url
        finally:
            with Connection(url) as conn:
                conn.default_channel.client.flushdb()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of this test's own (``own_redis_url``)."""
    with own_redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def _vhosts() -> Iterator[VhostPool]:
    pool = VhostPool("cee-test")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def amqp_url(_vhosts: VhostPool) -> Iterator[str]:
    """A RabbitMQ virtual host of our own, new and empty, deleted afterwards."""
    require_tool("rabbitmqctl")
    with _vhosts.vhost() as url:
        _check_broker(url)
        yield url


@pytest.fixture(params=["redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


class PrivateRedis(RedisServer):
    """A redis-server of our own on a free port, which a test may stop, start again or freeze."""

    def start(self, timeout: float = 10.0) -> None:
        require_tool("redis-server")
        super().start(timeout)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of our own on the machine's PostgreSQL, dropped afterwards."""
    with postgres.database() as url:
        yield url


@pytest.fixture
def private_postgres() -> Iterator[postgres.PrivatePostgres]:
    """A PostgreSQL cluster of our own (not started), that a test may stop and start."""
    cluster = postgres.PrivatePostgres()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


@contextmanager
def private_rabbit_node(plugins: tuple[str, ...] = ()) -> Iterator[RabbitNode]:
    """A RabbitMQ node of our own on free ports (``testkit.brokers.RabbitNode``), which a test
    may freeze; stopped and removed afterwards. Its start takes several seconds: share one (a
    module- or session-scoped fixture)."""
    require_tool("rabbitmq-server")
    require_tool("rabbitmqctl")
    node = RabbitNode(plugins=plugins)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """One private RabbitMQ node (no plugins) for every test that freezes RabbitMQ: its start
    takes several seconds. Each test takes a virtual host of its own (``RabbitNode.vhost``) and
    thaws the node before it ends."""
    with private_rabbit_node() as node:
        yield node


# -- a real Prometheus -------------------------------------------------------------------------

PROMETHEUS_JOB = "celery-events-exporter"
PROMETHEUS_RULES = REPO / "prometheus" / "rules"


@dataclass
class Prometheus:
    """A running Prometheus, queried through its HTTP API."""

    base: str

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.base}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10
        )
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str, at: float, label: str | None = None) -> dict[str, float]:
        """{value of ``label`` (or "" for a single series): sample value}."""
        return {
            (sample["metric"].get(label, "") if label else ""): float(sample["value"][1])
            for sample in self.query(expr, at)
        }

    def range_samples(self, expr: str, at: float) -> list[list[tuple[float, float]]]:
        """The stored samples of a range-vector selector, per series: [(time, value), ...]."""
        return [
            [(float(when), float(value)) for when, value in series["values"]]
            for series in self.query(expr, at)
        ]


PrometheusFor = Callable[[list[ExporterProcess]], "Prometheus"]


@pytest.fixture
def prometheus_for(processes: Processes, tmp_path: Path) -> Iterator[PrometheusFor]:
    """Start a real Prometheus that scrapes the given exporters in one job (as one would scrape
    an HA pair) with the repository's rules loaded; returns once it has scraped them all."""

    def start(exporters: list[ExporterProcess]) -> Prometheus:
        binary = require_tool("prometheus", "apt-get install prometheus")
        config = {
            # Scrapes 4 times a second keep increase()'s extrapolation small over a
            # window of seconds.
            "global": {"scrape_interval": "250ms", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in sorted(PROMETHEUS_RULES.glob("*.rules.yml"))],
            "scrape_configs": [
                {
                    "job_name": PROMETHEUS_JOB,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{exporter.port}" for exporter in exporters]}
                    ],
                }
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        processes.spawn(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            "prometheus.log",
        )
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        # Ready answers at once, the first scrape comes seconds later: wait for up == 1 on all.
        wait_until(
            lambda: (
                prometheus.values(f'up{{job="{PROMETHEUS_JOB}"}}', time.time(), "instance")
                == {f"127.0.0.1:{exporter.port}": 1.0 for exporter in exporters}
            ),
            timeout=60,
            interval=0.5,
            what="Prometheus scraping both exporters",
        )
        return prometheus

    yield start
