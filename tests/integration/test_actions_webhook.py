"""The webhook action against a real HTTP server on 127.0.0.1.

The server records every request and answers as each test scripts it. Signatures are checked
the way a receiver would, with a Standard Webhooks verifier written here independently of
factorflow's signer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import socket
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr
from tests.conftest import CORPUS

from factorflow.actions.webhook import WebhookHandler
from factorflow.domain.actions import ActionRequest, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError, TransientActionError
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

_ACTIVATE = next(
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if b'"user.mfa.factor.activate"' in line
)
FACT = to_fact(_ACTIVATE, org="example.okta.com", received_at="2024-05-01T12:00:00.000000Z")
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
TOLERANCE_SECONDS = 300  # the specification's suggested tolerance for webhook-timestamp


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """What the server got, and the replies it will give (200 once the script runs out)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[Received] = []
        self.replies: deque[tuple[int, dict[str, str], bytes]] = deque()
        self.stall = threading.Event()  # while clear, a reply of status 0 waits
        self.lock = threading.Lock()

    def answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.replies.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, body))


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with receiver.lock:
            receiver.received.append(Received(
                self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, headers, reply = (
                receiver.replies.popleft() if receiver.replies else (200, {}, b"ok"))
        if status == 0:
            receiver.stall.wait(30)
            status = 200
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except OSError:
            pass  # the client gave up (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    server.receiver = Receiver(f"http://{host}:{port}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.receiver  # type: ignore[attr-defined]
    server.receiver.stall.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'factorflow.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlEventStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'factorflow.db'}")
    yield opened
    opened.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0)) as client:
        yield client


def handler_for(store: SqlEventStore, http: httpx.Client) -> WebhookHandler:
    return WebhookHandler(
        store, http, {"crm": SecretStr(SECRET), "other": SecretStr(OTHER_SECRET)}, lambda: NOW
    )


def make_request(target: str, fact: Fact = FACT, **params: Any) -> ActionRequest:
    return ActionRequest("notify-crm", "post", "webhook",
                         {"url": target, "secret": "crm", **params},
                         idempotency_key(fact.uuid, "notify-crm", "post"))


def sends(store: SqlEventStore) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read(
        "SELECT idempotency_key, url, event_uuid, rule_id, action_id, status_code, sent_at "
        "FROM webhook_sends ORDER BY idempotency_key"
    )]


def verify_as_receiver(secret: str, received: Received, now: datetime) -> bool:
    """Standard Webhooks verification, as a receiving service implements it."""
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    if abs(int(now.timestamp()) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
    for candidate in received.headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


# -- success and idempotency ---------------------------------------------------------------


def test_posts_the_signed_fact_once(store: SqlEventStore, receiver: Receiver,
                                    http: httpx.Client) -> None:
    handler = handler_for(store, http)
    request = make_request(receiver.url + "/hooks/mfa?token=abc",
                           summary="alice@example.com enrolled email")
    first = handler.perform(request, FACT)
    second = handler.perform(request, FACT)
    assert first.status is OutcomeStatus.DONE
    assert first.reference == "HTTP 200"
    assert second.status is OutcomeStatus.ALREADY_DONE
    assert second.detail == "already sent at 2024-05-01T12:00:00.000000Z (HTTP 200)"
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got.path == "/hooks/mfa?token=abc"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == request.idempotency_key
    assert got.headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert verify_as_receiver(SECRET, got, NOW)
    assert not verify_as_receiver(OTHER_SECRET, got, NOW)
    assert not verify_as_receiver(SECRET, dataclasses.replace(got, body=got.body + b" "), NOW)
    assert not verify_as_receiver(SECRET, got, NOW + timedelta(hours=1))
    body = orjson.loads(got.body)
    assert body["type"] == "factorflow.enrollment"
    assert body["data"] == FACT.to_dict()
    assert (body["rule_id"], body["action_id"]) == ("notify-crm", "post")
    assert body["params"] == {"summary": "alice@example.com enrolled email"}
    assert SECRET.encode() not in got.body and SECRET not in str(got.headers)
    # The ledger keeps the target without its query string.
    assert sends(store) == [(
        request.idempotency_key, receiver.url + "/hooks/mfa", FACT.uuid, "notify-crm", "post",
        200, "2024-05-01T12:00:00.000000Z",
    )]


def test_a_lost_record_resends_with_the_same_webhook_id(store: SqlEventStore,
                                                        receiver: Receiver,
                                                        http: httpx.Client) -> None:
    """A crash after the POST but before its record: the resend carries the same webhook-id,
    which is what the receiver de-duplicates on."""
    handler = handler_for(store, http)
    request = make_request(receiver.url + "/in")
    handler.perform(request, FACT)
    with store.write() as cur:
        cur.execute("DELETE FROM webhook_sends")
    assert handler.perform(request, FACT).status is OutcomeStatus.DONE
    ids = [got.headers["webhook-id"] for got in receiver.received]
    assert ids == [request.idempotency_key, request.idempotency_key]
    assert all(verify_as_receiver(SECRET, got, NOW) for got in receiver.received)


def test_each_rule_and_event_is_its_own_message(sqlite_store: SqlEventStore,
                                                receiver: Receiver, http: httpx.Client) -> None:
    handler = handler_for(sqlite_store, http)
    other_fact = dataclasses.replace(FACT, uuid="5f1d3c1e-0000-4000-8000-000000000099")
    handler.perform(make_request(receiver.url), FACT)
    handler.perform(make_request(receiver.url, other_fact), other_fact)
    assert len({got.headers["webhook-id"] for got in receiver.received}) == 2
    assert len(sends(sqlite_store)) == 2


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (500, {}, None),
        (502, {}, None),
        (503, {"retry_after": "30"}, 30.0),
        (429, {"retry_after": "7"}, 7.0),
        (429, {"retry_after": format_datetime(NOW + timedelta(seconds=120), usegmt=True)}, 120.0),
        (429, {}, None),
        (408, {}, None),
    ],
)
def test_transient_answers_are_retried_later(
    sqlite_store: SqlEventStore, receiver: Receiver, http: httpx.Client, status: int,
    headers: dict[str, str], retry_after: float | None,
) -> None:
    handler = handler_for(sqlite_store, http)
    request = make_request(receiver.url + "/in")
    receiver.answer(status, b"busy", **headers)
    with pytest.raises(TransientActionError) as caught:
        handler.perform(request, FACT)
    assert caught.value.retry_after == retry_after
    assert str(caught.value) == (
        f"rule notify-crm action post: POST {receiver.url}/in: HTTP {status}: busy")
    assert sends(sqlite_store) == []
    # The retry succeeds, and only then is the send recorded.
    assert handler.perform(request, FACT).status is OutcomeStatus.DONE
    assert len(receiver.received) == 2
    assert [row[5] for row in sends(sqlite_store)] == [200]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_other_answers_are_permanent(sqlite_store: SqlEventStore, receiver: Receiver,
                                     http: httpx.Client, status: int) -> None:
    handler = handler_for(sqlite_store, http)
    receiver.answer(status, b'{"error":\n "no such hook"}', location="http://elsewhere/")
    with pytest.raises(PermanentActionError) as caught:
        handler.perform(make_request(receiver.url + "/in"), FACT)
    assert str(caught.value) == (
        f"rule notify-crm action post: POST {receiver.url}/in: HTTP {status}: "
        '{"error": "no such hook"}')
    assert len(receiver.received) == 1  # a redirect is not followed
    assert sends(sqlite_store) == []


def test_a_refused_connection_is_transient(sqlite_store: SqlEventStore,
                                           http: httpx.Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientActionError) as caught:
        handler_for(sqlite_store, http).perform(make_request(f"http://127.0.0.1:{port}/"), FACT)
    assert str(caught.value).startswith(
        f"rule notify-crm action post: POST http://127.0.0.1:{port}/: ConnectError")
    assert caught.value.retry_after is None
    assert sends(sqlite_store) == []


def test_a_timeout_is_transient(sqlite_store: SqlEventStore, receiver: Receiver) -> None:
    receiver.answer(0)  # the server holds the reply until the test ends
    with httpx.Client(timeout=httpx.Timeout(0.3)) as quick, pytest.raises(
        TransientActionError
    ) as caught:
        handler_for(sqlite_store, quick).perform(make_request(receiver.url), FACT)
    assert str(caught.value) == (
        f"rule notify-crm action post: POST {receiver.url}/: timed out (ReadTimeout)")
    assert len(receiver.received) == 1
    assert sends(sqlite_store) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"secret": "jira"}, "rule notify-crm action post: params.secret 'jira' is not a "
                             "configured webhook secret (configured: crm, other)"),
        ({"secret": None}, "rule notify-crm action post: webhook needs params.secret (a "
                           "non-empty string)"),
        ({"url": "ftp://files.example.com/in"},
         "rule notify-crm action post: params.url must be an http(s) URL"),
        ({"url": "not a url"}, "rule notify-crm action post: params.url must be an http(s) URL"),
        ({"url": ""}, "rule notify-crm action post: webhook needs params.url (a non-empty "
                      "string)"),
    ],
)
def test_configuration_mistakes_are_permanent_and_send_nothing(
    sqlite_store: SqlEventStore, receiver: Receiver, http: httpx.Client,
    params: dict[str, Any], message: str,
) -> None:
    handler = handler_for(sqlite_store, http)
    handler.perform(make_request(receiver.url + "/kept"), FACT)
    other = dataclasses.replace(FACT, uuid="5f1d3c1e-0000-4000-8000-000000000042")
    request = make_request(receiver.url + "/in", other, **params)
    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request, other)
    assert str(caught.value) == message
    assert SECRET not in str(caught.value)
    assert [got.path for got in receiver.received] == ["/kept"]
    assert [row[2] for row in sends(sqlite_store)] == [FACT.uuid]


def test_an_unreachable_ledger_is_transient_and_sends_nothing(receiver: Receiver,
                                                              http: httpx.Client) -> None:
    from factorflow.store.postgres import PostgresEventStore

    store = PostgresEventStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(TransientActionError) as caught:
        handler_for(store, http).perform(make_request(receiver.url), FACT)
    assert str(caught.value) == (
        "rule notify-crm action post: postgres unavailable: OperationalError")
    assert receiver.received == []
    store.close()
