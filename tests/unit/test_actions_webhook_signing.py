"""Standard Webhooks signing, secrets and Retry-After: the pure parts of the webhook action."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest

from factorflow.actions.webhook import (
    display_url,
    parse_retry_after,
    payload,
    sign,
    signing_key,
)
from factorflow.domain.actions import ActionRequest
from factorflow.domain.facts import (
    Engine,
    EnrolledBy,
    EventKind,
    Fact,
    Factor,
    Person,
    Strength,
)
from factorflow.errors import ConfigError, PermanentActionError

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_signature_matches_the_specification_test_vector() -> None:
    key = signing_key("spec", SPEC_SECRET)
    assert sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_covers_id_timestamp_and_body() -> None:
    key = signing_key("spec", SPEC_SECRET)
    assert sign(key, SPEC_ID + "x", SPEC_TIMESTAMP, SPEC_BODY) != SPEC_SIGNATURE
    assert sign(key, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY) != SPEC_SIGNATURE
    assert sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY + b" ") != SPEC_SIGNATURE


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "webhook secret 'crm' must start with whsec_"),
        ("whsec_not base64!!", "webhook secret 'crm': the part after whsec_ is not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(),
         "webhook secret 'crm' must hold 24 to 64 bytes (base64-encoded)"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(),
         "webhook secret 'crm' must hold 24 to 64 bytes (base64-encoded)"),
    ],
)
def test_malformed_secrets_are_refused_without_showing_them(secret: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        signing_key("crm", secret)
    assert str(caught.value) == message
    assert secret.removeprefix("whsec_") not in str(caught.value)


def test_signing_key_is_the_decoded_secret() -> None:
    raw = bytes(range(32))
    assert signing_key("k", "whsec_" + base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
    ],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    earlier = format_datetime(NOW - timedelta(seconds=90), usegmt=True)
    assert later.endswith("GMT")
    assert parse_retry_after(later, NOW) == 90.0
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2024 25:00:00 GMT", NOW) is None


def test_display_url_drops_credentials_and_query() -> None:
    url = httpx.URL("https://user:pw@hooks.example.com:8443/in/okta?token=abc#frag")
    assert display_url(url) == "https://hooks.example.com:8443/in/okta"
    assert display_url(httpx.URL("http://127.0.0.1/x")) == "http://127.0.0.1/x"
    assert display_url(httpx.URL("http://[::1]:8080/x?y=1")) == "http://[::1]:8080/x"


def _fact() -> Fact:
    alice = Person(id="00u-alice", login="alice@example.com", display_name="Alice", type="User")
    return Fact(
        uuid="7a0e2b8e-0000-4000-8000-000000000001", event_type="user.mfa.factor.activate",
        kind=EventKind.ENROLLMENT, org="example.okta.com", user=alice, actor=alice,
        enrolled_by=EnrolledBy.SELF,
        factor=Factor("webauthn", Strength.PHISHING_RESISTANT, None, "Security Key", None, None),
        outcome="SUCCESS", outcome_reason=None, published="2024-05-01T11:59:00.000Z",
        published_at="2024-05-01T11:59:00.000000Z", received_at="2024-05-01T11:59:01.000000Z",
        delay_seconds=1.0, engine=Engine.IDENTITY_ENGINE,
    )


def test_payload_is_the_standard_envelope_around_the_fact() -> None:
    fact = _fact()
    request = ActionRequest("r1", "notify", "webhook", {"url": "https://x", "secret": "s"}, "k1")
    body = orjson.loads(payload(request, fact))
    assert body == {
        "type": "factorflow.enrollment",
        "timestamp": "2024-05-01T11:59:00.000000Z",
        "rule_id": "r1",
        "action_id": "notify",
        "params": {},
        "data": fact.to_dict(),
    }
    extra = ActionRequest("r1", "notify", "webhook", {
        "url": "https://x", "secret": "s", "message": "alice enrolled", "priority": 2}, "k1")
    assert orjson.loads(payload(extra, fact))["params"] == {
        "message": "alice enrolled", "priority": 2}
    typed = ActionRequest("r1", "notify", "webhook", {"type": "mfa.enrolled"}, "k1")
    assert orjson.loads(payload(typed, fact))["type"] == "mfa.enrolled"
    wrong = ActionRequest("r1", "notify", "webhook", {"type": 3}, "k1")
    with pytest.raises(PermanentActionError) as caught:
        payload(wrong, fact)
    assert str(caught.value) == "rule r1 action notify: params.type must be text"
