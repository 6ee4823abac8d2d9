"""Why a broker call failed, in the few words a metric label and an operator need.

One classification for the intake's connection errors
(``celery_exporter_broker_connection_errors``), the queue poller's
(``celery_exporter_queue_poll_errors``) and the controller's broadcasts
(``celery_exporter_broadcast_errors``); and the one check that names a TLS mismatch as one.

A TLS URL (``rediss://``, ``amqps://``) against a plain port fails in two ways: py-amqp's
handshake meets RabbitMQ's plain protocol header and the ssl module raises at once
(``WRONG_VERSION_NUMBER``); a plain Redis reads the ClientHello as the start of a command and
waits for the rest, so the handshake only times out ("Timeout connecting to server" after the
socket timeout). A timeout alone could as well be a frozen TLS server, so ``tls_mismatch`` asks
the port in plain text: a plain server answers.
"""

from __future__ import annotations

import socket
import ssl

from kombu import Connection

ERROR_REASONS = ("timeout", "connection", "auth", "tls", "other")
"""Every value ``error_reason`` gives; each metric counting them starts every one at 0."""
MAX_CAUSES = 5
"""How deep ``error_reason`` follows an exception's ``__cause__`` and ``__context__``."""
PROBE_TIMEOUT = 1.0
"""Seconds the plain-text question of ``tls_mismatch`` may take."""

PLAIN_PROBES: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
    # driver type: (what is sent in plain text, how a plain server's answer starts)
    "redis": (b"PING\r\n", (b"+", b"-")),  # +PONG, or -NOAUTH / -ERR from a server with a password
    "amqp": (b"AMQP\x00\x00\x09\x01", (b"\x01\x00\x00", b"AMQP")),  # connection.start, or its
    # own protocol header back
}


def causes(exc: BaseException, *, context: bool = False) -> list[BaseException]:
    """``exc`` and what it was raised from (kombu re-raises a transport's errors as its own
    ``OperationalError`` from them), up to ``MAX_CAUSES``; with ``context``, also what it was
    raised while handling (redis-py turns an ``ssl.SSLError`` into its ConnectionError so)."""
    chain = [exc]
    while len(chain) < MAX_CAUSES:
        last = chain[-1]
        nxt = last.__cause__ or (last.__context__ if context else None)
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    return chain


def error_reason(exc: BaseException) -> str:
    """The reason label of a failed broker call: tls, timeout, auth, connection or other."""
    if any(isinstance(error, ssl.SSLError) for error in causes(exc, context=True)):
        return "tls"
    chain = causes(exc)
    names = [type(error).__name__ for error in chain]
    if any(isinstance(error, TimeoutError) for error in chain) or any(
        "Timeout" in name for name in names
    ):
        return "timeout"
    if any("Auth" in name or "AccessRefused" in name or "Permission" in name for name in names):
        return "auth"
    if any(
        isinstance(error, (ConnectionError, OSError, EOFError)) or "Connection" in name
        for error, name in zip(chain, names, strict=True)
    ):
        return "connection"
    return "other"


def uses_tls(conn: Connection) -> bool:
    """True if ``conn`` (its current URL) asks for TLS: ``rediss://``, ``amqps://`` or ssl
    options."""
    return bool(conn.ssl) or conn.transport_cls in ("rediss",)


def tls_mismatch(conn: Connection, exc: BaseException) -> str | None:
    """Why a TLS connection failed, when the cause is that the server does not speak TLS: the
    message names TLS; None when that is not the cause (or cannot be told)."""
    if not uses_tls(conn):
        return None
    reason = error_reason(exc)
    if reason not in ("tls", "timeout", "connection"):
        return None
    host, port = conn.hostname or "localhost", conn.port or conn.transport.default_port
    if not host or not port:
        return None
    if _answers_in_plain_text(conn.transport.driver_type, host, int(port)):
        scheme = str(conn.transport_cls)
        return (
            f"TLS mismatch: {host}:{port} answers in plain text, without TLS; the broker URL asks "
            f"for TLS ({scheme}://): use the server's TLS port, or a plain URL "
            f"({'redis' if scheme == 'rediss' else 'amqp'}://) if the server has no TLS"
        )
    if reason == "tls":
        return f"TLS handshake with {host}:{port} failed: {chain_text(exc)}"
    return None


def chain_text(exc: BaseException) -> str:
    """The innermost error of ``exc``'s chain as ``Type: message``."""
    inner = causes(exc, context=True)[-1]
    return f"{type(inner).__name__}: {inner}"


def _answers_in_plain_text(driver: str, host: str, port: int) -> bool:
    probe = PLAIN_PROBES.get(driver)
    if probe is None:
        return False
    question, answers = probe
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(question)
            reply = sock.recv(16)
    except OSError:
        return False
    return reply.startswith(answers)
