"""The hook endpoint over ASGI, with the real app and a real store.

Every refused request is checked three ways: its status, its message, and that what was stored
before it is still there, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sqlite3
import uuid as uuidlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from tests.conftest import PG_URL, SECRET, make_settings

from factorflow.bootstrap import build_app
from factorflow.settings import Settings
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

HOOK = "/hooks/okta"
SOURCE = "https://example.okta.com/api/v1/eventHooks/whoExampleHook0000001"
UNAUTHORIZED = {"error": "unauthorized", "message": "authentication required"}


# -- building deliveries -----------------------------------------------------------------------


def okta_event(uuid: str | None = None, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "uuid": uuid or str(uuidlib.uuid4()),
        "published": "2026-03-15T10:22:14.000Z",
        "eventType": "user.mfa.factor.activate",
        "version": "0",
        "severity": "INFO",
        "displayMessage": "Activate factor or authenticator enrollment method for user",
        "actor": {"id": "00u1exampleUser0001", "type": "User",
                  "alternateId": "pat.lee@example.com", "displayName": "Pat Lee"},
        "outcome": {"result": "SUCCESS", "reason": None},
        "target": [{"id": "pfd1", "type": "AuthenticatorEnrollment",
                    "displayName": "Okta Verify", "detailEntry": {"methodTypeUsed": "PUSH"}}],
    }
    event.update(overrides)
    return event


def delivery(events: list[Any], delivery_id: str | None = None) -> bytes:
    return orjson.dumps({
        "eventType": "com.okta.event_hook",
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": SOURCE,
        "eventId": delivery_id or str(uuidlib.uuid4()),
        "eventTime": "2026-03-15T10:22:15.120Z",
        "contentType": "application/json",
        "data": {"events": events},
    })


def result_header(response: httpx.Response) -> str:
    return response.headers["factorflow-result"]


# -- looking at the store ----------------------------------------------------------------------


def store_of(client: TestClient) -> SqlEventStore:
    store: SqlEventStore = client.app.store  # type: ignore[attr-defined]
    return store


def snapshot(store: SqlEventStore) -> dict[str, Any]:
    """Everything the store holds, in a comparable form (raw bytes included)."""
    return {
        "counts": store.counts(),
        "events": sorted(
            (e.uuid, e.raw, e.event_type, e.published, e.delivery_id, e.received_at, e.seq)
            for e in store.recent_events(100_000)
        ),
        "ledger": store.ledger(100_000),
        "quarantine": store.quarantine(100_000),
    }


def stored_raw(store: SqlEventStore, uuid: str) -> Any:
    event = store.get_event(uuid)
    assert event is not None, f"{uuid} is not stored"
    return orjson.loads(event.raw)


def metric(client: TestClient, name: str, **labels: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code
    assert message in body["message"], body["message"]
    assert "factorflow-result" not in response.headers


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def baseline(client: TestClient, auth: dict[str, str]) -> dict[str, Any]:
    """Two stored events and one quarantined one; returns the store's state afterwards."""
    events = [okta_event("base-1"), okta_event("base-2", eventType="user.session.start"),
              okta_event("base-bad", published="2022-06-22 18:18:29.015")]
    response = client.post(HOOK, content=delivery(events, "base-delivery"), headers=auth)
    assert response.status_code == 204
    assert result_header(response) == "new=2 duplicate=0 quarantined=1"
    state = snapshot(store_of(client))
    assert state["counts"] == {"events": 2, "deliveries": 1, "quarantined": 1}
    return state


# -- verification GET --------------------------------------------------------------------------


def test_verification_echoes_the_challenge_as_json(
    client: TestClient, auth: dict[str, str]
) -> None:
    challenge = "Mv3mMlxt5UMKPeRZ_qG2FY-9fvJdC1lTnjBqxG5IYVw"
    response = client.get(
        HOOK, headers={"Authorization": SECRET, "X-Okta-Verification-Challenge": challenge}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"verification": challenge}
    assert metric(client, "factorflow_verifications_total", org="default") == 1.0


def test_verification_at_a_trailing_slash_path_is_answered(client: TestClient) -> None:
    response = client.get(
        HOOK + "/", headers={"Authorization": SECRET, "X-Okta-Verification-Challenge": "abc"}
    )
    assert response.status_code == 200
    assert response.json() == {"verification": "abc"}


@pytest.mark.parametrize("challenge", [None, ""])
def test_verification_without_a_challenge_is_a_clear_400(
    client: TestClient, baseline: dict[str, Any], challenge: str | None
) -> None:
    headers = {"Authorization": SECRET}
    if challenge is not None:
        headers["X-Okta-Verification-Challenge"] = challenge
    response = client.get(HOOK, headers=headers)
    assert_error(response, 400, "missing_challenge", "X-Okta-Verification-Challenge header")
    assert "deliveries are POSTs" in response.json()["message"]
    assert snapshot(store_of(client)) == baseline


def test_an_overlong_challenge_is_refused(client: TestClient) -> None:
    response = client.get(
        HOOK, headers={"Authorization": SECRET, "X-Okta-Verification-Challenge": "c" * 1025}
    )
    assert_error(response, 400, "bad_challenge", "verification challenge too long")
    ok = client.get(
        HOOK, headers={"Authorization": SECRET, "X-Okta-Verification-Challenge": "c" * 1024}
    )
    assert ok.json() == {"verification": "c" * 1024}


@pytest.mark.parametrize("credential", [None, "Basic d3Jvbmc6d3Jvbmc=", "", SECRET + " "])
def test_verification_needs_the_credential(
    client: TestClient, baseline: dict[str, Any], credential: str | None
) -> None:
    headers = {"X-Okta-Verification-Challenge": "echo-me-not"}
    if credential is not None:
        headers["Authorization"] = credential
    response = client.get(HOOK, headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert "echo-me-not" not in response.text
    assert metric(client, "factorflow_verifications_total", org="default") == 0.0
    assert snapshot(store_of(client)) == baseline


# -- credentials on POST -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "Authorization": "Basic d3Jvbmc6d3Jvbmc="},
        {"Content-Type": "application/json", "Authorization": ""},
        {"Content-Type": "application/json", "Authorization": SECRET.lower()},
        {"Content-Type": "application/json", "Authorization": SECRET[:-1]},
        {"Content-Type": "application/json", "Authorization": SECRET + "x"},
        {"Content-Type": "application/json", "X-Okta-Secret": SECRET},
        # the credential is checked before anything else about the request
        {"Content-Type": "text/plain"},
    ],
    ids=["missing", "wrong", "empty", "case-changed", "truncated", "extended",
         "other-header", "before-content-type"],
)
def test_a_delivery_without_the_right_credential_is_refused(
    client: TestClient, baseline: dict[str, Any], headers: dict[str, str]
) -> None:
    before = metric(client, "factorflow_requests_rejected_total", org="default", reason="auth")
    response = client.post(HOOK, content=delivery([okta_event("sneaky")]), headers=headers)

    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert SECRET not in response.text
    assert "factorflow-result" not in response.headers
    assert store_of(client).get_event("sneaky") is None
    assert snapshot(store_of(client)) == baseline
    after = metric(client, "factorflow_requests_rejected_total", org="default", reason="auth")
    assert after == before + 1


def test_an_oversized_unauthenticated_body_is_a_401_not_a_413(
    client: TestClient, baseline: dict[str, Any]
) -> None:
    response = client.post(
        HOOK, content=b"x" * 2_000_000, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert snapshot(store_of(client)) == baseline


def test_the_auth_rejection_counter_counts_every_refusal(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert metric(client, "factorflow_requests_rejected_total", reason="auth") == 0.0
    for _ in range(3):
        client.post(HOOK, content=delivery([okta_event()]),
                    headers={"Content-Type": "application/json"})
    client.get(HOOK, headers={"X-Okta-Verification-Challenge": "x"})
    assert metric(client, "factorflow_requests_rejected_total", org="default",
                  reason="auth") == 4.0
    assert store_of(client).counts()["events"] == 0
    # an accepted delivery does not move it
    assert client.post(HOOK, content=delivery([okta_event()]), headers=auth).status_code == 204
    assert metric(client, "factorflow_requests_rejected_total", reason="auth") == 4.0


def test_during_a_rotation_the_current_and_the_previous_secret_are_accepted(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, hook={"secret": "new-secret", "previous_secret": SECRET})
    with running(settings) as client:
        for number, value in enumerate(("new-secret", SECRET)):
            response = client.post(
                HOOK, content=delivery([okta_event(f"rotated-{number}")]),
                headers={"Authorization": value, "Content-Type": "application/json"},
            )
            assert response.status_code == 204
            assert result_header(response) == "new=1 duplicate=0 quarantined=0"
        before = snapshot(store_of(client))
        for value in ("third-secret", "new-secret" + SECRET, "new-secret,"  + SECRET):
            response = client.post(
                HOOK, content=delivery([okta_event("rotated-x")]),
                headers={"Authorization": value, "Content-Type": "application/json"},
            )
            assert response.status_code == 401
            assert response.json() == UNAUTHORIZED
        assert snapshot(store_of(client)) == before
        assert before["counts"]["events"] == 2
        verified = client.get(
            HOOK, headers={"Authorization": SECRET, "X-Okta-Verification-Challenge": "v"}
        )
        assert verified.json() == {"verification": "v"}


def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "okta-hook-secret"
    secret_file.write_text("from-a-file-3b9d\n", encoding="utf-8")
    settings = make_settings(tmp_path / "data",
                             hook={"secret": None, "secret_file": secret_file})
    with running(settings) as client:
        accepted = client.post(
            HOOK, content=delivery([okta_event("via-file")]),
            headers={"Authorization": "from-a-file-3b9d", "Content-Type": "application/json"},
        )
        assert accepted.status_code == 204
        refused = client.post(HOOK, content=delivery([okta_event("via-default")]),
                              headers={"Authorization": SECRET,
                                       "Content-Type": "application/json"})
        assert refused.status_code == 401
        assert refused.json() == UNAUTHORIZED
        assert store_of(client).get_event("via-file") is not None
        assert store_of(client).counts()["events"] == 1


def test_a_custom_credential_header_is_used_instead_of_authorization(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, hook={"auth_header": "X-Okta-Secret"})
    with running(settings) as client:
        for name in ("X-Okta-Secret", "x-okta-secret"):
            response = client.post(
                HOOK, content=delivery([okta_event(f"custom-{name}")]),
                headers={name: SECRET, "Content-Type": "application/json"},
            )
            assert response.status_code == 204
        before = snapshot(store_of(client))
        refused = client.post(HOOK, content=delivery([okta_event("custom-auth")]),
                              headers={"Authorization": SECRET,
                                       "Content-Type": "application/json"})
        assert refused.status_code == 401
        assert refused.json() == UNAUTHORIZED
        assert snapshot(store_of(client)) == before
        assert before["counts"]["events"] == 2
        assert client.get(HOOK, headers={"X-Okta-Secret": SECRET,
                                         "X-Okta-Verification-Challenge": "ok"}).status_code == 200


# -- what a delivery must look like ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, "none"),
        ("text/plain", "text/plain"),
        ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
        ("application/jsonl", "application/jsonl"),
        ("application/cloudevents+json", "application/cloudevents+json"),
        ("", "none"),
    ],
)
def test_a_delivery_that_is_not_declared_json_is_a_415(
    client: TestClient, baseline: dict[str, Any], content_type: str | None, shown: str
) -> None:
    headers = {"Authorization": SECRET}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.post(HOOK, content=delivery([okta_event("typed")]), headers=headers)
    assert_error(response, 415, "unsupported_media_type",
                 f"Content-Type must be application/json (got {shown})")
    assert snapshot(store_of(client)) == baseline
    assert metric(client, "factorflow_requests_rejected_total",
                  reason="unsupported_media_type") == 1.0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON",
     " application/json ;charset=UTF-8"],
)
def test_json_content_types_with_parameters_are_accepted(
    client: TestClient, content_type: str
) -> None:
    response = client.post(HOOK, content=delivery([okta_event("typed-ok")]),
                           headers={"Authorization": SECRET, "Content-Type": content_type})
    assert response.status_code == 204
    assert store_of(client).get_event("typed-ok") is not None


@pytest.mark.parametrize(("encoding", "shown"), [("gzip", "gzip"), (" Deflate ", "deflate"),
                                                 ("gzip, br", "gzip, br")])
def test_a_compressed_delivery_is_a_415_that_names_the_coding(
    client: TestClient, baseline: dict[str, Any], encoding: str, shown: str
) -> None:
    body = gzip.compress(delivery([okta_event("squeezed")]))
    response = client.post(HOOK, content=body, headers={
        "Authorization": SECRET, "Content-Type": "application/json", "Content-Encoding": encoding,
    })
    assert_error(response, 415, "unsupported_encoding",
                 f"Content-Encoding {shown} is not supported: send the JSON uncompressed")
    assert snapshot(store_of(client)) == baseline
    assert metric(client, "factorflow_requests_rejected_total",
                  reason="unsupported_encoding") == 1.0


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", ""])
def test_an_identity_content_coding_is_accepted(client: TestClient, encoding: str) -> None:
    response = client.post(HOOK, content=delivery([okta_event("plain")]), headers={
        "Authorization": SECRET, "Content-Type": "application/json", "Content-Encoding": encoding,
    })
    assert response.status_code == 204
    assert store_of(client).get_event("plain") is not None


@pytest.fixture
def small_client(tmp_path: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, hook={"max_body_bytes": 2048})) as test_client:
        yield test_client


def padded(events: list[Any], size: int) -> bytes:
    """A delivery of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = delivery(events, "padded")
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_a_body_over_the_limit_with_content_length_is_a_413(
    small_client: TestClient, auth: dict[str, str]
) -> None:
    assert small_client.post(HOOK, content=delivery([okta_event("small")]),
                             headers=auth).status_code == 204
    before = snapshot(store_of(small_client))

    response = small_client.post(HOOK, content=padded([okta_event("big")], 2049), headers=auth)
    assert_error(response, 413, "too_large", "body of 2049 bytes exceeds the limit of 2048")
    assert snapshot(store_of(small_client)) == before
    assert metric(small_client, "factorflow_requests_rejected_total", reason="too_large") == 1.0

    at_limit = small_client.post(HOOK, content=padded([okta_event("exact")], 2048), headers=auth)
    assert at_limit.status_code == 204
    assert store_of(small_client).get_event("exact") is not None


def test_a_streamed_body_over_the_limit_is_a_413(
    small_client: TestClient, auth: dict[str, str]
) -> None:
    assert small_client.post(HOOK, content=delivery([okta_event("small")]),
                             headers=auth).status_code == 204
    before = snapshot(store_of(small_client))
    body = padded([okta_event("streamed-big")], 5000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    response = small_client.post(HOOK, content=chunks(), headers=auth)
    assert_error(response, 413, "too_large", "body exceeds the limit of 2048 bytes")
    assert snapshot(store_of(small_client)) == before

    fitting = padded([okta_event("streamed-ok")], 2000)
    response = small_client.post(HOOK, content=iter([fitting[:700], fitting[700:]]), headers=auth)
    assert response.status_code == 204
    assert store_of(small_client).get_event("streamed-ok") is not None


async def _call_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """Drive the app with a body in several ``http.request`` messages, as a server does for a
    chunked upload; returns status, headers, body and how many chunks were never read."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": HOOK, "raw_path": HOOK.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, len(pending)


CHUNKED_HEADERS = [
    (b"authorization", SECRET.encode()), (b"content-type", b"application/json"),
    (b"transfer-encoding", b"chunked"),
]


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(
    small_client: TestClient,
) -> None:
    assert small_client.portal is not None
    body = padded([okta_event("chunked-big")], 20_000)
    chunks = [body[start:start + 1000] for start in range(0, len(body), 1000)]
    status, headers, answer, unread = small_client.portal.call(
        _call_asgi, small_client.app, CHUNKED_HEADERS, chunks
    )
    assert status == 413
    assert orjson.loads(answer) == {
        "error": "too_large", "message": "body exceeds the limit of 2048 bytes"
    }
    assert headers[b"content-type"] == b"application/json"
    assert unread == len(chunks) - 3  # read 3 000 bytes, then stopped
    assert store_of(small_client).counts() == {"events": 0, "deliveries": 0, "quarantined": 0}


def test_a_chunked_delivery_within_the_limit_is_stored(small_client: TestClient) -> None:
    assert small_client.portal is not None
    body = delivery([okta_event("chunked-ok")])
    chunks = [body[start:start + 100] for start in range(0, len(body), 100)]
    status, headers, _, unread = small_client.portal.call(
        _call_asgi, small_client.app, CHUNKED_HEADERS, chunks
    )
    assert status == 204
    assert headers[b"factorflow-result"] == b"new=1 duplicate=0 quarantined=0"
    assert unread == 0
    assert store_of(small_client).get_event("chunked-ok") is not None


def test_a_client_that_goes_away_mid_body_stores_nothing(small_client: TestClient) -> None:
    assert small_client.portal is not None
    body = delivery([okta_event("abandoned")])

    async def abandon() -> int:
        messages = [{"type": "http.request", "body": body[:50], "more_body": True},
                    {"type": "http.disconnect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": HOOK, "headers": CHUNKED_HEADERS,
                 "client": ("127.0.0.1", 50000), "query_string": b""}
        await small_client.app(scope, receive, send)
        return int(next(m for m in sent if m["type"] == "http.response.start")["status"])

    assert small_client.portal.call(abandon) == 400
    assert store_of(small_client).counts() == {"events": 0, "deliveries": 0, "quarantined": 0}


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"", "invalid_json", "body is not valid JSON"),
        (b"{'eventType': 'com.okta.event_hook'}", "invalid_json", "body is not valid JSON"),
        (b'{"eventType": "com.okta.event_hook", "data": {"events": [\xff]}}', "invalid_json",
         "body is not valid JSON"),
        (b'{"eventType": "com.okta.event_hook", "data": {"events": ["caf\xe9"]}}',
         "invalid_json", "body is not valid JSON"),
        (b"[]", "not_envelope", "body is JSON but not an object: expected an Okta event hook"),
        (b'"hello"', "not_envelope", "body is JSON but not an object"),
        (b'{"eventType": "user.mfa.factor.activate", "uuid": "lone"}', "not_envelope",
         "not an Okta event hook delivery: eventType is 'user.mfa.factor.activate', "
         "expected 'com.okta.event_hook'"),
        (b'{"eventType": "com.okta.event_hook"}', "not_envelope",
         "not an Okta event hook delivery: data.events must be an array"),
        (b'{"eventType": "com.okta.event_hook", "data": {"events": {"uuid": "x"}}}',
         "not_envelope", "data.events must be an array"),
    ],
    ids=["empty", "single-quotes", "bad-byte", "latin-1", "array", "string",
         "bare-event", "no-data", "events-object"],
)
def test_a_body_that_is_no_delivery_is_a_400(
    client: TestClient, auth: dict[str, str], baseline: dict[str, Any],
    body: bytes, code: str, message: str,
) -> None:
    response = client.post(HOOK, content=body, headers=auth)
    assert_error(response, 400, code, message)
    assert snapshot(store_of(client)) == baseline
    assert metric(client, "factorflow_requests_rejected_total", reason=code) == 1.0


def test_a_content_length_that_is_no_number_is_a_400(
    client: TestClient, auth: dict[str, str], baseline: dict[str, Any]
) -> None:
    response = client.post(HOOK, content=delivery([okta_event("lengthy")]),
                           headers={**auth, "Content-Length": "lots"})
    assert_error(response, 400, "bad_length", "Content-Length is not a number")
    assert snapshot(store_of(client)) == baseline


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD"])
def test_other_methods_are_a_405_with_allow(
    client: TestClient, auth: dict[str, str], baseline: dict[str, Any], method: str
) -> None:
    response = client.request(method, HOOK, content=delivery([okta_event("put")]), headers=auth)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    if method != "HEAD":
        assert response.json() == {"error": "method_not_allowed", "message": "use GET or POST"}
    assert snapshot(store_of(client)) == baseline
    # refused before the credential is even looked at
    anonymous = client.request(method, HOOK)
    assert anonymous.status_code == 405
    assert metric(client, "factorflow_requests_rejected_total", reason="method") == 2.0


def test_health_and_metrics_stay_outside_the_hook(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert client.get("/hooks/other").status_code == 404


# -- storing -----------------------------------------------------------------------------------


def test_valid_events_are_stored_and_invalid_ones_quarantined_with_reasons(
    client: TestClient, auth: dict[str, str]
) -> None:
    good_one = okta_event("good-1", client={"ipChain": [{"ip": "198.51.100.23"}]})
    good_two = okta_event("good-2", version=0, request={"ipChain": []}, futureKey={"x": None})
    events = [
        good_one,
        okta_event("siem-1", published="2022-06-22 18:18:29.015"),
        "not an event",
        okta_event("redacted", published="redacted"),
        good_two,
        {key: value for key, value in okta_event().items() if key != "uuid"},
        okta_event("no-type", eventType=None),
    ]
    response = client.post(HOOK, content=delivery(events, "mixed-delivery"), headers=auth)

    assert response.status_code == 204
    assert response.content == b""
    assert result_header(response) == "new=2 duplicate=0 quarantined=5"
    store = store_of(client)
    assert store.counts() == {"events": 2, "deliveries": 1, "quarantined": 5}
    assert stored_raw(store, "good-1") == good_one
    assert stored_raw(store, "good-2") == good_two
    stored = store.get_event("good-1")
    assert stored is not None
    assert (stored.delivery_id, stored.hook_id, stored.org, stored.provenance) == (
        "mixed-delivery", "whoExampleHook0000001", "default", "hook"
    )
    assert stored.event_type == "user.mfa.factor.activate"
    assert stored.published == "2026-03-15T10:22:14.000Z"

    entries = sorted(store.quarantine(), key=lambda entry: entry.id)
    assert [(e.reason_code, e.uuid) for e in entries] == [
        ("bad_published", "siem-1"), ("not_object", None), ("bad_published", "redacted"),
        ("missing_uuid", None), ("missing_eventType", "no-type"),
    ]
    assert entries[0].reason.startswith("events[1]: published '2022-06-22 18:18:29.015'")
    assert entries[1].reason == "events[2] is str, not an object"
    assert entries[3].reason == "events[5]: event has no uuid"
    assert entries[4].reason == "events[6]: event has no eventType"
    assert all(e.delivery_id == "mixed-delivery" for e in entries)
    assert all(e.hook_id == "whoExampleHook0000001" for e in entries)
    assert orjson.loads(entries[0].raw) == events[1]
    assert orjson.loads(entries[1].raw) == "not an event"
    assert orjson.loads(entries[3].raw) == events[5]

    (ledger,) = store.ledger()
    assert (ledger.delivery_id, ledger.hook_id, ledger.org) == (
        "mixed-delivery", "whoExampleHook0000001", "default"
    )
    assert (ledger.events_total, ledger.events_new, ledger.events_duplicate,
            ledger.events_quarantined) == (7, 2, 0, 5)
    assert metric(client, "factorflow_events_received_total", result="new") == 2.0
    assert metric(client, "factorflow_events_received_total", result="quarantined") == 5.0
    assert metric(client, "factorflow_deliveries_total", org="default") == 1.0


def test_an_event_nested_too_deep_to_rewrite_is_quarantined_and_its_neighbour_stored(
    client: TestClient, auth: dict[str, str]
) -> None:
    """orjson reads 1,024 levels but writes 254: such an event used to crash the parse (503,
    again on Okta's retry). It is quarantined with its JSON; its neighbour is stored."""
    deep = okta_event("too-deep")
    deep["debugContext"] = {"debugData": {"nest": json.loads("[" * 300 + "]" * 300)}}
    good = okta_event("beside-the-deep-one")
    # Written by the standard library: orjson would refuse it here as well.
    document = orjson.loads(delivery([good], "deep-delivery"))
    document["data"]["events"].append(deep)
    response = client.post(HOOK, content=json.dumps(document).encode(), headers=auth)

    assert response.status_code == 204
    assert result_header(response) == "new=1 duplicate=0 quarantined=1"
    store = store_of(client)
    assert stored_raw(store, "beside-the-deep-one") == good
    assert store.get_event("too-deep") is None
    (entry,) = store.quarantine()
    assert (entry.reason_code, entry.uuid, entry.delivery_id) == (
        "too_deep", "too-deep", "deep-delivery")
    assert entry.reason == "events[1] nests arrays or objects deeper than 254 levels"
    assert json.loads(entry.raw) == deep


def test_a_redelivery_stores_nothing_new_and_is_recorded_as_duplicates(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = delivery([okta_event("again-1"), okta_event("again-2")], "same-delivery")
    first = client.post(HOOK, content=body, headers=auth)
    assert result_header(first) == "new=2 duplicate=0 quarantined=0"
    store = store_of(client)
    before = snapshot(store)

    second = client.post(HOOK, content=body, headers=auth)
    assert second.status_code == 204
    assert result_header(second) == "new=0 duplicate=2 quarantined=0"
    after = snapshot(store)
    assert after["events"] == before["events"]
    assert after["quarantine"] == before["quarantine"] == []
    assert after["counts"] == {"events": 2, "deliveries": 2, "quarantined": 0}
    newest = after["ledger"][0]
    assert (newest.delivery_id, newest.events_total, newest.events_new,
            newest.events_duplicate, newest.events_quarantined) == ("same-delivery", 2, 0, 2, 0)
    assert metric(client, "factorflow_events_received_total", result="duplicate") == 2.0


def test_the_same_event_with_its_keys_in_another_order_is_a_duplicate(
    client: TestClient, auth: dict[str, str]
) -> None:
    event = okta_event("reordered")
    client.post(HOOK, content=delivery([event]), headers=auth)
    reordered = {key: event[key] for key in reversed(list(event))}
    response = client.post(HOOK, content=delivery([reordered]), headers=auth)
    assert result_header(response) == "new=0 duplicate=1 quarantined=0"
    assert list(stored_raw(store_of(client), "reordered")) == list(event)


def test_a_different_event_under_a_stored_uuid_is_quarantined_and_the_original_kept(
    client: TestClient, auth: dict[str, str]
) -> None:
    original = okta_event("taken-uuid")
    client.post(HOOK, content=delivery([original], "first"), headers=auth)
    store = store_of(client)
    original_bytes = store.get_event("taken-uuid")
    assert original_bytes is not None

    impostor = okta_event("taken-uuid", eventType="user.mfa.factor.deactivate")
    response = client.post(HOOK, content=delivery([impostor, okta_event("fresh")], "second"),
                           headers=auth)
    assert response.status_code == 204
    assert result_header(response) == "new=1 duplicate=0 quarantined=1"

    assert store.get_event("taken-uuid") == original_bytes
    assert stored_raw(store, "taken-uuid") == original
    (entry,) = store.quarantine()
    assert (entry.reason_code, entry.uuid, entry.delivery_id) == (
        "uuid_conflict", "taken-uuid", "second"
    )
    assert "uuid taken-uuid is already stored with different content" in entry.reason
    assert orjson.loads(entry.raw) == impostor
    newest = store.ledger()[0]
    assert (newest.events_new, newest.events_duplicate, newest.events_quarantined) == (1, 0, 1)


def test_two_different_events_with_one_uuid_in_one_delivery(
    client: TestClient, auth: dict[str, str]
) -> None:
    first = okta_event("twice")
    second = okta_event("twice", displayMessage="something else")
    response = client.post(HOOK, content=delivery([first, second, first]), headers=auth)
    assert result_header(response) == "new=1 duplicate=1 quarantined=1"
    store = store_of(client)
    assert stored_raw(store, "twice") == first
    (entry,) = store.quarantine()
    assert entry.reason_code == "uuid_conflict"
    assert orjson.loads(entry.raw) == second


def test_unicode_and_odd_values_are_stored_as_received(
    client: TestClient, auth: dict[str, str]
) -> None:
    event = okta_event(
        "unicode", displayMessage="Zo\u00eb \u2713 \U0001f510", client={"zone": "None"},
        debugContext={"debugData": {"big": 18446744073709551615, "neg": -1.5e-7}},
    )
    assert client.post(HOOK, content=delivery([event]), headers=auth).status_code == 204
    assert stored_raw(store_of(client), "unicode") == event


# -- when the store fails ----------------------------------------------------------------------


def test_a_failing_sqlite_store_answers_503_and_a_retry_succeeds(
    client: TestClient, auth: dict[str, str], baseline: dict[str, Any], settings: Settings
) -> None:
    """The ledger table disappears under the running receiver (a manual migration or restore
    gone wrong): the events of the delivery were already inserted in the transaction, so this
    also shows that a failed commit leaves nothing of the delivery behind."""
    database = settings.data_dir / "factorflow.db"
    assert database.exists()
    body = delivery([okta_event("during-outage-1"), okta_event("during-outage-2"),
                     okta_event("outage-bad", published="yesterday")], "outage-delivery")

    operator = sqlite3.connect(database, isolation_level=None, timeout=2)
    try:
        operator.execute("ALTER TABLE deliveries RENAME TO deliveries_moved_away")
        for _ in range(2):
            response = client.post(HOOK, content=body, headers=auth)
            assert_error(response, 503, "store_unavailable",
                         "events could not be stored; retry later")
            assert response.headers["retry-after"] == "1"
            # the failed transaction was rolled back: the database is not left locked
            operator.execute("BEGIN IMMEDIATE")
            operator.execute("ROLLBACK")
        assert metric(client, "factorflow_requests_rejected_total",
                      reason="store_unavailable") == 2.0
    finally:
        operator.execute("ALTER TABLE deliveries_moved_away RENAME TO deliveries")
        operator.close()

    store = store_of(client)
    assert snapshot(store) == baseline  # nothing of the failed delivery, nothing lost
    assert store.get_event("during-outage-1") is None

    retry = client.post(HOOK, content=body, headers=auth)
    assert retry.status_code == 204
    assert result_header(retry) == "new=2 duplicate=0 quarantined=1"
    assert store.counts() == {"events": 4, "deliveries": 2, "quarantined": 2}
    assert stored_raw(store, "during-outage-1")["uuid"] == "during-outage-1"
    after = snapshot(store)
    assert set(baseline["events"]) <= set(after["events"])


@pytest.mark.postgres
def test_a_postgres_store_that_stops_accepting_connections_answers_503(
    tmp_path: Path, pg_url: str, auth: dict[str, str]
) -> None:
    database = pg_url.rpartition("/")[2]
    settings = make_settings(tmp_path, store={"url": pg_url})
    with running(settings) as client, psycopg.connect(PG_URL, autocommit=True) as admin:
        first = delivery([okta_event("pg-1"), okta_event("pg-2")], "pg-first")
        assert client.post(HOOK, content=first, headers=auth).status_code == 204
        before = snapshot(store_of(client))
        body = delivery([okta_event("pg-outage")], "pg-outage")
        try:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,),
            )
            # the open connection was cut, then no new one is allowed
            for _ in range(2):
                response = client.post(HOOK, content=body, headers=auth)
                assert_error(response, 503, "store_unavailable",
                             "events could not be stored; retry later")
                assert response.headers["retry-after"] == "1"
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

        retry = client.post(HOOK, content=body, headers=auth)
        assert retry.status_code == 204
        assert result_header(retry) == "new=1 duplicate=0 quarantined=0"

        check = open_store(pg_url, migrate=False)
        try:
            after = snapshot(check)
            assert after["counts"] == {"events": 3, "deliveries": 2, "quarantined": 0}
            assert set(before["events"]) <= set(after["events"])
            assert before["ledger"][0] in after["ledger"]
            assert stored_raw(check, "pg-outage")["uuid"] == "pg-outage"
        finally:
            check.close()


# -- concurrency -------------------------------------------------------------------------------


def _overlapping_deliveries(count: int, per_delivery: int, pool: int) -> tuple[list[bytes], int]:
    """``count`` deliveries whose events are drawn from ``pool`` uuids; each uuid always comes
    with the same content, so a repeat is a duplicate. Returns the bodies and the distinct uuids
    they hold."""
    events = {n: okta_event(f"concurrent-{n:03d}") for n in range(pool)}
    bodies = []
    used: set[int] = set()
    for d in range(count):
        picks = [(d * 7 + k * 13) % pool for k in range(per_delivery)]
        used.update(picks)
        bodies.append(delivery([events[p] for p in picks], f"concurrent-delivery-{d:03d}"))
    return bodies, len(used)


async def _post_all_at_once(app: Any, bodies: list[bytes]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        headers = {"Authorization": SECRET, "Content-Type": "application/json"}
        return list(await asyncio.gather(
            *(http.post(HOOK, content=body, headers=headers) for body in bodies)
        ))


@pytest.mark.parametrize("how", ["asyncio", "threads"])
def test_parallel_deliveries_with_overlapping_uuids_store_each_event_once(
    client: TestClient, how: str
) -> None:
    bodies, distinct = _overlapping_deliveries(count=60, per_delivery=6, pool=90)
    total = 60 * 6
    if how == "asyncio":
        assert client.portal is not None
        responses = client.portal.call(_post_all_at_once, client.app, bodies)
    else:
        headers = {"Authorization": SECRET, "Content-Type": "application/json"}
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(
                lambda body: client.post(HOOK, content=body, headers=headers), bodies
            ))

    assert [r.status_code for r in responses] == [204] * len(bodies)
    results = [dict(part.split("=") for part in result_header(r).split()) for r in responses]
    assert sum(int(r["new"]) for r in results) == distinct
    assert sum(int(r["duplicate"]) for r in results) == total - distinct
    assert all(r["quarantined"] == "0" for r in results)

    store = store_of(client)
    assert store.counts() == {"events": distinct, "deliveries": len(bodies), "quarantined": 0}
    events = store.recent_events(100_000)
    uuids = [e.uuid for e in events]
    assert len(uuids) == len(set(uuids)) == distinct
    ledger = store.ledger(100_000)
    assert len(ledger) == len(bodies)
    assert sum(row.events_new for row in ledger) == distinct
    assert sum(row.events_duplicate for row in ledger) == total - distinct
    assert sum(row.events_total for row in ledger) == total
    assert {row.delivery_id for row in ledger} == {
        f"concurrent-delivery-{d:03d}" for d in range(len(bodies))
    }


@pytest.mark.postgres
def test_two_receivers_sharing_one_postgres_database_store_each_event_once(
    tmp_path: Path, pg_url: str
) -> None:
    bodies, distinct = _overlapping_deliveries(count=40, per_delivery=5, pool=60)
    headers = {"Authorization": SECRET, "Content-Type": "application/json"}
    with running(make_settings(tmp_path / "a", store={"url": pg_url})) as first, \
            running(make_settings(tmp_path / "b", store={"url": pg_url})) as second:
        receivers = [first, second]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(
                lambda numbered: receivers[numbered[0] % 2].post(
                    HOOK, content=numbered[1], headers=headers
                ),
                enumerate(bodies),
            ))
        assert [r.status_code for r in responses] == [204] * len(bodies), [
            r.text for r in responses if r.status_code != 204
        ]
        results = [dict(part.split("=") for part in result_header(r).split())
                   for r in responses]
        assert sum(int(r["new"]) for r in results) == distinct
        store = store_of(first)
        assert store.counts() == {"events": distinct, "deliveries": len(bodies),
                                  "quarantined": 0}
        ledger = store.ledger(100_000)
        assert sum(row.events_new for row in ledger) == distinct
        assert sum(row.events_duplicate for row in ledger) == 40 * 5 - distinct
