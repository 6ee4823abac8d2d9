"""A TCP proxy in front of a private server that can freeze halfway through a reply.

SIGSTOP (``RedisServer.freeze``) stops the server wherever it is, which on a quiet connection
is between two replies. A server that stops in the middle of one (a busy stream, a host that
hangs) leaves the client holding half a message, and a client library that reads the rest with
no timeout waits for it forever. ``FreezingProxy.freeze_midway`` makes that case happen on
purpose: the next large chunk the server sends to a pub/sub subscriber is cut in half, and from
then on nothing passes on any connection, in either direction (the connections stay open, as the
kernel keeps a stopped server's), until ``thaw``. ``hold_subscriptions`` keeps a client's
SUBSCRIBE or PSUBSCRIBE from the server until ``release_subscriptions``: a server slow to take
the subscription, to tell "connected" from "subscribed".
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 1 << 16
MIDWAY_AT_LEAST = 1024
"""Bytes a chunk from the server must have to be cut: smaller ones (a PONG, a subscription
confirmation) pass whole, so the cut lands inside the large message the test sends."""


class _Link:
    """One proxied connection; ``subscriber`` once its client sent a PSUBSCRIBE or SUBSCRIBE
    (the cut goes to a subscriber, not to a connection that happened to get a large reply)."""

    subscriber = False


class FreezingProxy:
    """Forwards every connection to ``127.0.0.1:target_port`` from a port of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut_next = False
        self._thawed = threading.Event()
        self._thawed.set()
        self.frozen = threading.Event()
        """Set once a chunk was cut in half: the freeze has begun."""
        self._subscriptions_released = threading.Event()
        self._subscriptions_released.set()
        self.subscription_held = threading.Event()
        """Set once a subscription from a client is being held."""
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def freeze_midway(self) -> None:
        """Cut the next chunk of at least ``MIDWAY_AT_LEAST`` bytes from the server in half,
        forward the first half and then nothing more until ``thaw``."""
        with self._lock:
            self._cut_next = True

    def thaw(self) -> None:
        with self._lock:
            self._cut_next = False
            self.frozen.clear()
            self._thawed.set()

    def hold_subscriptions(self) -> None:
        """Keep every SUBSCRIBE or PSUBSCRIBE a client sends (and what follows it on that
        connection) from the server until ``release_subscriptions``."""
        self._subscriptions_released.clear()

    def release_subscriptions(self) -> None:
        self.subscription_held.clear()
        self._subscriptions_released.set()

    def close(self) -> None:
        self._thawed.set()
        self._subscriptions_released.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            link = _Link()
            for src, dst, from_server in ((client, server, False), (server, client, True)):
                threading.Thread(
                    target=self._pump, args=(link, src, dst, from_server), daemon=True
                ).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                if not from_server and b"SUBSCRIBE" in data.upper():
                    link.subscriber = True
                    if not self._subscriptions_released.is_set():
                        self.subscription_held.set()
                        self._subscriptions_released.wait()
                if from_server and link.subscriber and len(data) >= MIDWAY_AT_LEAST:
                    with self._lock:
                        cut, self._cut_next = self._cut_next, False
                        if cut:
                            self._thawed.clear()
                    if cut:
                        half = len(data) // 2
                        dst.sendall(data[:half])
                        data = data[half:]
                        self.frozen.set()
                self._thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
