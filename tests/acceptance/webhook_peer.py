"""A real HTTP receiver of factorflow's ``webhook`` action, for end-to-end tests.

:class:`WebhookPeer` listens on 127.0.0.1 (a ``ThreadingHTTPServer`` in a thread of the test
process, so it outlives any factorflow process the test kills). It records every request
(headers, body, whether the Standard Webhooks signature is valid) and plays a careful downstream
system: the effect of a message is applied once per ``webhook-id`` and only when the peer
answers 2xx, so a repeated delivery of the same message shows up as a second request but not
as a second effect.

What it answers is scripted: a queue of one-off answers (``then``) in front of a standing
answer (``answer``), e.g. ``peer.then(500).then(429, retry_after="1")`` before 204.
``hold_next`` makes the next request wait (the worker is then inside its webhook step) until
the test releases it.

The signature is checked here from the spec, independently of factorflow's code:
``v1,<base64 HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}">`` keyed with the
base64-decoded part of the ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None = None
    body: bytes = b""


@dataclass
class Received:
    """One request as the peer saw it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    signature_valid: bool
    status: int  # what the peer answered (or was about to answer)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Hold:
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    used: bool = False
    request: Received | None = None  # the request that was held


def signature_is_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check ``webhook-signature`` against every ``v1,`` entry, per the Standard Webhooks spec."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures or not timestamp.isdigit():
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender killed mid-connection resets it; that is the test's doing, not a fault.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class WebhookPeer:
    def __init__(self, secret: str, *, answer: int = 204) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._standing = Answer(answer)
        self._script: list[Answer] = []
        self._hold: Hold | None = None
        self.requests: list[Received] = []
        # webhook-id -> 1 once its effect was applied: a repeat of a message adds nothing, a
        # repeat under a new id would show up as another effect.
        self.effects: Counter[str] = Counter()
        self._server = _Server((HOST, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="webhook-peer")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> WebhookPeer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._hold is not None:
            self._hold.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> WebhookPeer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_port}/hooks/factorflow"

    # -- what it answers -------------------------------------------------------------------

    def answer(self, status: int, *, retry_after: str | None = None, body: bytes = b"") -> None:
        """The standing answer, once the one-off answers are used up."""
        with self._lock:
            self._standing = Answer(status, retry_after, body)

    def then(self, status: int, *, retry_after: str | None = None,
             body: bytes = b"") -> WebhookPeer:
        """Queue a one-off answer for the next request not yet answered by the queue."""
        with self._lock:
            self._script.append(Answer(status, retry_after, body))
        return self

    def hold_next(self) -> Hold:
        """The next request waits before it is answered until ``release`` is set (bounded)."""
        hold = Hold()
        with self._lock:
            self._hold = hold
        return hold

    # -- what it saw -----------------------------------------------------------------------

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def ids(self) -> Counter[str]:
        """Requests per webhook-id."""
        with self._lock:
            return Counter(r.webhook_id for r in self.requests)

    def effect_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.effects)

    # -- serving ---------------------------------------------------------------------------

    def _next_answer(self) -> tuple[Answer, Hold | None]:
        with self._lock:
            answer = self._script.pop(0) if self._script else self._standing
            hold = self._hold if self._hold is not None and not self._hold.used else None
            if hold is not None:
                hold.used = True
            return answer, hold

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
            if 200 <= received.status < 300 and received.webhook_id:
                # A careful receiver: one effect per message id, however often it comes.
                self.effects[received.webhook_id] = 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer, hold = peer._next_answer()
                received = Received(
                    path=self.path, headers=headers, body=body,
                    signature_valid=signature_is_valid(peer.secret, headers, body),
                    status=answer.status,
                )
                # Recorded (and its effect applied) before answering, as a downstream system
                # that commits its work and then replies.
                peer._record(received)
                if hold is not None:
                    hold.request = received
                    hold.arrived.set()
                    hold.release.wait(60)
                try:
                    self.send_response(answer.status)
                    if answer.retry_after is not None:
                        self.send_header("Retry-After", answer.retry_after)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    self.wfile.flush()
                except OSError:
                    pass  # the sender is gone (killed while it waited for this answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
