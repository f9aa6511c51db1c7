"""Plumbing the connector tests share.

:func:`serve` runs a test double behind a real HTTP server on 127.0.0.1 (a thread per request):
every request is recorded as a :class:`Got` (in arrival order, before anything answers it) and
handed to the double (a :class:`Double`, served with :func:`serving`), which answers with a
:data:`Reply`. Tests can queue one-off answers
(:meth:`FakeServer.then`), optionally only for one path or method, optionally after letting the
double act on the request (an answer lost on the way back), and answers that never come
(:data:`STALL`: the request waits until the server stops, so the client's own timeout fires).
:func:`unused_port` gives a port where nobody listens. :data:`FACT` is the published
``user.mfa.factor.activate`` as a fact, the event the connector tests act on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlsplit

import orjson

from factorflow.okta.translate import to_fact
from tests.conftest import CORPUS

ACTIVATION: dict[str, Any] = next(
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if b'"user.mfa.factor.activate"' in line
)
FACT = to_fact(ACTIVATION, org="example.okta.com", received_at="2024-05-01T12:00:00.000000Z")

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body
STALL = 0  # a scripted status: no answer at all until the server stops


@dataclass
class Got:
    """One request as the server received it."""

    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def raw_query(self) -> str:
        return urlsplit(self.target).query

    @property
    def query(self) -> dict[str, str]:
        """The last value of each query parameter (blank values kept)."""
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))

    @property
    def query_lists(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def data(self) -> Any:
        """The body as JSON when it is JSON, else the raw bytes (None when empty)."""
        if not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body

    def params(self) -> dict[str, Any]:
        """Arguments wherever the client put them: the query, a JSON or a form body."""
        found: dict[str, Any] = dict(self.query)
        kind = self.headers.get("content-type", "")
        if kind.startswith("application/json"):
            found.update(self.json())
        elif kind.startswith("application/x-www-form-urlencoded"):
            found.update(parse_qsl(self.body.decode()))
        return found


def reply(status: int, body: bytes = b"", **headers: str) -> Reply:
    """A reply; header names may be given with ``_`` for ``-`` (``retry_after="3"``)."""
    return status, header_names(headers), body


def json_reply(status: int, data: Any, *, content_type: str = "application/json",
               **headers: str) -> Reply:
    return status, {"content-type": content_type, **header_names(headers)}, orjson.dumps(data)


def header_names(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in headers.items()}


@dataclass
class Scripted:
    status: int  # STALL: never answer
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # only for requests to this path
    method: str | None = None  # only for requests with this method
    after_effect: bool = False  # the double handles the request first (an answer lost)

    def matches(self, got: Got) -> bool:
        return ((self.path is None or self.path == got.path)
                and (self.method is None or self.method == got.method))


App = TypeVar("App", bound=Callable[[Got], Reply])


class FakeServer(Generic[App]):
    """A threaded HTTP server on 127.0.0.1 in front of ``app``; see the module docstring."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.received: list[Got] = []
        self.scripts: list[Scripted] = []
        self.lock = threading.Lock()
        self.released = threading.Event()  # set when the server stops: stalled requests end
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.fake = self  # type: ignore[attr-defined]
        host, port = self._http.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,),
                                        daemon=True)

    def then(self, status: int, body: Any = b"", *, headers: dict[str, str] | None = None,
             path: str | None = None, method: str | None = None,
             after_effect: bool = False) -> None:
        """Answer the next matching request this way, once (``body``: bytes, or data sent as
        JSON; header names may use ``_`` for ``-``). Scripts are used in the order given."""
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        with self.lock:
            self.scripts.append(
                Scripted(status, raw, header_names(headers or {}), path, method, after_effect))

    def stall(self, *, path: str | None = None, method: str | None = None) -> None:
        """Leave the next matching request unanswered until the server stops."""
        self.then(STALL, path=path, method=method)

    def answer(self, got: Got) -> Reply | None:
        """What the server sends for ``got`` (None: nothing, the request stalled)."""
        with self.lock:
            self.received.append(got)
            scripted = next((s for s in self.scripts if s.matches(got)), None)
            if scripted is not None:
                self.scripts.remove(scripted)
        if scripted is None:
            return self.app(got)
        if scripted.status == STALL:
            self.released.wait(30)
            return None
        if scripted.after_effect:
            self.app(got)
        return scripted.status, scripted.headers, scripted.body

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.released.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def _serve(self) -> None:
        fake: FakeServer[Any] = self.server.fake
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        got = Got(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                  body)
        answer = fake.answer(got)
        if answer is None:
            return
        status, headers, content = answer
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
        except OSError:
            pass  # the client gave up waiting

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(app: App) -> Iterator[FakeServer[App]]:
    server = FakeServer(app)
    server.start()
    try:
        yield server
    finally:
        server.close()


class Double:
    """Base of a test double: it answers requests (``__call__``); the server it is served by
    (:func:`serving`) records them and holds the scripted answers."""

    server: FakeServer[Any]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def received(self) -> list[Got]:
        return self.server.received

    def stall(self, *, path: str | None = None, method: str | None = None) -> None:
        self.server.stall(path=path, method=method)

    def __call__(self, got: Got) -> Reply:
        raise NotImplementedError


D = TypeVar("D", bound=Double)


@contextmanager
def serving(double: D) -> Iterator[D]:
    """``double`` behind a running :class:`FakeServer`, stopped afterwards."""
    with serve(double) as server:
        double.server = server
        yield double


def unused_port() -> int:
    """A port on 127.0.0.1 where nobody listens (a server that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def in_tmp(values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """``values`` with ``{tmp}`` in each text value replaced by ``tmp_path``."""
    return {key: value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value
            for key, value in values.items()}
