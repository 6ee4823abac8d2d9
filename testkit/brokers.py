"""Brokers of our own: a redis-server on a free port, a RabbitMQ node on free ports, a RabbitMQ
virtual host on the machine's node."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import redis

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

    def __init__(
        self,
        folder: Path,
        *,
        unlimited_pubsub_buffer: bool = False,
        password: str | None = None,
        replica_of: int | None = None,
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.unlimited_pubsub_buffer = unlimited_pubsub_buffer
        self.password = password
        """``requirepass`` and ``masterauth``: clients and replicas alike need it."""
        self.replica_of = replica_of
        """The port of the master on 127.0.0.1 this server replicates, if any."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        if self.unlimited_pubsub_buffer:
            args += ["--client-output-buffer-limit", "pubsub 0 0 0"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
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
        """True if the server answers PING within a second (NOAUTH from one with a password)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
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


class RedisSentinel:
    """A Redis Sentinel of our own (``redis-server CONFIG --sentinel``) on a free port, watching
    the master on 127.0.0.1:``master_port`` as ``master_name``. It fails a master over after
    ``down_after_ms`` of silence (``quorum`` sentinels agreeing). ``password`` protects the
    sentinel itself (clients pass it in kombu's ``sentinel_kwargs``; the sentinels of one test
    share it to talk to each other); ``auth_pass`` is the master's."""

    def __init__(
        self,
        folder: Path,
        master_port: int,
        *,
        master_name: str = "mymaster",
        quorum: int = 1,
        password: str | None = None,
        auth_pass: str | None = None,
        down_after_ms: int = 1000,
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.master_name = master_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} 10000",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        if auth_pass:
            lines.append(f"sentinel auth-pass {master_name} {auth_pass}")
        if password:
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        self.password = password
        self.config = folder / f"sentinel-{self.port}.conf"
        self.config.write_text("\n".join(lines) + "\n")  # the sentinel rewrites it as it learns
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, master_password: str | None = None) -> str:
        """``sentinel://`` for kombu; ``master_password`` is the master's (kombu hands the URL's
        password to the master, the sentinel's goes in ``sentinel_kwargs``)."""
        auth = f":{master_password}@" if master_password else ""
        return f"sentinel://{auth}127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [tool("redis-server"), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except (OSError, redis.RedisError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sentinel on port {self.port} exited") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sentinel on port {self.port} did not answer") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        """A redis-py client of the sentinel itself (``SENTINEL ...`` commands)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2
        )

    def master_port(self) -> int | None:
        """The port the sentinel names for its master now."""
        with self.client() as client:
            address = client.sentinel_get_master_addr_by_name(self.master_name)
        return int(address[1]) if address else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``rabbitmqctl`` against the machine's RabbitMQ; raises on failure."""
    return subprocess.run([tool("rabbitmqctl"), *args], check=True, capture_output=True, text=True)


def _add_vhost(prefix: str) -> str:
    """A new virtual host on the machine's RabbitMQ that the guest user may use: its name."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
    except BaseException:
        _delete_vhost(vhost)
        raise
    return vhost


def _delete_vhost(vhost: str) -> None:
    """Delete ``vhost`` with whatever is left in it (queues, bindings, connections)."""
    subprocess.run([tool("rabbitmqctl"), "delete_vhost", vhost], capture_output=True)


def _amqp_url(vhost: str) -> str:
    return f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}/{vhost}"


@contextmanager
def rabbitmq_vhost(prefix: str) -> Iterator[str]:
    """A virtual host of our own on the machine's RabbitMQ (the guest user may use it), deleted
    afterwards, whatever the caller left in it: yields its AMQP URL."""
    vhost = _add_vhost(prefix)
    try:
        yield _amqp_url(vhost)
    finally:
        _delete_vhost(vhost)


class VhostPool:
    """Virtual hosts of our own on the machine's RabbitMQ, as ``rabbitmq_vhost`` makes them, for
    a run of many tests: each ``rabbitmqctl`` call takes about half a second, so a thread of the
    pool's own makes the next virtual host while a test runs, and another deletes the used ones
    behind it. Each caller still gets a new, empty virtual host that nobody else knows of."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vhost-maker")
        self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vhost-deleter")
        self._next: Future[str] | None = None

    @contextmanager
    def vhost(self) -> Iterator[str]:
        """A new virtual host, deleted afterwards (in the background): yields its AMQP URL."""
        made = self._next or self._maker.submit(_add_vhost, self.prefix)
        self._next = self._maker.submit(_add_vhost, self.prefix)
        vhost = made.result()
        try:
            yield _amqp_url(vhost)
        finally:
            self._deleter.submit(_delete_vhost, vhost)

    def close(self) -> None:
        """Delete the virtual host made ahead, and wait for every deletion."""
        self._maker.shutdown(wait=True)
        if self._next is not None and self._next.exception() is None:
            self._deleter.submit(_delete_vhost, self._next.result())
        self._next = None
        self._deleter.shutdown(wait=True)


RABBITMQ_MANAGEMENT = "rabbitmq_management"


class RabbitNode:
    """A RabbitMQ node of our own (its own node name, AMQP and distribution ports, data and log
    folders), which may be frozen (SIGSTOP of its Erlang VM) to test what the exporter does when
    its broker hangs: the machine's node is shared and must never be stopped or frozen.

    ``plugins`` are enabled at start; with ``rabbitmq_management`` the management API listens on
    ``management_url``. The guest user (guest/guest) may connect, from the loopback only.

    The node runs as the rabbitmq user when started by root (Debian's script does that), so its
    folder lives outside any folder only root may enter; ``stop`` removes it.
    """

    def __init__(self, *, plugins: Sequence[str] = (), prefix: str = "cee") -> None:
        self.node = f"{prefix}-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.plugins = tuple(plugins)
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.vm_pid: int | None = None
        """The node's Erlang VM (beam.smp): the process that holds every connection."""
        self.frozen = False

    @property
    def url(self) -> str:
        return f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:{self.amqp_port}//"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the node and return once RabbitMQ and its plugins run (``rabbitmqctl wait``)."""
        server = tool("rabbitmq-server")
        ctl = tool("rabbitmqctl")
        folder = self.folder = Path(tempfile.mkdtemp(prefix="cee-rabbit-"))
        (folder / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        config = f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
        if RABBITMQ_MANAGEMENT in self.plugins:
            config += (
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            )
        (folder / "rabbitmq.conf").write_text(config)
        if os.geteuid() == 0:  # Debian's script runs the server as the rabbitmq user
            for path in (folder, *folder.iterdir()):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "ERL_CRASH_DUMP": str(folder / "erl_crash.dump"),
        }
        with (folder / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [server], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # The VM writes its pid file early; `wait` returns once the applications run.
        waiter = subprocess.Popen(
            [ctl, "-n", self.node, "wait", str(folder / "pid"), "--timeout", str(int(timeout))],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        while waiter.poll() is None:
            if self.proc.poll() is not None:
                waiter.kill()
                waiter.wait()
                raise RuntimeError(f"rabbitmq-server exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        output = waiter.stdout.read().decode(errors="replace") if waiter.stdout else ""
        if waiter.returncode != 0:
            raise RuntimeError(f"RabbitMQ node {self.node} did not start: {output}\n{self.log()}")
        self.vm_pid = int((folder / "pid").read_text().strip())
        if not self._ours(self.vm_pid):
            raise RuntimeError(f"pid {self.vm_pid} of node {self.node} is not a process we started")

    def log(self) -> str:
        """What the server script wrote, and the node's own log."""
        if self.folder is None:
            return ""
        parts = [self.folder / "server.log", *sorted((self.folder / "log").glob("*.log"))]
        return "\n".join(path.read_text(errors="replace") for path in parts if path.exists())

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl`` against this node; raises on failure (hangs while it is frozen)."""
        return subprocess.run(
            [tool("rabbitmqctl"), "-n", self.node, *args],
            check=True,
            capture_output=True,
            text=True,
        )

    @contextmanager
    def vhost(self, prefix: str) -> Iterator[str]:
        """A virtual host of our own on this node, deleted afterwards: tests that share the node
        leave nothing (a queued task, a binding) for the next one. Yields its AMQP URL."""
        vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.ctl("add_vhost", vhost)
        try:
            self.ctl("set_permissions", "-p", vhost, AMQP_USER, ".*", ".*", ".*")
            yield f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@127.0.0.1:{self.amqp_port}/{vhost}"
        finally:
            if self.frozen:
                self.thaw()
            subprocess.run(
                [tool("rabbitmqctl"), "-n", self.node, "delete_vhost", vhost], capture_output=True
            )

    def freeze(self) -> None:
        """SIGSTOP the node's VM: the kernel keeps its connections open and accepts new ones
        into the listen backlog, nothing is answered."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)
        self.frozen = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.vm_pid is None or self.proc is None or not self._ours(self.vm_pid):
            raise RuntimeError(f"RabbitMQ node {self.node} is not running")
        os.kill(self.vm_pid, sig)

    def _ours(self, pid: int) -> bool:
        """``pid`` is a beam.smp descended from the server script we started (su puts the VM
        in a session of its own, so neither its session nor its process group says so)."""
        if self.proc is None:
            return False
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "beam.smp":
                return False
            while pid > 1:
                if pid == self.proc.pid:
                    return True
                # The parent pid is the 4th field of stat, after the parenthesised name.
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        return False

    def stop(self) -> None:
        """End the node and remove its folder. A node that started is killed (SIGKILL to its VM,
        which ends a frozen one too): its data goes with the folder, and ``rabbitmqctl stop``
        took 7 s of a test run per node. One whose start failed half-way is asked by name."""
        if self.proc is not None and self.proc.poll() is None:
            if self.vm_pid is not None and self._ours(self.vm_pid):
                os.kill(self.vm_pid, signal.SIGKILL)
                self.frozen = False
            else:
                subprocess.run(
                    [tool("rabbitmqctl"), "-n", self.node, "stop"], capture_output=True, timeout=60
                )
            try:
                self.proc.wait(30)  # the server script ends with its VM
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
