"""Event shapes the rules tests evaluate: the published corpus activation, and the documented
shapes no public raw sample exists for (Identity Engine AuthenticatorEnrollment targets,
admin-enrolled, API token, SystemPrincipal, reset_all / deactivate), built per the LogEvent schema
(okta/okta-developer-docs system-log reference; AuthenticatorEnrollment detailEntry as in the
published auth_via_mfa samples). The tests here pin how each shape translates, so a rules test
that builds one knows what fact it gets."""

from __future__ import annotations

import json
import uuid as uuid_module
from typing import Any

from tests.conftest import CORPUS

from factorflow.domain.facts import Engine, EnrolledBy, EventKind, Fact, Strength
from factorflow.okta.translate import to_fact

USER_ID = "00u1privileged0001"
USER_LOGIN = "dana.admin@example.com"
ADMIN_ID = "00u1helpdesk000002"
ADMIN_LOGIN = "helpdesk@example.com"
PUBLISHED = "2026-03-15T10:22:14.000Z"


def corpus_activation() -> dict[str, Any]:
    """The one published raw user.mfa.factor.activate (Classic, EMAIL_FACTOR, self)."""
    with (CORPUS / "okta-events.ndjson").open() as lines:
        for line in lines:
            event = json.loads(line)
            if event["eventType"] == "user.mfa.factor.activate":
                return dict(event)
    raise AssertionError("the corpus has no user.mfa.factor.activate")


def corpus_events() -> list[dict[str, Any]]:
    with (CORPUS / "okta-events.ndjson").open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _user(user_id: str, login: str, name: str = "Dana Admin") -> dict[str, Any]:
    return {"id": user_id, "type": "User", "alternateId": login, "displayName": name,
            "detailEntry": None}


def _base(event_type: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "uuid": overrides.pop("uuid", None) or str(uuid_module.uuid4()),
        "published": overrides.pop("published", PUBLISHED),
        "eventType": event_type,
        "version": "0",
        "severity": "INFO",
        "displayMessage": "Activate factor or authenticator enrollment method for user",
        "actor": _user(USER_ID, USER_LOGIN),
        "client": {
            "userAgent": {"rawUserAgent": "Mozilla/5.0", "os": "Mac OS X", "browser": "CHROME"},
            "zone": overrides.pop("zone", "null"),
            "device": "Computer",
            "id": None,
            "ipAddress": "198.51.100.7",
            "geographicalContext": {
                "city": "Toronto", "state": "Ontario",
                "country": overrides.pop("country", "Canada"), "postalCode": "M4M",
                "geolocation": {"lat": 43.6567, "lon": -79.34},
            },
        },
        "outcome": {"result": "SUCCESS", "reason": None},
        "target": [_user(USER_ID, USER_LOGIN)],
        "transaction": {"type": "WEB", "id": "ZCCzm8j2wTvzwele2NwLnwAADSc", "detail": {}},
        "debugContext": {"debugData": {"requestId": "ZCCzm8j2wTvzwele2NwLnwAADSc",
                                       "requestUri": "/idp/idx/challenge/answer"}},
        "authenticationContext": {"externalSessionId": "idxyNcxVX2ESsSL0u462548Qg",
                                  "authenticationStep": 0},
        "securityContext": {"asNumber": None, "asOrg": None, "isp": None, "domain": None,
                            "isProxy": None},
    }
    event.update(overrides)
    return event


def oie_enrollment(
    authenticator: str = "Security Key or Biometric",
    method: str | None = "WEBAUTHN",
    verified: str | None = "[USER_VERIFYING, PHISHING_RESISTANT, HARDWARE_PROTECTED]",
    **overrides: Any,
) -> dict[str, Any]:
    """Identity Engine: a User target plus an AuthenticatorEnrollment target."""
    detail: dict[str, Any] = {}
    if method is not None:
        detail["methodTypeUsed"] = method
    if verified is not None:
        detail["methodUsedVerifiedProperties"] = verified
    enrollment = {"id": "pfd1enrollment0001", "type": "AuthenticatorEnrollment",
                  "alternateId": "unknown", "displayName": authenticator,
                  "detailEntry": detail or None}
    targets = overrides.pop("target", None) or [_user(USER_ID, USER_LOGIN), enrollment]
    return _base("user.mfa.factor.activate", target=targets, **overrides)


def classic_enrollment(factor: str = "OKTA_VERIFY_PUSH", **overrides: Any) -> dict[str, Any]:
    """Classic: one User target, the factor only in outcome.reason."""
    event = _base("user.mfa.factor.activate", legacyEventType="core.user.factor.activate",
                  **overrides)
    event["outcome"] = {"result": "SUCCESS", "reason": f"User set up {factor} factor"}
    event["authenticationContext"] = {"externalSessionId": "102SVz3tGtUS9iOMunoGfsHOw"}
    event["debugContext"] = {"debugData": {"requestUri": "/api/v1/users/00u1/factors"}}
    return event


def admin_enrolled(**overrides: Any) -> dict[str, Any]:
    """Another user (helpdesk) enrolled the factor: actor != the User target."""
    return classic_enrollment("SMS_FACTOR", actor=_user(ADMIN_ID, ADMIN_LOGIN, "Help Desk"),
                              **overrides)


def api_enrolled(**overrides: Any) -> dict[str, Any]:
    """Enrolled through an API token: transaction.detail.requestApiTokenId is set."""
    event = classic_enrollment("GOOGLE_OTP", actor=_user(ADMIN_ID, "provisioner@example.com",
                                                          "Provisioning Service"), **overrides)
    event["transaction"] = {"type": "WEB", "id": "Y9fRmYykc1ctVN0C0LEKkgAABQw",
                            "detail": {"requestApiTokenId": "00T1apitoken0001"}}
    return event


def system_enrolled(**overrides: Any) -> dict[str, Any]:
    """Okta itself acted (SystemPrincipal)."""
    return oie_enrollment(
        "Email", "EMAIL", None,
        actor={"id": "0oa1system", "type": "SystemPrincipal", "alternateId": "system@okta.com",
               "displayName": "Okta System", "detailEntry": None},
        **overrides,
    )


def reset_all(**overrides: Any) -> dict[str, Any]:
    event = _base("user.mfa.factor.reset_all", legacyEventType="core.user.factor.reset_all",
                  **overrides)
    event["outcome"] = {"result": "SUCCESS", "reason": None}
    return event


def deactivation(factor: str = "FIDO_WEBAUTHN", **overrides: Any) -> dict[str, Any]:
    event = _base("user.mfa.factor.deactivate", **overrides)
    event["outcome"] = {"result": "SUCCESS", "reason": f"User reset {factor} factor"}
    return event


def fact_of(event: dict[str, Any]) -> Fact:
    return to_fact(event, org="example", received_at="2026-03-15T10:22:15.000000Z")


# --- the shapes translate as documented ------------------------------------------------------


def test_corpus_activation_is_a_classic_self_enrolled_email_factor() -> None:
    fact = fact_of(corpus_activation())
    assert fact.uuid == "e766d84e-a0a8-11ed-a750-9f5fc296ce63"
    assert (fact.kind, fact.enrolled_by, fact.engine) == (
        EventKind.ENROLLMENT, EnrolledBy.SELF, Engine.CLASSIC)
    assert (fact.factor.type, fact.factor.strength) == ("email", Strength.TELEPHONY_EMAIL)
    assert fact.client.country == "India"


def test_identity_engine_webauthn_enrollment() -> None:
    fact = fact_of(oie_enrollment())
    assert fact.engine is Engine.IDENTITY_ENGINE
    assert fact.enrolled_by is EnrolledBy.SELF
    assert (fact.factor.type, fact.factor.strength) == ("webauthn", Strength.PHISHING_RESISTANT)
    assert fact.user is not None and fact.user.id == USER_ID
    assert fact.client.zone is None  # Okta sends the string "null"


def test_identity_engine_okta_verify_push() -> None:
    fact = fact_of(oie_enrollment("Okta Verify", "PUSH", "[DEVICE_BOUND]"))
    assert (fact.factor.type, fact.factor.strength) == (
        "okta_verify_push", Strength.DEVICE_BOUND_PUSH)


def test_admin_api_and_system_actors() -> None:
    assert fact_of(admin_enrolled()).enrolled_by is EnrolledBy.ADMIN
    assert fact_of(admin_enrolled()).factor.type == "sms"
    api = fact_of(api_enrolled())
    assert (api.enrolled_by, api.api_token_id) == (EnrolledBy.API, "00T1apitoken0001")
    assert fact_of(system_enrolled()).enrolled_by is EnrolledBy.SYSTEM


def test_reset_and_deactivation_kinds() -> None:
    assert fact_of(reset_all()).kind is EventKind.RESET_ALL
    removed = fact_of(deactivation())
    assert (removed.kind, removed.factor.type) == (EventKind.DEACTIVATION, "webauthn")
