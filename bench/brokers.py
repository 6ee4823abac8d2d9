"""Private brokers for one benchmark run: a redis-server on a free port, a RabbitMQ vhost."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (apt-get install redis-server rabbitmq-server)")
    return path


@contextmanager
def private_redis(unlimited_pubsub_buffer: bool = False) -> Iterator[str]:
    """A redis-server of our own. By default its pub/sub output-buffer limit is Redis' default
    (32 MB hard, 8 MB for 60 s); ``unlimited_pubsub_buffer`` lifts it, as the throughput anchors
    in the field notes were measured."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        args = [_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", folder]  # fmt: skip
        if unlimited_pubsub_buffer:
            args += ["--client-output-buffer-limit", "pubsub 0 0 0"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


@contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own on the machine's RabbitMQ, deleted afterwards."""
    ctl = _tool("rabbitmqctl")
    vhost = f"bench-{uuid.uuid4().hex[:10]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True)


def redis_pattern_subscribers(url: str) -> int:
    """PUBSUB NUMPAT: how many pattern subscriptions the server holds (kombu uses PSUBSCRIBE)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.pubsub_numpat())
    finally:
        client.close()
