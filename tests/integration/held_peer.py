"""A downstream HTTP system that can hang: while the gate is closed every request waits (up to
a bound) before it is answered, and the peer counts how many wait at once. With the gate open
it answers at once with its standing status. For tests of what a slow connector does to the
workflow worker."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a held request closed its connection: expected here."""


class HeldPeer:
    def __init__(self, *, status: int = 204, hold_limit_seconds: float = 120.0) -> None:
        self.status = status
        self.hold_limit_seconds = hold_limit_seconds
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0
        self.paths: list[str] = []
        self._server = _Server((HOST, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="held-peer")

    def __enter__(self) -> HeldPeer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._open.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self._server.server_port}{path}"

    def close_gate(self) -> None:
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    def wait_for_in_flight(self, count: int, timeout: float) -> bool:
        """True once ``count`` requests wait at the closed gate at the same time."""
        with self._changed:
            return self._changed.wait_for(lambda: self.in_flight >= count, timeout)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with peer._changed:
                    peer.in_flight += 1
                    peer.max_in_flight = max(peer.max_in_flight, peer.in_flight)
                    peer.paths.append(self.path)
                    peer._changed.notify_all()
                try:
                    peer._open.wait(peer.hold_limit_seconds)
                finally:
                    with peer._changed:
                        peer.in_flight -= 1
                        peer.answered += 1
                        peer._changed.notify_all()
                self.send_response(peer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
