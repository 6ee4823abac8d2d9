"""The HTTP side: ``/metrics`` (text or OpenMetrics, gzip when asked), ``/healthz``, ``/readyz``,
the JSON API (``/api/tasks``, ``/api/workers``), with the web config's basic auth and TLS.

A stdlib threading server rather than prometheus-client's ``start_http_server``: the exporter
serves more than ``/metrics``, needs basic auth, and a scrape must never wait for another one.
With basic auth configured, every path but the two probes requires it: ``/healthz`` and
``/readyz`` tell nothing but "the process runs" and "the broker is connected" (connected and
subscribed to the event exchange: whether workers publish there, it cannot know), and container
health checks and Kubernetes probes cannot be expected to hold the credentials.

A connection gets a thread of its own, up to ``MAX_CONNECTIONS``; past that it is answered 503
from the accept loop, so a crowd of clients costs bounded memory and a scraper's connection is
never queued behind theirs. Whatever fails is logged in the structured log and counted
(``celery_events_exporter.web.stats``), never printed to stderr by socketserver.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import html
import importlib
import socket
import ssl
import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast
from urllib.parse import unquote

import orjson

from celery_events_exporter import __version__
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.history.store import HistoryUnavailable
from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.parsers import ListenAddress
from celery_events_exporter.scrapes import Scrapes
from celery_events_exporter.web.api import JSON, Api, ApiError
from celery_events_exporter.web.priority import RETRY_AFTER, Abandoned, ApiGate, client_gone
from celery_events_exporter.web.stats import WebStats, path_label
from celery_events_exporter.web.webconfig import WebConfig

log = get_logger(__name__)

MAX_CONNECTIONS = 1024
"""Connections served at once, each by a thread of its own: a scrape never waits for another
request. Past it a connection is answered 503 at once (counted in
celery_exporter_http_connections_refused_total)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before the accept loop takes them (the stdlib's default is 5,
which overflowed thousands of times with 1 000 clients at once); Linux caps it at somaxconn."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection may take to send its request: a client that connects and says nothing
holds its thread no longer than this."""
INTERNAL_ERROR = b'{"error": "internal error; the exporter log has the details"}'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    b"too many connections\n"
)


def landing_page(telemetry_path: str) -> bytes:
    """The page at ``/``: links to the endpoints (relative, so that it works behind a prefix)."""
    return f"""<!doctype html>
<html><head><title>celery-events-exporter</title></head>
<body><h1>celery-events-exporter {__version__}</h1>
<ul><li><a href="{html.escape(telemetry_path.lstrip("/"))}">metrics</a></li>
<li><a href="healthz">healthz</a></li>
<li><a href="readyz">readyz</a> (503 while the broker is unreachable)</li>
<li><a href="api/tasks">api/tasks</a> (recent tasks as JSON; parameters uuid, name, state, worker,
search, limit, from, to)</li><li><a href="api/workers">api/workers</a> (workers as JSON;
api/workers/NAME one worker with its inspect details)</li></ul>
</body></html>
""".encode()


UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
REALM = "celery-events-exporter"


def _gzip_compressor() -> Callable[[bytes], bytes]:
    """ISA-L's gzip (the ``isal`` package) when installed, else the stdlib's, both at level 1.

    Prometheus asks for gzip with every scrape: at 50 k series the stdlib takes 10-16 ms for a
    5 MB page, as long as rendering it; ISA-L writes as small a stream in 2 ms.
    """
    try:
        igzip = importlib.import_module("isal.igzip")
    except ImportError:
        return partial(gzip.compress, compresslevel=1)
    return cast(Callable[[bytes], bytes], partial(igzip.compress, compresslevel=1))


gzip_compress = _gzip_compressor()


class _Handler(BaseHTTPRequestHandler):
    server_version = f"celery-events-exporter/{__version__}"
    timeout = IDLE_TIMEOUT
    page: ClassVar[MetricsPage]
    is_ready: ClassVar[Callable[[], bool]]
    api: ClassVar[Api | None]
    web_config: ClassVar[WebConfig | None]
    stats: ClassVar[WebStats]
    gate: ClassVar[ApiGate]
    _responded = False
    telemetry_path: ClassVar[str]
    landing_page: ClassVar[bytes]

    def do_GET(self) -> None:
        """Route the request; whatever fails is logged and counted, and answered 500 when no
        answer was started: a bug in one path never drops a connection without a word."""
        path = self.path.partition("?")[0]
        if path == type(self).telemetry_path:
            path = "/metrics"  # the label the self-metrics give the metrics page, wherever it is
        self._responded = False
        try:
            self._route()
        except ConnectionError as exc:  # the client went away mid-answer: its doing, not ours
            log.debug("http client went away", path=path_label(path), error=str(exc))
        except HistoryUnavailable as exc:  # any route that reads the history's database
            with contextlib.suppress(OSError):  # a client gone meanwhile: nothing to answer
                self._history_unavailable(path, exc)
        except Exception:
            type(self).stats.error(path_label(path))
            log.exception("http request failed", path=path_label(path))
            if not self._responded:
                with contextlib.suppress(OSError):
                    self._send(500, INTERNAL_ERROR, JSON)

    def _route(self) -> None:
        path, _, query = self.path.partition("?")
        if path not in UNAUTHENTICATED_PATHS and not self._authorized():
            return
        if path == type(self).telemetry_path:
            self._metrics()
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            if type(self).is_ready():
                self._send(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"broker not connected\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, type(self).landing_page, "text/html; charset=utf-8")
        elif path in ("/api/tasks", "/api/workers") and type(self).api is not None:
            self._api(path, query)
        elif path.startswith("/api/tasks/") and type(self).api is not None:
            self._task(unquote(path.removeprefix("/api/tasks/")))
        elif path.startswith("/api/workers/") and type(self).api is not None:
            self._worker(unquote(path.removeprefix("/api/workers/")))
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _authorized(self) -> bool:
        """True if no basic auth is configured or the request carries valid credentials; else
        answers 401 itself."""
        config = type(self).web_config
        auth = config.basic_auth if config is not None else None
        if auth is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            username, sep, password = decoded.partition(":")
            if sep and auth.check(username, password):
                return True
        self._send(
            401,
            b"unauthorized\n",
            "text/plain; charset=utf-8",
            {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )
        return False

    def _api(self, path: str, query: str) -> None:
        api = type(self).api
        assert api is not None
        gate = type(self).gate
        if not gate.admit():
            self._send(
                503,
                b'{"error": "the API is busy; scrapes come first: retry later"}',
                JSON,
                {"Retry-After": str(RETRY_AFTER)},
            )
            return
        connection = self.connection
        try:
            if path == "/api/tasks":
                body, headers = api.tasks(
                    query, checkpoint=lambda: gate.checkpoint(partial(client_gone, connection))
                )
            else:
                gate.checkpoint(partial(client_gone, connection))
                body, headers = api.workers(query), {}
        except ApiError as exc:
            body = f'{{"error": {_json_string(str(exc))}}}'.encode()
            self._send(400, body, JSON)
            return
        except Abandoned:
            log.debug("api client went away: its answer was dropped", path=path)
            self.close_connection = True
            return
        finally:
            gate.release()
        headers["Cache-Control"] = "no-store"
        self._send(200, body, JSON, headers)

    def _history_unavailable(self, path: str, exc: HistoryUnavailable) -> None:
        """503 with the reason: the history's database is down or restarting, the exporter is
        not broken (counting and /metrics go on) and the client may retry."""
        type(self).stats.error(path_label(path))
        log.warning("task history unavailable", path=path_label(path), error=str(exc))
        body = f'{{"error": {_json_string(str(exc))}}}'.encode()
        self._send(503, body, JSON, {"Retry-After": str(RETRY_AFTER)})

    def _task(self, uuid: str) -> None:
        api = type(self).api
        assert api is not None
        body = api.task(uuid) if uuid and "/" not in uuid else None
        if body is None:
            self._send(404, b'{"error": "no such task in the history"}', JSON)
            return
        self._send(200, body, JSON, {"Cache-Control": "no-store"})

    def _worker(self, hostname: str) -> None:
        api = type(self).api
        assert api is not None
        body = api.worker(hostname) if hostname and "/" not in hostname else None
        if body is None:
            self._send(404, b'{"error": "no such worker"}', JSON)
            return
        self._send(200, body, JSON, {"Cache-Control": "no-store"})

    def _metrics(self) -> None:
        # Announced while the page is made, not while it is sent: a client that reads slowly
        # must not hold up counting.
        with type(self).gate.scrapes.scraping():
            body, content_type = type(self).page.render(self.headers.get("Accept", ""))
            headers = {}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip_compress(body)
                headers["Content-Encoding"] = "gzip"
        self._send(200, body, content_type, headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        config = type(self).web_config
        extra = config.headers if config is not None else {}
        for name, value in {**extra, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # One line per scrape is noise at info level; keep it for debugging.
        log.debug("http request", client=self.client_address[0], request=format % args)


Request = socket.socket | tuple[bytes, socket.socket]


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` at once."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    max_connections = MAX_CONNECTIONS
    stats: WebStats
    speaks_plain_http = True
    """Whether a refusal can be written on the accepted socket before any handshake."""

    def process_request(self, request: Request, client_address: Any) -> None:
        if not self.stats.connection_opened(self.max_connections):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its connection is not open
            self.stats.connection_closed()
            raise

    def process_request_thread(self, request: Request, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.stats.connection_closed()

    def _refuse(self, request: Request, client_address: Any) -> None:
        """Answer 503 without a thread, never blocking the accept loop, and close."""
        refused = self.stats.refused_connections
        if sparse(refused):
            log.warning(
                "http connection refused: too many open",
                open=self.max_connections,
                refused_total=refused,
                client=_client(client_address),
            )
        if self.speaks_plain_http and isinstance(request, socket.socket):
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(TOO_MANY_CONNECTIONS)
        self.shutdown_request(request)

    def handle_error(self, request: Request, client_address: Any) -> None:
        """socketserver prints a traceback to stderr here; the structured log gets it instead."""
        self.stats.error("other")
        log.exception("http connection failed", client=_client(client_address))


class _Server6(_Server):
    address_family = socket.AF_INET6


class _TLSServer(_Server):
    """Wraps each accepted connection in the handler's thread: a TLS handshake waits on the
    client, and must not stall the accept loop that every other client needs."""

    ssl_context: ssl.SSLContext
    speaks_plain_http = False

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        assert isinstance(request, socket.socket)  # a stream server
        request.settimeout(_Handler.timeout)
        try:
            wrapped = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", client=str(client_address), error=str(exc))
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            # wrap_socket() detached the raw socket, so shutdown_request() cannot close it.
            with contextlib.suppress(OSError):
                wrapped.shutdown(socket.SHUT_RDWR)
            wrapped.close()


class _TLSServer6(_TLSServer):
    address_family = socket.AF_INET6


def _client(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) and client_address else ""


def _json_string(text: str) -> str:
    return orjson.dumps(text).decode()


def serve(
    listen: ListenAddress,
    page: MetricsPage,
    is_ready: Callable[[], bool],
    *,
    api: Api | None = None,
    web_config: WebConfig | None = None,
    stats: WebStats | None = None,
    telemetry_path: str = "/metrics",
    scrapes: Scrapes | None = None,
) -> ThreadingHTTPServer:
    """Bind and start serving on a daemon thread; returns the server (``shutdown()`` stops it).
    ``stats`` counts what the server refuses or fails at, for ``/metrics``; ``scrapes`` tells
    the other threads when ``/metrics`` renders, so that they give way to it."""
    stats = stats if stats is not None else WebStats()
    scrapes = scrapes if scrapes is not None else Scrapes()
    handler = type(
        "Handler",
        (_Handler,),
        {
            "page": page,
            "is_ready": staticmethod(is_ready),
            "api": api,
            "web_config": web_config,
            "stats": stats,
            "gate": ApiGate(stats, scrapes),
            "telemetry_path": telemetry_path,
            "landing_page": landing_page(telemetry_path),
        },
    )
    ipv6 = ":" in listen.host
    server: _Server
    if web_config is not None and web_config.tls is not None:
        tls_server = (_TLSServer6 if ipv6 else _TLSServer)((listen.host, listen.port), handler)
        tls_server.ssl_context = web_config.tls.context()
        server = tls_server
    else:
        server = (_Server6 if ipv6 else _Server)((listen.host, listen.port), handler)
    server.stats = stats
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
