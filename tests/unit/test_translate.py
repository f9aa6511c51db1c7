"""to_fact: every published event becomes a fact, the documented shapes read as documented, and
nothing (missing, null or wrongly typed parts, arbitrary JSON) makes it raise."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.payloads import shapes

from factorflow.domain.factors import STRENGTH
from factorflow.domain.facts import (
    Client,
    Engine,
    EnrolledBy,
    EventKind,
    Fact,
    Strength,
)
from factorflow.okta.translate import KINDS, to_fact

RECEIVED = "2026-03-15T10:22:15.000000Z"
KNOWN_TYPES = set(STRENGTH) | {"unknown"}


def fact_of(event: dict[str, Any], received_at: str | None = RECEIVED) -> Fact:
    return to_fact(event, org="example.okta.com", received_at=received_at)


def as_json(fact: Fact) -> dict[str, Any]:
    """The fact's dict after a trip through orjson: proves it is JSON-serialisable as is."""
    plain = fact.to_dict()
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(plain))
    assert decoded == plain  # nothing orjson had to coerce (tuples, enums) is left
    return decoded


# --- the published corpus -------------------------------------------------------------------


CORPUS = shapes.all_corpus_events()


@pytest.mark.parametrize(
    ("name", "event"), CORPUS,
    ids=[f"{name}:{index}" for index, (name, _) in enumerate(CORPUS)],
)
def test_every_corpus_event_becomes_a_fact(name: str, event: dict[str, Any]) -> None:
    fact = fact_of(event)
    plain = as_json(fact)
    assert plain["uuid"] == event["uuid"]
    assert plain["event_type"] == event["eventType"]
    assert fact.kind is KINDS.get(event["eventType"], EventKind.OTHER)
    assert fact.org == "example.okta.com"
    assert fact.factor.type in KNOWN_TYPES
    if name.startswith("siem-reshaped"):
        # SIEM timestamps ("2022-06-22 18:18:29.015", "redacted") name no instant
        assert (fact.published_at, fact.delay_seconds) == (None, None)


def test_the_corpus_files_are_all_read() -> None:
    assert [sum(1 for n, _ in CORPUS if n == name) for name in shapes.CORPUS_FILES] == [18, 1, 43]


def test_published_classic_activation_reads_fully() -> None:
    fact = fact_of(shapes.classic_activate())
    aps = {"id": "00u85ek33bjW0rqu75d7", "login": "aps@google.com", "display_name": "aps",
           "type": "User"}
    assert as_json(fact) == {
        "uuid": "e766d84e-a0a8-11ed-a750-9f5fc296ce63",
        "event_type": "user.mfa.factor.activate",
        "kind": "enrollment",
        "org": "example.okta.com",
        "user": aps,
        "actor": aps,
        "enrolled_by": "self",
        "factor": {"type": "email", "strength": "sms_voice_email", "reason_name": "EMAIL_FACTOR",
                   "authenticator": None, "method": None, "debug_factor": None,
                   "verified_properties": [], "enrollment_id": None},
        "outcome": "SUCCESS",
        "outcome_reason": "User set up EMAIL_FACTOR factor",
        "published": "2023-01-30T14:18:01.558Z",
        "published_at": "2023-01-30T14:18:01.558000Z",
        "received_at": RECEIVED,
        "delay_seconds": 98481853.442,
        "engine": "classic",
        "client": {
            "ip": "1.1.1.1", "ip_chain": ["2.2.2.2", "1.1.1.1"],  # from request.ipChain
            "city": None, "state": None, "country": "India", "postal_code": None,
            "latitude": 21.9974, "longitude": 79.0011,
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)AppleWebKit/537.36 "
                          "(KHTML, like Gecko) Chrome/109.0.0.0 Safari/537.36",
            "os": "Windows 10", "browser": "CHROME", "device": "Computer",
            "zone": None,  # Okta sent the string "null"
            "client_id": None, "asn": 396982, "as_org": "avago technologies u.s. inc.",
            "isp": "google", "domain": ".", "is_proxy": False,
        },
        "transaction_id": "Y9fRmYykc1ctVN0C0LEKkgAABQw",
        "transaction_type": "WEB",
        "session_id": "102SVz3tGtUS9iOMunoGfsHOw",
        "root_session_id": None,
        "request_id": "Y9fRmYykc1ctVN0C0LEKkgAABQw",
        "request_uri": "/api/v1/users",
        "api_token_id": None,
        "display_message": "Activate factor for user",
        "severity": "INFO",
    }


def test_translation_is_deterministic_and_leaves_the_event_alone() -> None:
    event = shapes.classic_activate()
    before = orjson.dumps(event)
    assert fact_of(event) == fact_of(event)
    assert orjson.dumps(event) == before


# --- Classic friendly names -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "factor_type", "strength"), [
    ("OKTA_VERIFY_PUSH", "okta_verify_push", Strength.DEVICE_BOUND_PUSH),
    ("FIDO_WEBAUTHN", "webauthn", Strength.PHISHING_RESISTANT),
    ("SMS_FACTOR", "sms", Strength.TELEPHONY_EMAIL),
    ("CALL_FACTOR", "voice", Strength.TELEPHONY_EMAIL),
    ("GOOGLE_OTP", "totp", Strength.OTP),
    ("SOFT_TOKEN", "totp", Strength.OTP),
    ("YUBIKEY_OTP_FACTOR", "yubikey_otp", Strength.OTP),
    ("SECURITY_QUESTION", "security_question", Strength.KNOWLEDGE),
    ("SIGNED_NONCE", "okta_fastpass", Strength.PHISHING_RESISTANT),
    ("ACME_TELEPATHY", "unknown", Strength.UNKNOWN),
])
def test_classic_reason_names_the_factor(name: str, factor_type: str, strength: Strength) -> None:
    fact = fact_of(shapes.enrollment_event(factor=name))
    assert (fact.engine, fact.kind) == (Engine.CLASSIC, EventKind.ENROLLMENT)
    assert fact.factor.reason_name == name
    assert (fact.factor.type, fact.factor.strength) == (factor_type, strength)
    assert fact.factor.authenticator is None and fact.factor.enrollment_id is None


# --- Identity Engine AuthenticatorEnrollment targets ----------------------------------------

FASTPASS_PROPERTIES = "[DEVICE_BOUND, PHISHING_RESISTANT, USER_VERIFYING, USER_PRESENCE, " \
    "HARDWARE_PROTECTED]"


@pytest.mark.parametrize(("authenticator", "method", "verified", "factor_type", "strength"), [
    ("Okta Verify", "PUSH", "[DEVICE_BOUND]", "okta_verify_push", Strength.DEVICE_BOUND_PUSH),
    ("Okta Verify", "TOTP", None, "okta_verify_totp", Strength.OTP),
    ("Okta Verify", "Use Okta FastPass", FASTPASS_PROPERTIES, "okta_fastpass",
     Strength.PHISHING_RESISTANT),
    ("Okta Verify", "SIGNED_NONCE", None, "okta_fastpass", Strength.PHISHING_RESISTANT),
    ("Okta Verify", None, None, "okta_verify_push", Strength.DEVICE_BOUND_PUSH),
    ("Phone", "SMS", None, "sms", Strength.TELEPHONY_EMAIL),
    ("Phone", "VOICE", None, "voice", Strength.TELEPHONY_EMAIL),
    ("Security Key or Biometric", "WEBAUTHN",
     "[USER_VERIFYING, PHISHING_RESISTANT, HARDWARE_PROTECTED]", "webauthn",
     Strength.PHISHING_RESISTANT),
    ("Security Key or Biometric", None, None, "webauthn", Strength.PHISHING_RESISTANT),
    ("Email", "EMAIL", None, "email", Strength.TELEPHONY_EMAIL),
    ("Google Authenticator", "OTP", None, "totp", Strength.OTP),
    ("Google Authenticator", "TOTP", None, "totp", Strength.OTP),
    ("Acme Quantum Badge", None, None, "unknown", Strength.UNKNOWN),
    ("Acme Quantum Badge", "TELEPATHY", None, "unknown", Strength.UNKNOWN),
    # a custom authenticator's push is not Okta Verify's, though the strength class is the same
    ("Acme Push", "PUSH", None, "custom_push", Strength.DEVICE_BOUND_PUSH),
    ("Acme Codes", "OTP", None, "totp", Strength.OTP),
])
def test_identity_engine_authenticator_and_method(
    authenticator: str, method: str | None, verified: str | None, factor_type: str,
    strength: Strength,
) -> None:
    fact = fact_of(shapes.enrollment_event(
        engine="identity_engine", authenticator=authenticator, method=method, verified=verified))
    assert fact.engine is Engine.IDENTITY_ENGINE
    assert (fact.factor.type, fact.factor.strength) == (factor_type, strength)
    assert (fact.factor.authenticator, fact.factor.method) == (authenticator, method)
    assert fact.factor.enrollment_id == shapes.ENROLLMENT_ID
    assert fact.factor.reason_name is None
    assert fact.user is not None and fact.user.id == shapes.USER_ID
    assert fact.enrolled_by is EnrolledBy.SELF
    assert fact.session_id == "idxQ0cMW2uMVK2TwUvp_sample"
    assert fact.root_session_id == "idxRootSession0001"


def test_verified_properties_are_read_from_okta_list_looking_string() -> None:
    fact = fact_of(shapes.enrollment_event(
        engine="identity_engine", method="Use Okta FastPass", verified=FASTPASS_PROPERTIES))
    assert fact.factor.verified_properties == (
        "DEVICE_BOUND", "PHISHING_RESISTANT", "USER_VERIFYING", "USER_PRESENCE",
        "HARDWARE_PROTECTED")
    assert as_json(fact)["factor"]["verified_properties"] == list(
        fact.factor.verified_properties)


@pytest.mark.parametrize("verified", [
    "[DEVICE_BOUND, PHISHING_RESISTANT]",
    "[device_bound, phishing_resistant]",
    ["DEVICE_BOUND", "PHISHING_RESISTANT"],
    [" phishing_resistant ", 7, None],
])
def test_phishing_resistant_property_upgrades_the_strength(verified: Any) -> None:
    plain = fact_of(shapes.enrollment_event(engine="identity_engine", method="PUSH"))
    upgraded = fact_of(shapes.enrollment_event(
        engine="identity_engine", method="PUSH", verified=verified))
    assert plain.factor.strength is Strength.DEVICE_BOUND_PUSH
    assert upgraded.factor.type == "okta_verify_push"
    assert upgraded.factor.strength is Strength.PHISHING_RESISTANT
    assert "PHISHING_RESISTANT" in upgraded.factor.verified_properties


def test_verified_properties_of_odd_types_are_empty() -> None:
    for verified in ("[]", "", 42, {"PHISHING_RESISTANT": True}):
        fact = fact_of(shapes.enrollment_event(
            engine="identity_engine", method="PUSH", verified=verified))
        assert fact.factor.verified_properties == ()
        assert fact.factor.strength is Strength.DEVICE_BOUND_PUSH


def test_snake_case_detail_entry_keys_are_read_too() -> None:
    event = shapes.enrollment_event(engine="identity_engine", authenticator="Phone", method=None)
    event["target"][1]["detailEntry"] = {"method_type_used": "VOICE",
                                         "method_used_verified_properties": "[USER_PRESENCE]"}
    fact = fact_of(event)
    assert (fact.factor.type, fact.factor.method) == ("voice", "VOICE")
    assert fact.factor.verified_properties == ("USER_PRESENCE",)


def test_enrollment_target_without_user_target_makes_the_actor_the_user() -> None:
    fact = fact_of(shapes.enrollment_event(engine="identity_engine", user_target=False))
    assert fact.user == fact.actor
    assert fact.user is not None and fact.user.id == shapes.USER_ID
    assert fact.enrolled_by is EnrolledBy.SELF
    assert fact.factor.type == "okta_verify_push"


def test_enrollment_target_without_user_target_and_a_system_actor_has_no_user() -> None:
    fact = fact_of(shapes.enrollment_event(engine="identity_engine", user_target=False,
                                           actor=shapes.system_principal()))
    assert fact.user is None
    assert fact.enrolled_by is EnrolledBy.SYSTEM


def test_debug_data_factor_is_the_last_resort() -> None:
    event = shapes.enrollment_event(factor=None)
    event["debugContext"]["debugData"]["factor"] = "SIGNED_NONCE"
    fact = fact_of(event)
    assert (fact.factor.reason_name, fact.factor.debug_factor) == (None, "SIGNED_NONCE")
    assert (fact.factor.type, fact.factor.strength) == (
        "okta_fastpass", Strength.PHISHING_RESISTANT)


def test_reason_wins_over_enrollment_target_and_debug_data() -> None:
    event = shapes.enrollment_event(engine="identity_engine", authenticator="Phone",
                                    method="SMS", reason="User set up CALL_FACTOR factor")
    event["debugContext"]["debugData"]["factor"] = "EMAIL_FACTOR"
    fact = fact_of(event)
    assert (fact.factor.type, fact.factor.reason_name, fact.factor.method) == (
        "voice", "CALL_FACTOR", "SMS")


# --- who enrolled ---------------------------------------------------------------------------


def test_admin_enrolled_when_another_user_acts() -> None:
    fact = fact_of(shapes.enrollment_event(factor="SMS_FACTOR", actor=shapes.admin()))
    assert fact.enrolled_by is EnrolledBy.ADMIN
    assert fact.actor is not None and fact.actor.login == shapes.ADMIN_LOGIN
    assert fact.user is not None and fact.user.login == shapes.USER_LOGIN


def test_admin_enrolled_identity_engine() -> None:
    fact = fact_of(shapes.enrollment_event(engine="identity_engine", authenticator="Phone",
                                           method="SMS", actor=shapes.admin()))
    assert (fact.enrolled_by, fact.factor.type) == (EnrolledBy.ADMIN, "sms")


def test_api_token_makes_it_api_enrolled() -> None:
    fact = fact_of(shapes.enrollment_event(actor=shapes.admin(), api_token=shapes.API_TOKEN_ID))
    assert (fact.enrolled_by, fact.api_token_id) == (EnrolledBy.API, shapes.API_TOKEN_ID)


def test_api_token_on_a_self_enrollment_is_still_api() -> None:
    fact = fact_of(shapes.enrollment_event(api_token=shapes.API_TOKEN_ID))
    assert fact.enrolled_by is EnrolledBy.API


def test_system_principal_is_system() -> None:
    fact = fact_of(shapes.enrollment_event(actor=shapes.system_principal()))
    assert fact.enrolled_by is EnrolledBy.SYSTEM
    assert fact.actor is not None and fact.actor.type == "SystemPrincipal"


@pytest.mark.parametrize("actor_type",
                         ["PublicClientApp", "AppInstance", "Client", "ServiceApp", "OAuth2Client"])
def test_program_actors_are_api(actor_type: str) -> None:
    fact = fact_of(shapes.enrollment_event(actor=shapes.service_app(actor_type),
                                           client_id=shapes.SERVICE_APP_ID))
    assert fact.enrolled_by is EnrolledBy.API
    assert fact.client.client_id == shapes.SERVICE_APP_ID


def test_unfamiliar_actor_type_is_unknown() -> None:
    fact = fact_of(shapes.enrollment_event(actor=shapes.service_app("Martian")))
    assert fact.enrolled_by is EnrolledBy.UNKNOWN


@pytest.mark.parametrize(("actor", "target", "expected"), [
    # ids decide when both are there
    (shapes.user(), shapes.user(login="someone.else@example.com"), EnrolledBy.SELF),
    (shapes.user(), shapes.user(user_id="00u1other"), EnrolledBy.ADMIN),
    # logins, case-insensitively, when an id is missing on either side
    (shapes.user(user_id=None, login="Pat.Lee@Example.com"), shapes.user(), EnrolledBy.SELF),
    (shapes.user(), shapes.user(user_id=None), EnrolledBy.SELF),
    (shapes.user(user_id=None), shapes.user(user_id=None, login="x@example.com"),
     EnrolledBy.ADMIN),
    # nothing to compare: cannot be told
    (shapes.user(login=None), shapes.user(user_id=None), EnrolledBy.UNKNOWN),
])
def test_self_or_admin(actor: dict[str, Any], target: dict[str, Any],
                       expected: EnrolledBy) -> None:
    fact = fact_of(shapes.enrollment_event(actor=actor, target_user=target))
    assert fact.enrolled_by is expected


def test_no_user_target_and_no_enrollment_target_leaves_user_unknown() -> None:
    event = shapes.enrollment_event()
    event["target"] = [{"id": "0oa1app", "type": "AppInstance", "displayName": "Some app"}]
    fact = fact_of(event)
    assert (fact.user, fact.enrolled_by) == (None, EnrolledBy.UNKNOWN)


# --- SMS and voice twins --------------------------------------------------------------------


def test_phone_twins_both_become_facts() -> None:
    sms, voice = (fact_of(event) for event in shapes.phone_twins())
    assert sms.uuid != voice.uuid
    assert (sms.kind, voice.kind) == (EventKind.ENROLLMENT, EventKind.ENROLLMENT)
    assert (sms.factor.type, voice.factor.type) == ("sms", "voice")
    assert sms.user == voice.user
    assert sms.published == voice.published and sms.published_at == voice.published_at
    assert (sms.factor.authenticator, voice.factor.authenticator) == ("Phone", "Phone")


# --- other kinds ----------------------------------------------------------------------------


def test_panther_deactivation_reads_the_factor_from_the_reason() -> None:
    fact = fact_of(shapes.panther_deactivate())
    assert fact.kind is EventKind.DEACTIVATION
    assert (fact.factor.reason_name, fact.factor.type, fact.factor.strength) == (
        "FIDO_WEBAUTHN", "webauthn", Strength.PHISHING_RESISTANT)
    assert fact.engine is Engine.CLASSIC  # the Classic reason form, nothing of OIE
    assert fact.client.ip_chain == ()
    assert fact.client.zone is None


@pytest.mark.parametrize(("event_type", "reason", "kind", "factor_type", "engine"), [
    ("user.mfa.factor.deactivate", "User reset SMS_FACTOR factor", EventKind.DEACTIVATION,
     "sms", Engine.CLASSIC),
    ("user.mfa.factor.reset_all", None, EventKind.RESET_ALL, "unknown", Engine.CLASSIC),
    # suspend and unsuspend exist only in Identity Engine
    ("user.mfa.factor.suspend", "User suspended SIGNED_NONCE factor", EventKind.SUSPENSION,
     "okta_fastpass", Engine.IDENTITY_ENGINE),
    ("user.mfa.factor.unsuspend", "User unsuspended SIGNED_NONCE factor",
     EventKind.UNSUSPENSION, "okta_fastpass", Engine.IDENTITY_ENGINE),
    ("user.mfa.factor.update", "User updated OKTA_VERIFY_PUSH factor", EventKind.UPDATE,
     "okta_verify_push", Engine.CLASSIC),
    ("user.authentication.auth_via_mfa", None, EventKind.OTHER, "unknown", Engine.UNKNOWN),
])
def test_related_event_kinds(event_type: str, reason: str | None, kind: EventKind,
                             factor_type: str, engine: Engine) -> None:
    event = shapes.factor_event(event_type, reason=reason, actor=shapes.admin())
    if event_type in ("user.mfa.factor.suspend", "user.mfa.factor.unsuspend",
                      "user.authentication.auth_via_mfa"):
        event["legacyEventType"] = None
    fact = fact_of(event)
    assert (fact.kind, fact.factor.type, fact.engine) == (kind, factor_type, engine)
    assert fact.event_type == event_type
    assert fact.enrolled_by is EnrolledBy.ADMIN


def test_siem_suspend_sample_is_identity_engine() -> None:
    suspend = next(event for event in shapes.corpus_events("siem-reshaped/events.ndjson")
                   if event["eventType"] == "user.mfa.factor.suspend")
    fact = fact_of(suspend)
    assert (fact.kind, fact.engine, fact.factor.type) == (
        EventKind.SUSPENSION, Engine.IDENTITY_ENGINE, "okta_fastpass")


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("published", "received", "published_at", "delay"), [
    ("2026-03-15T10:22:14.123Z", "2026-03-15T10:22:15.000000Z",
     "2026-03-15T10:22:14.123000Z", 0.877),
    ("2026-03-15T12:22:14.000+02:00", "2026-03-15T10:22:16.500000Z",
     "2026-03-15T10:22:14.000000Z", 2.5),
    ("2026-03-15T10:22:14.000Z", "2026-03-15T10:22:13.000000Z",
     "2026-03-15T10:22:14.000000Z", -1.0),  # clock skew shows as a negative delay
    ("2026-03-15T10:22:14.000Z", None, "2026-03-15T10:22:14.000000Z", None),
    ("2026-03-15T10:22:14.000Z", "yesterday", "2026-03-15T10:22:14.000000Z", None),
    ("2026-03-15T10:22:14.000Z", "2026-03-15T10:22:15", "2026-03-15T10:22:14.000000Z", None),
    ("2017-09-31T22:23:07.777Z", RECEIVED, None, None),  # no September 31
    ("2022-06-22 18:18:29.015", RECEIVED, None, None),  # SIEM reshaped, no zone
    ("0001-01-01T00:00:00+05:00", RECEIVED, None, None),  # before the first UTC instant
    ("9999-12-31T23:59:59-05:00", RECEIVED, None, None),  # after the last one
])
def test_published_at_and_delay(published: str, received: str | None,
                                published_at: str | None, delay: float | None) -> None:
    fact = fact_of(shapes.enrollment_event(published=published), received_at=received)
    assert fact.published == published
    assert (fact.published_at, fact.received_at, fact.delay_seconds) == (
        published_at, received, delay)


# --- client ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "expected"), [
    ("null", None), (None, None), ("", None), ("LegacyIpZone", "LegacyIpZone"),
    ("BlockedIpZone", "BlockedIpZone"),
])
def test_zone(zone: str | None, expected: str | None) -> None:
    assert fact_of(shapes.enrollment_event(zone=zone)).client.zone == expected


@pytest.mark.parametrize(("place", "chain"), [
    ("client", (shapes.CLIENT_IP,)),
    ("request", (shapes.CLIENT_IP,)),
    ("both", (shapes.PROXY_IP, shapes.CLIENT_IP)),  # client's own chain is preferred
    ("none", ()),
])
def test_ip_chain_place(place: shapes.ChainPlace, chain: tuple[str, ...]) -> None:
    fact = fact_of(shapes.enrollment_event(ip_chain=place))
    assert fact.client.ip_chain == chain
    assert fact.client.ip == shapes.CLIENT_IP


def test_ip_chain_falls_back_to_request_when_client_chain_has_no_address() -> None:
    for empty in ([], [{"version": "V4"}], [None, 5], None, "198.51.100.1"):
        event = shapes.enrollment_event(ip_chain="request", chain=["192.0.2.10", "192.0.2.11"])
        event["client"]["ipChain"] = empty
        assert fact_of(event).client.ip_chain == ("192.0.2.10", "192.0.2.11")


def test_ip_chain_skips_hops_without_an_address() -> None:
    event = shapes.enrollment_event(ip_chain="request", chain=["192.0.2.10"])
    event["request"]["ipChain"][:0] = [{"ip": None}, {"ip": ""}, "192.0.2.99", {"version": "V6"}]
    assert fact_of(event).client.ip_chain == ("192.0.2.10",)


def test_client_values_of_the_wrong_type_are_dropped_or_converted() -> None:
    event = shapes.enrollment_event()
    event["client"]["geographicalContext"] = {"city": ["Toronto"], "country": 7,
                                              "geolocation": {"lat": "43.5", "lon": "east"}}
    event["securityContext"] = {"asNumber": "64496", "isProxy": "false", "asOrg": {"x": 1},
                                "isp": True, "domain": None}
    client = fact_of(event).client
    assert (client.city, client.country) == (None, "7")
    assert (client.latitude, client.longitude) == (43.5, None)
    assert (client.asn, client.is_proxy, client.as_org, client.isp) == (64496, None, None, None)


@pytest.mark.parametrize(("lat", "as_number"), [
    ("nan", "\u00b2"), ("inf", "1e3"), ("-Infinity", "-1"), ("1e400", 64496.0), (True, False),
])
def test_numbers_that_are_no_numbers_are_dropped(lat: Any, as_number: Any) -> None:
    event = shapes.enrollment_event()
    event["client"]["geographicalContext"]["geolocation"]["lat"] = lat
    event["securityContext"]["asNumber"] = as_number
    fact = fact_of(event)
    assert (fact.client.latitude, fact.client.asn) == (None, None)
    assert as_json(fact)["client"]["longitude"] == -79.34


# --- sparse and broken events ---------------------------------------------------------------


def _assert_degraded(fact: Fact) -> None:
    assert (fact.user, fact.actor, fact.enrolled_by) == (None, None, EnrolledBy.UNKNOWN)
    assert (fact.factor.type, fact.factor.strength) == ("unknown", Strength.UNKNOWN)
    assert (fact.outcome, fact.outcome_reason, fact.engine) == (None, None, Engine.UNKNOWN)
    assert fact.client == Client()
    assert (fact.transaction_id, fact.session_id, fact.request_uri, fact.api_token_id) == (
        None, None, None, None)


def test_only_uuid_event_type_and_published() -> None:
    event = shapes.sparse_event()
    fact = fact_of(event)
    assert (fact.uuid, fact.kind, fact.published_at) == (
        event["uuid"], EventKind.ENROLLMENT, "2026-03-15T10:22:14.123000Z")
    _assert_degraded(fact)
    as_json(fact)


@pytest.mark.parametrize("fields", [
    {"target": None, "actor": None},
    {"target": [], "actor": {}},
    {"target": [None, 3, "User", []], "actor": []},
    {"target": {"type": "User", "id": "00u1"}, "actor": "00u1"},
    {"target": [{"type": "User"}], "actor": {"type": "User"}},
    {"outcome": None, "client": None, "transaction": None, "debugContext": None,
     "authenticationContext": None, "securityContext": None, "request": None},
    {"outcome": [], "client": 5, "transaction": "WEB", "debugContext": {"debugData": None},
     "authenticationContext": [1], "securityContext": 0.5, "request": {"ipChain": None}},
])
def test_sparse_and_null_parts_degrade(fields: dict[str, Any]) -> None:
    fact = fact_of(shapes.sparse_event(**fields))
    if fields.get("target") == [{"type": "User"}]:
        # an empty User target and User actor: present, but nothing to say who they are
        assert fact.user is not None and fact.user.id is None
        assert fact.actor is not None and fact.enrolled_by is EnrolledBy.UNKNOWN
    else:
        _assert_degraded(fact)
    as_json(fact)


def test_empty_event() -> None:
    fact = fact_of({}, received_at=None)
    assert (fact.uuid, fact.event_type, fact.kind, fact.published) == (
        "", "unknown", EventKind.OTHER, "")
    assert (fact.published_at, fact.delay_seconds) == (None, None)
    _assert_degraded(fact)


def test_top_level_scalars_of_the_wrong_type() -> None:
    fact = fact_of({"uuid": 12, "eventType": ["user.mfa.factor.activate"], "published": True,
                    "displayMessage": {}, "severity": 3.5})
    assert (fact.uuid, fact.event_type, fact.published, fact.published_at) == (
        "12", "unknown", "", None)
    assert (fact.display_message, fact.severity) == (None, "3.5")


RICH_EVENTS = {
    "classic": shapes.classic_activate(),
    "identity_engine": shapes.enrollment_event(
        engine="identity_engine", method="Use Okta FastPass", verified=FASTPASS_PROPERTIES,
        ip_chain="both", api_token=shapes.API_TOKEN_ID),
}
WRONG_VALUES = [None, [], ["x", 1, None], 0, 3.25, "text", True, {}]


@pytest.mark.parametrize("name", sorted(RICH_EVENTS))
@pytest.mark.parametrize("wrong", WRONG_VALUES, ids=repr)
def test_every_object_and_array_replaced_by_a_wrong_value(name: str, wrong: Any) -> None:
    event = RICH_EVENTS[name]
    paths = list(shapes.container_paths(event))
    assert len(paths) > 15
    for path in paths:
        fact = fact_of(shapes.replaced(event, path, wrong))
        plain = as_json(fact)
        assert plain["uuid"] == event["uuid"], path
        assert fact.kind is EventKind.ENROLLMENT, path
        if path == ("actor",):
            assert (fact.actor, fact.enrolled_by) == (None, EnrolledBy.UNKNOWN)
        if path == ("client",):
            assert (fact.client.ip, fact.client.city, fact.client.user_agent) == (None,) * 3
        if path == ("transaction",):
            assert (fact.transaction_id, fact.api_token_id) == (None, None)
        if path == ("outcome",):
            assert (fact.outcome, fact.factor.reason_name) == (None, None)


def test_wrong_target_kills_the_factor_reading_of_identity_engine_only() -> None:
    for wrong in (None, [], 5, "User", {"type": "AuthenticatorEnrollment"}):
        oie = fact_of(shapes.replaced(RICH_EVENTS["identity_engine"], ("target",), wrong))
        classic = fact_of(shapes.replaced(RICH_EVENTS["classic"], ("target",), wrong))
        assert (oie.user, oie.factor.type, oie.factor.authenticator) == (None, "unknown", None)
        assert oie.enrolled_by is EnrolledBy.API  # the API token is still there
        # Classic reads the factor from outcome.reason, which is untouched
        assert (classic.user, classic.factor.type) == (None, "email")
        assert classic.enrolled_by is EnrolledBy.UNKNOWN


# --- property: arbitrary JSON never raises --------------------------------------------------

# every key to_fact reads, so that garbage lands where it looks
KNOWN_KEYS = sorted({
    "uuid", "eventType", "published", "actor", "target", "outcome", "transaction", "detail",
    "requestApiTokenId", "debugContext", "debugData", "authenticationContext", "client",
    "request", "ipChain", "ip", "securityContext", "id", "type", "alternateId", "displayName",
    "detailEntry", "methodTypeUsed", "method_type_used", "methodUsedVerifiedProperties",
    "method_used_verified_properties", "result", "reason", "factor", "requestId", "requestUri",
    "externalSessionId", "rootSessionId", "legacyEventType", "geographicalContext",
    "geolocation", "lat", "lon", "city", "state", "country", "postalCode", "userAgent",
    "rawUserAgent", "os", "browser", "device", "zone", "ipAddress", "asNumber", "asOrg", "isp",
    "domain", "isProxy", "displayMessage", "severity",
})
KNOWN_VALUES = [
    "User", "AuthenticatorEnrollment", "SystemPrincipal", "PublicClientApp", "null", "nan",
    "inf", "\u00b2", "user.mfa.factor.activate", "user.mfa.factor.suspend",
    "User set up SMS_FACTOR factor", "[DEVICE_BOUND, PHISHING_RESISTANT]", "Okta Verify",
    "Phone", "PUSH", "SMS", "idx123", "/idp/idx/identify", "core.user.factor.activate",
]
timestamps = st.builds(
    "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
    st.sampled_from([1, 1970, 2026, 9999]) | st.integers(1, 9999),
    st.integers(0, 13), st.integers(0, 32), st.sampled_from("T "),
    st.integers(0, 25), st.integers(0, 60), st.integers(0, 60),
    st.sampled_from(["", ".5", ".123", ".123456789"]),
    st.sampled_from(["Z", "", "+00:00", "+05:30", "-0800", "+23:59", "-23:59"]),
)
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | text
    | st.sampled_from(KNOWN_VALUES) | timestamps
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(KNOWN_KEYS) | text, children, max_size=4),
    max_leaves=12,
)


# leaves worth more than generic garbage: times where times go, numbers as text
LEAVES: dict[str, st.SearchStrategy[Any]] = {
    "published": timestamps,
    "asNumber": st.sampled_from(["64496", "\u00b2", "-1", "1e3"]),
    "lat": st.sampled_from(["43.5", "nan", "inf", "-Infinity", "1e400"]),
    "lon": st.integers(min_value=2**63, max_value=2**64 - 1),
}


TEMPLATE = {**RICH_EVENTS["classic"], **RICH_EVENTS["identity_engine"],
            "request": RICH_EVENTS["classic"]["request"]}
TEMPLATE_PATHS = list(shapes.node_paths(TEMPLATE))
DROP = object()


def _damage(path: tuple[str | int, ...]) -> st.SearchStrategy[tuple[Any, Any]]:
    key = path[-1]
    value = LEAVES.get(key, scalars) if isinstance(key, str) else scalars
    return st.tuples(st.just(path), st.one_of(value, json_values, st.just(DROP)))


def _damaged(changes: list[tuple[tuple[str | int, ...], Any]]) -> dict[str, Any]:
    event: dict[str, Any] = copy.deepcopy(TEMPLATE)
    for path, value in changes:
        node: Any = event
        for key in path[:-1]:
            node = _child(node, key)
        last = path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            if value is DROP:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = None if value is DROP else value
    return event


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, dict) and isinstance(key, str):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


# the template with a few of its parts (deep ones included) dropped or replaced by garbage
damaged_events = st.builds(
    _damaged, st.lists(st.sampled_from(TEMPLATE_PATHS).flatmap(_damage), min_size=1, max_size=6))
events = (
    st.dictionaries(st.sampled_from(KNOWN_KEYS) | text, json_values, max_size=10)
    | damaged_events
)


@hypothesis_settings(max_examples=300, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(event=events, received=st.none() | timestamps | text)
def test_arbitrary_json_never_raises(event: dict[str, Any], received: str | None) -> None:
    fact = to_fact(event, org="example.okta.com", received_at=received)
    plain = as_json(fact)
    assert fact.factor.type in KNOWN_TYPES
    assert isinstance(fact.factor.strength, Strength)
    assert plain["kind"] in {kind.value for kind in EventKind}
    assert all(isinstance(ip, str) and ip for ip in fact.client.ip_chain)
    if fact.delay_seconds is not None:
        assert fact.published_at is not None and fact.received_at is not None
