"""A private network namespace for tests whose servers listen on fixed ports, as a user's would.

Only its own loopback is in it: nothing else on this shared machine can clash with those ports,
and nothing the servers do reaches past the namespace. The test process stays outside and talks
to the servers through nsenter.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import require_tool


@dataclass
class Namespace:
    """A private network namespace (only its own loopback) and the processes started in it."""

    tmp_path: Path
    holder: subprocess.Popen[bytes] | None = None
    started: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def open(self) -> None:
        # The holder keeps the namespace alive; everything else joins it with nsenter.
        self.holder = subprocess.Popen(
            [require_tool("unshare"), "--net", "sh", "-c",
             "ip link set lo up && echo up && exec sleep 3600"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline() == b"up\n", "could not bring up the namespace's lo"

    def command(self, args: list[str]) -> list[str]:
        assert self.holder is not None
        return [require_tool("nsenter"), f"--target={self.holder.pid}", "--net", *args]

    def spawn(
        self, args: list[str], cwd: Path, log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.tmp_path / log_name
        with log_path.open("wb") as log:
            # nsenter execs the command, so the PID is the server's own.
            proc = subprocess.Popen(
                self.command(args), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.started.append((proc, log_path))
        return proc

    def redis(self, tmp_path: Path) -> None:
        """A Redis of the namespace's own on localhost:6379, the README's broker address."""
        server = require_tool("redis-server")
        self.spawn(
            [server, "--port", "6379", "--bind", "127.0.0.1", "-::1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            tmp_path,
            "redis.log",
        )  # fmt: skip

    def get(self, url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
        """GET a URL from inside the namespace: (status, body). The test stays outside."""
        fetch = (
            "import base64, sys, urllib.error, urllib.request\n"
            "request = urllib.request.Request(sys.argv[1])\n"
            "if len(sys.argv) > 2:\n"
            "    token = base64.b64encode(sys.argv[2].encode()).decode()\n"
            "    request.add_header('Authorization', 'Basic ' + token)\n"
            "try:\n"
            "    response = urllib.request.urlopen(request, timeout=5)\n"
            "except urllib.error.HTTPError as error:\n"
            "    response = error\n"
            "print(response.status)\n"
            "print(response.read().decode(), end='')\n"
        )
        credentials = [":".join(auth)] if auth else []
        result = subprocess.run(
            self.command(["python3", "-c", fetch, url, *credentials]),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            # An OSError, so that wait_until() polls on while the server is not up yet.
            raise ConnectionError(result.stderr.strip().splitlines()[-1])
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def get_json(self, url: str) -> Any:
        status, body = self.get(url)
        assert status == 200, (url, status, body)
        return json.loads(body)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} (exit {proc.poll()}):\n{path.read_text(errors='replace')[-3000:]}"
            for proc, path in self.started
        )

    def close(self) -> None:
        for proc, _ in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


def open_namespace(tmp_path: Path) -> Iterator[Namespace]:
    """The body of a test module's ``namespace`` fixture: open, yield, stop everything."""
    space = Namespace(tmp_path)
    try:
        space.open()
        yield space
    finally:
        space.close()
