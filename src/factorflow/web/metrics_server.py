"""/metrics on a port of its own (``[metrics] port``), beside ``factorflow serve`` or inside
``factorflow worker``: a small threaded HTTP server that answers ``GET /metrics`` from the
process's registry and 404 to anything else. It runs in a daemon thread, so it never delays
the hook endpoint's event loop, and stops with the process."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from factorflow.errors import ConfigError

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not hold up the process's exit


class _IPv6ThreadingServer(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape."""


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._metrics = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"only /metrics is served on this port\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET")])
            return [b"use GET\n"]
        result: Iterable[bytes] = self._metrics(environ, start_response)
        return result

    def start(self) -> MetricsServer:
        """Listen now (ConfigError naming the address if that is impossible), serve in a
        daemon thread."""
        server_class = _IPv6ThreadingServer if ":" in self.host else _ThreadingServer
        try:
            server = make_server(self.host, self.port, self._app, server_class=server_class,
                                 handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self.host}:{self.port}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        self._server = server
        self.port = int(server.server_address[1])  # the port chosen, if 0 was asked for
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="factorflow-metrics", daemon=True)
        self._thread.start()
        log.info("metrics.listening", extra={"fields": {"host": self.host, "port": self.port}})
        return self

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
