"""The Prometheus exporter-toolkit web configuration file: basic auth users and TLS.

The same YAML that node_exporter reads with ``--web.config.file`` (and ``promtool check
web-config`` checks)::

    tls_server_config:
      cert_file: server.crt        # relative paths are relative to this file
      key_file: server.key
    basic_auth_users:
      prometheus: $2b$12$...       # bcrypt hash (htpasswd -nBC 12 prometheus)

Supported: ``basic_auth_users``; ``tls_server_config`` with ``cert_file``, ``key_file``,
``client_auth_type``, ``client_ca_file``, ``min_version``, ``max_version``;
``http_server_config.headers``. A key the exporter does not implement is an error rather than a
silent no-op: a config that asks for a safeguard must not run without it.

Also a small command line (``python -m celery_events_exporter.web.webconfig``) to hash a password,
write a web config for one user from a password in the environment and then, with ``--exec``,
become the exporter without that variable (what the compose stack does: the image has no
shell), and check a file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import ssl
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}
_HTTP_KEYS = {"headers", "http2"}
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
CACHE_SIZE = 1024
BCRYPT_MAX_PASSWORD_BYTES = 72
"""bcrypt reads at most 72 bytes of a password; longer ones can be neither hashed nor checked."""


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def context(self) -> ssl.SSLContext:
        """A server context; raises WebConfigError when the files do not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version is not None:
            context.maximum_version = TLS_VERSIONS[self.max_version]
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"cannot load the TLS certificate {self.cert_file} with key {self.key_file}: {exc}"
            ) from None
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise WebConfigError(
                    f"cannot load client_ca_file {self.client_ca_file}: {exc}"
                ) from None
        return context


@dataclass
class BasicAuth:
    """Checks credentials against bcrypt hashes, remembering recent answers: bcrypt costs tens
    of milliseconds by design, and Prometheus and Grafana send the same credentials every time."""

    users: dict[str, bytes]
    _cache: OrderedDict[bytes, bool] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dummy: bytes | None = None

    def check(self, username: str, password: str) -> bool:
        if len(password.encode()) > BCRYPT_MAX_PASSWORD_BYTES:
            # No bcrypt hash can match it (bcrypt 5 raises rather than cut it): a plain no,
            # without spending a bcrypt run on it.
            return False
        hashed = self.users.get(username)
        key = hashlib.sha256(
            b"\0".join((username.encode(), password.encode(), hashed or b""))
        ).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        if hashed is None:
            # Spend the same time on an unknown user as on a known one: no user enumeration.
            bcrypt.checkpw(password.encode(), self._dummy_hash())
            valid = False
        else:
            valid = bcrypt.checkpw(password.encode(), hashed)
        with self._lock:
            self._cache[key] = valid
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return valid

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            cost = max((_cost(h) for h in self.users.values()), default=10)
            self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        return self._dummy


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSConfig | None = None
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file; every problem is a WebConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"cannot read web config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config file {path} is not valid YAML: {exc}") from None
    try:
        return _parse(path, {} if data is None else data)
    except WebConfigError as exc:
        raise WebConfigError(f"web config file {path}: {exc}") from None


def _parse(path: Path, data: Any) -> WebConfig:
    mapping = _mapping(data, "the file")
    _no_unknown(mapping, _TOP_KEYS, "")
    base = path.resolve().parent
    tls = _parse_tls(base, mapping.get("tls_server_config"))
    headers = _parse_http(mapping.get("http_server_config"))
    users_data = mapping.get("basic_auth_users")
    basic_auth = None
    if users_data is not None:
        users: dict[str, bytes] = {}
        for username, hashed in _mapping(users_data, "basic_auth_users").items():
            if not isinstance(username, str) or not username or ":" in username:
                raise WebConfigError(f"basic_auth_users: invalid username {username!r}")
            if not isinstance(hashed, str) or not _is_bcrypt(hashed):
                raise WebConfigError(
                    f"basic_auth_users: the password of {username!r} must be a bcrypt hash "
                    "($2a$, $2b$ or $2y$, 60 characters), e.g. from "
                    "`python -m celery_events_exporter.web.webconfig hash` "
                    "or `htpasswd -nBC 12 USER`"
                )
            users[username] = hashed.encode()
        if users:
            basic_auth = BasicAuth(users)
    config = WebConfig(path, tls, basic_auth, headers)
    if tls is not None:
        tls.context()  # fail at start-up, not at the first connection
    return config


def _parse_tls(base: Path, data: Any) -> TLSConfig | None:
    if data is None:
        return None
    tls = _mapping(data, "tls_server_config")
    unsupported = set(tls) - _TLS_KEYS
    if unsupported & {"cert", "key"}:
        raise WebConfigError(
            "tls_server_config: inline cert/key are not supported; use cert_file/key_file"
        )
    _no_unknown(tls, _TLS_KEYS, "tls_server_config.")
    for required in ("cert_file", "key_file"):
        if not isinstance(tls.get(required), str) or not tls[required]:
            raise WebConfigError(f"tls_server_config: {required} is required")
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth_type!r} is not one of "
            f"{', '.join(CLIENT_AUTH_TYPES)}"
        )
    ca = tls.get("client_ca_file")
    if auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca:
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth_type} needs client_ca_file"
        )
    if ca and auth_type == "NoClientCert":
        raise WebConfigError("tls_server_config: client_ca_file needs a client_auth_type")
    versions = {}
    for key in ("min_version", "max_version"):
        value = tls.get(key)
        if value is not None and value not in TLS_VERSIONS:
            raise WebConfigError(
                f"tls_server_config: {key} {value!r} is not one of {', '.join(TLS_VERSIONS)}"
            )
        versions[key] = value
    return TLSConfig(
        cert_file=base / tls["cert_file"],
        key_file=base / tls["key_file"],
        client_auth_type=auth_type,
        client_ca_file=base / ca if ca else None,
        min_version=versions["min_version"] or "TLS12",
        max_version=versions["max_version"],
    )


def _parse_http(data: Any) -> dict[str, str]:
    if data is None:
        return {}
    http = _mapping(data, "http_server_config")
    _no_unknown(http, _HTTP_KEYS, "http_server_config.")
    headers = _mapping(http.get("headers") or {}, "http_server_config.headers")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str) or "\n" in name + value:
            raise WebConfigError(f"http_server_config.headers: invalid header {name!r}")
    return dict(headers)


def _mapping(data: Any, what: str) -> dict[Any, Any]:
    if not isinstance(data, dict):
        raise WebConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    return data


def _no_unknown(mapping: dict[Any, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in known)
    if unknown:
        raise WebConfigError(
            f"unsupported key(s) {', '.join(prefix + k for k in unknown)}; "
            f"this exporter supports {', '.join(sorted(prefix + k for k in known))}"
        )


def _is_bcrypt(hashed: str) -> bool:
    return len(hashed) == 60 and hashed.startswith(_BCRYPT_PREFIXES) and hashed[4:6].isdigit()


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


def hash_password(password: str, cost: int = 12) -> str:
    """The bcrypt hash of ``password``; a WebConfigError when it is over 72 bytes."""
    encoded = password.encode()
    if len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
        raise WebConfigError(
            f"the password is {len(encoded)} bytes long; bcrypt takes at most "
            f"{BCRYPT_MAX_PASSWORD_BYTES}"
        )
    return bcrypt.hashpw(encoded, bcrypt.gensalt(cost)).decode()


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m celery_events_exporter.web.webconfig",
        description="Web config file helpers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser("hash", help="print the bcrypt hash of a password read on stdin")
    hashing.add_argument("--cost", type=int, default=12)
    write = commands.add_parser(
        "write",
        help="write a web config with one basic-auth user whose password is taken from an "
        "environment variable",
    )
    write.add_argument("--username", required=True)
    write.add_argument("--password-env", required=True, metavar="VARIABLE")
    write.add_argument("--output", required=True, type=Path)
    write.add_argument("--cost", type=int, default=10)
    write.add_argument(
        "--password-file",
        type=Path,
        help="also write the password itself here, for a scraper's basic_auth.password_file",
    )
    write.add_argument(
        "--exec",
        dest="command_line",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="then replace this process with COMMAND (every argument that follows), its "
        "environment without the password's variable",
    )
    check = commands.add_parser("check", help="validate a web config file")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)

    if args.command == "hash":
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            parser.error("no password on stdin")
        try:
            print(hash_password(password, args.cost))
        except WebConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if args.command == "check":
        try:
            config = load(args.file)
        except WebConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        users = len(config.basic_auth.users) if config.basic_auth else 0
        print(f"{args.file}: OK (TLS {'on' if config.tls else 'off'}, {users} basic auth users)")
        return 0
    password = os.environ.get(args.password_env, "")
    if not password:
        print(f"environment variable {args.password_env} is empty or unset", file=sys.stderr)
        return 1
    try:
        config_text = _single_user_config(args.username, password, args.cost)
    except WebConfigError as exc:
        print(f"{args.password_env}: {exc}", file=sys.stderr)
        return 1
    _write_private(args.output, config_text)
    if args.password_file is not None:
        _write_private(args.password_file, password, mode=0o644)
    if args.command_line is not None:
        if not args.command_line:
            parser.error("--exec needs a command")
        del os.environ[args.password_env]
        os.execvp(args.command_line[0], args.command_line)
    return 0


def _single_user_config(username: str, password: str, cost: int) -> str:
    return yaml.safe_dump({"basic_auth_users": {username: hash_password(password, cost)}})


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
