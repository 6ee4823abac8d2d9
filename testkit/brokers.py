"""Brokers of our own: a redis-server on a free port, a RabbitMQ virtual host."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testkit.ports import free_port

AMQP_USER = "guest"
AMQP_PASSWORD = "guest"
AMQP_HOST = "127.0.0.1:5672"


class ToolMissing(RuntimeError):
    """A server binary is not installed; the message says how to install it."""


def tool(name: str, install: str = "apt-get install redis-server rabbitmq-server") -> str:
    """The path of ``name``, or ``ToolMissing`` that says how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} is not installed ({install})")
    return path


class RedisServer:
    """A redis-server of our own on a free port, in ``folder``; it may be stopped, started again
    and frozen (SIGSTOP) to test what the exporter does when its broker goes away or hangs.

    By default its pub/sub output-buffer limit is Redis' default (32 MB hard, 8 MB for 60 s);
    ``unlimited_pubsub_buffer`` lifts it.
    """

    def __init__(self, folder: Path, *, unlimited_pubsub_buffer: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.unlimited_pubsub_buffer = unlimited_pubsub_buffer
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        if self.unlimited_pubsub_buffer:
            args += ["--client-output-buffer-limit", "pubsub 0 0 0"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited {self.proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.05)

    def answers(self) -> bool:
        """True if the server answers PING within a second."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must be able to die
            self.proc.kill()
            self.proc.wait()


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``rabbitmqctl`` against the machine's RabbitMQ; raises on failure."""
    return subprocess.run([tool("rabbitmqctl"), *args], check=True, capture_output=True, text=True)


@contextmanager
def rabbitmq_vhost(prefix: str) -> Iterator[str]:
    """A virtual host of our own on the machine's RabbitMQ (the guest user may use it), deleted
    afterwards, whatever the caller left in it: yields its AMQP URL."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
        yield f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}/{vhost}"
    finally:
        subprocess.run([tool("rabbitmqctl"), "delete_vhost", vhost], capture_output=True)
