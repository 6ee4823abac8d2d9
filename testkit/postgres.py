"""PostgreSQL for the tests and the benchmarks: a database of our own on the machine's server,
or a private cluster on a free port that may be stopped and started again.

The machine's server (127.0.0.1:5432, trust auth) is shared: a test creates a database with a
unique name and drops it afterwards (``WITH (FORCE)`` ends the connections left). A private
cluster is for what must not happen to the shared server (an outage, a restart); initdb and
postgres refuse to run as root, so they run as the ``postgres`` user when we are root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from testkit.ports import free_port

SHARED = "postgresql://postgres@127.0.0.1:5432/postgres"
BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def database(prefix: str = "cee_test", server: str = SHARED) -> Iterator[str]:
    """The URL of a new, empty database on ``server``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own in a new directory, on a free port. The directory is
    not under pytest's (root-only) temporary tree: the ``postgres`` user must reach it."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cee-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            # UTF8 like the shared server (scripts/provision), whatever the environment's
            # locale: without LANG initdb picks SQL_ASCII, whose text psycopg returns as bytes.
            _as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                          "postgres", "-E", "UTF8", "--locale=C.UTF-8"]),
            check=True,
            capture_output=True,
        )  # fmt: skip

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                          str(self.directory / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.server_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def remove(self) -> None:
        """Stop the cluster and delete its files."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )

    @contextmanager
    def running(self) -> Iterator[PrivatePostgres]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
