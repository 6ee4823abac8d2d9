"""The HTTP side: ``/metrics`` (text or OpenMetrics, gzip when asked), ``/healthz``, ``/readyz``.

A stdlib threading server rather than prometheus-client's ``start_http_server``: the exporter
serves more than ``/metrics`` (health, readiness, and later its JSON API and basic auth), and a
scrape must never wait for another one.
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.config import ListenAddress
from exporter.logging import get_logger

log = get_logger(__name__)

LANDING_PAGE = f"""<!doctype html>
<html><head><title>celery-events-exporter</title></head>
<body><h1>celery-events-exporter {__version__}</h1>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li>
<li><a href="readyz">readyz</a> (503 while the broker is unreachable)</li></ul>
</body></html>
""".encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = f"celery-events-exporter/{__version__}"
    registry: ClassVar[CollectorRegistry]
    is_ready: ClassVar[Callable[[], bool]]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            if type(self).is_ready():
                self._send(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"broker not connected\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, LANDING_PAGE, "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(type(self).registry)
        except Exception as exc:
            log.exception("rendering metrics failed")
            self._send(500, f"rendering metrics failed: {exc}\n".encode(), "text/plain")
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, content_type, headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # One line per scrape is noise at info level; keep it for debugging.
        log.debug("http request", client=self.client_address[0], request=format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(
    listen: ListenAddress, registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> ThreadingHTTPServer:
    """Bind and start serving on a daemon thread; returns the server (``shutdown()`` stops it)."""
    handler = type(
        "Handler", (_Handler,), {"registry": registry, "is_ready": staticmethod(is_ready)}
    )
    server_class = _Server6 if ":" in listen.host else _Server
    server = server_class((listen.host, listen.port), handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
