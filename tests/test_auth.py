"""--web.config.file: exporter-toolkit basic auth and TLS, checked by promtool and real clients."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml

from celery_events_exporter.web import webconfig
from tests.conftest import REPO, Processes, require_tool
from tests.logfmt import parse_lines

USER = "prometheus"
# Generated per run: no password is written down anywhere in the repository.
PASSWORD = os.urandom(12).hex()
# Cost 4 keeps the tests quick; the cache is what keeps real (cost 10-12) requests quick.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
PROTECTED = ("/metrics", "/api/tasks", "/api/workers", "/")


def write_config(directory: Path, data: object, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, made by the openssl CLI."""
    openssl = require_tool("openssl")
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


# -- the file format ------------------------------------------------------------------------------


@pytest.mark.integration
def test_promtool_accepts_the_files_the_exporter_accepts(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; CI installs Debian's prometheus package")
    self_signed(tmp_path)
    path = write_config(
        tmp_path,
        {
            "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
            "basic_auth_users": {USER: HASH},
        },
    )
    done = subprocess.run(
        [promtool, "check", "web-config", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout
    config = webconfig.load(path)
    assert config.tls is not None and config.tls.cert_file == tmp_path / "server.crt"
    assert config.basic_auth is not None and config.basic_auth.check(USER, PASSWORD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("basic_auth_users: [a, b]\n", "basic_auth_users must be a mapping, got list"),
        ("basic_auth_users:\n  alice: plaintext\n", "the password of 'alice' must be a bcrypt"),
        ("basic_auth_user:\n  alice: x\n", "unsupported key(s) basic_auth_user"),
        ("tls_server_config:\n  cert_file: a.crt\n", "tls_server_config: key_file is required"),
        ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n",
         "cannot load the TLS certificate"),
        ("tls_server_config:\n  cert: x\n  key: y\n", "inline cert/key are not supported"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
         "tls_server_config: min_version 'TLS14' is not one of"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
         "unsupported key(s) tls_server_config.cipher_suites"),
        ("basic_auth_users: {a: b\n", "is not valid YAML"),
        ("- just a list\n", "the file must be a mapping"),
    ],
)  # fmt: skip
def test_bad_files_get_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = write_config(tmp_path, content)
    with pytest.raises(webconfig.WebConfigError) as caught:
        webconfig.load(path)
    assert str(caught.value).startswith(f"web config file {path}"), str(caught.value)
    assert message in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(webconfig.WebConfigError, match=r"cannot read web config file .*nothing"):
        webconfig.load(tmp_path / "nothing.yml")


def test_bcrypt_runs_once_per_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = webconfig.BasicAuth({USER: HASH.encode(), "htpasswd": HASH.replace("$2b$", "$2y$")
                                .encode()})  # fmt: skip
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert [auth.check(USER, PASSWORD) for _ in range(5)] == [True] * 5
    assert [auth.check(USER, "wrong") for _ in range(3)] == [False] * 3
    assert auth.check("htpasswd", PASSWORD) is True  # Apache's $2y$ prefix
    assert len(calls) == 3
    # An unknown user costs a bcrypt check too (no user enumeration by timing), then is cached.
    assert auth.check("mallory", PASSWORD) is False
    assert auth.check("mallory", PASSWORD) is False
    assert len(calls) == 4


def test_the_helper_writes_a_config_for_a_password_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "EXPORTER_PASSWORD": PASSWORD}
    config_path, password_path = tmp_path / "auth" / "web.yml", tmp_path / "auth" / "password"
    done = subprocess.run(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "write", "--username", USER,
         "--password-env", "EXPORTER_PASSWORD", "--cost", "4", "--output", str(config_path),
         "--password-file", str(password_path)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert password_path.read_text() == PASSWORD
    assert config_path.stat().st_mode & 0o777 == 0o600
    config = webconfig.load(config_path)
    assert config.basic_auth is not None and config.basic_auth.check(USER, PASSWORD)
    checked = subprocess.run(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "check", str(config_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (checked.returncode, checked.stdout) == (
        0, f"{config_path}: OK (TLS off, 1 basic auth users)\n",
    )  # fmt: skip
    unset = subprocess.run(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "write", "--username", USER,
         "--password-env", "NO_SUCH_VARIABLE_SET", "--output", str(tmp_path / "x.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unset.returncode == 1
    assert "NO_SUCH_VARIABLE_SET is empty or unset" in unset.stderr


def test_the_helper_then_becomes_the_command_without_the_password(tmp_path: Path) -> None:
    """What the compose stack's exporter runs (its image has no shell): write, then exec."""
    config_path = tmp_path / "web.yml"
    probe = (
        "import os, sys; "
        "print(os.getpid(), sorted(k for k in os.environ if 'PASS' in k), sys.argv[1:])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "write", "--username", USER,
         "--password-env", "EXPORTER_PASSWORD", "--cost", "4", "--output", str(config_path),
         "--exec", sys.executable, "-c", probe, "--web.config.file", str(config_path)],
        env={"EXPORTER_PASSWORD": PASSWORD, "OTHER_PASSWORD_NAME": "kept"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # The same process (exec, not a child), without the password's variable, with the arguments.
    assert out == f"{proc.pid} ['OTHER_PASSWORD_NAME'] ['--web.config.file', '{config_path}']\n"
    config = webconfig.load(config_path)
    assert config.basic_auth is not None and config.basic_auth.check(USER, PASSWORD)
    nothing = subprocess.run(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "write", "--username", USER,
         "--password-env", "EXPORTER_PASSWORD", "--cost", "4", "--output", str(config_path),
         "--exec"],
        env={"EXPORTER_PASSWORD": PASSWORD}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert nothing.returncode == 2
    assert "--exec needs a command" in nothing.stderr


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time process ``pid`` has used (/proc/PID/stat's utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- a real exporter ------------------------------------------------------------------------------


def test_every_endpoint_but_the_probes_needs_credentials(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    # A production cost: one check costs the CPU time measured here; a scrape with cached
    # credentials costs far less (cost 4 would not tell the two apart).
    strong = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12))
    started = time.process_time()
    assert bcrypt.checkpw(PASSWORD.encode(), strong)
    check_cpu = time.process_time() - started
    path = write_config(tmp_path, {"basic_auth_users": {USER: strong.decode()}})
    exporter = processes.exporter(redis_url, "--web.config.file", str(path), auth=(USER, PASSWORD))
    for endpoint in PROTECTED:
        anonymous = requests.get(f"{exporter.url}{endpoint}", timeout=5)
        assert anonymous.status_code == 401, endpoint
        assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="')
        wrong = requests.get(f"{exporter.url}{endpoint}", auth=(USER, "nope"), timeout=5)
        assert wrong.status_code == 401, endpoint
        assert exporter.get(endpoint).status_code == 200, endpoint
    # One worker's page: 401 without credentials, whether or not the worker exists (an
    # anonymous caller learns nothing), 404 with them for an unknown worker.
    one_worker = f"{exporter.url}/api/workers/nobody@nowhere"
    assert requests.get(one_worker, timeout=5).status_code == 401
    assert exporter.get("/api/workers/nobody@nowhere").status_code == 404
    garbled = requests.get(
        f"{exporter.url}/metrics", headers={"Authorization": "Basic %%%"}, timeout=5
    )
    assert garbled.status_code == 401
    for probe in ("/healthz", "/readyz"):
        assert requests.get(f"{exporter.url}{probe}", timeout=5).status_code == 200
    assert exporter.metrics().get("celery_exporter_broker_connected") == 1.0
    # Once the credentials are cached, a scrape costs no bcrypt run: 20 scrapes take the
    # exporter less CPU time than 10 checks (without the cache they would take 20 and more).
    cpu_before = _cpu_seconds(exporter.proc.pid)
    for _ in range(20):
        assert exporter.get("/metrics").status_code == 200
    used = _cpu_seconds(exporter.proc.pid) - cpu_before
    assert used < 10 * check_cpu, (used, check_cpu)
    assert PASSWORD not in exporter.log()


def test_tls_with_basic_auth(redis_url: str, processes: Processes, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    # Relative paths are relative to the config file, not to the exporter's working directory.
    path = write_config(
        tmp_path,
        {
            "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
            "basic_auth_users": {USER: HASH},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        },
    )
    assert Path.cwd() != tmp_path and tmp_path != REPO
    exporter = processes.exporter(
        redis_url, "--web.config.file", str(path), auth=(USER, PASSWORD), ca_file=cert
    )
    assert exporter.url.startswith("https://")
    response = exporter.get("/metrics")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(f"{exporter.url}/metrics", verify=str(cert), timeout=5).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{exporter.url}/healthz", timeout=5)  # not signed by a trusted CA
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{exporter.port}/healthz", timeout=5)
    # A client that never finishes its handshake does not block the others.
    with socket.create_connection(("127.0.0.1", exporter.port)):
        assert exporter.get("/healthz").status_code == 200


@pytest.mark.integration
def test_a_bad_web_config_stops_the_exporter_with_one_line(tmp_path: Path) -> None:
    command = require_tool("celery-events-exporter")
    path = write_config(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    done = subprocess.run(
        [command, "--web.config.file", str(path), "--web.listen-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = parse_lines(done.stderr)
    assert line["msg"] == "invalid configuration"
    assert "Invalid value for '--web.config.file'" in line["error"]
    assert "the password of 'alice' must be a bcrypt hash" in line["error"]
