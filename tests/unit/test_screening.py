"""screen: which facts go on to the rules and, for the others, the reason; twin_family: which
enrollments can have a same-timestamp SMS/voice twin. Facts are built by to_fact from events."""

from __future__ import annotations

from typing import Any

import pytest
from tests.payloads import shapes

from factorflow.domain.facts import Fact
from factorflow.okta.translate import to_fact
from factorflow.pipeline.screening import DEFAULT_EVENT_TYPES, ScreenPolicy, screen, twin_family

DEFAULT = ScreenPolicy()
OWN_ACCOUNT_ID = "00u1factorflow0001"
OWN_ACCOUNT_LOGIN = "factorflow-bot@example.com"
OWN_CLIENT_ID = "0oa1factorflowapp01"
GUARDED = ScreenPolicy(own_actors=frozenset({OWN_ACCOUNT_ID, OWN_ACCOUNT_LOGIN, OWN_CLIENT_ID}))
LOOP_ACCOUNT = "caused by factorflow's own service account (loop guard)"
LOOP_CLIENT = "caused by factorflow's own API client (loop guard)"


def fact_of(event: dict[str, Any]) -> Fact:
    return to_fact(event, org="example.okta.com", received_at="2026-03-15T10:22:15.000000Z")


def own_account(user_id: str | None = OWN_ACCOUNT_ID,
                login: str | None = OWN_ACCOUNT_LOGIN) -> dict[str, Any]:
    return shapes.user(user_id, login, "factorflow")


# --- what goes on ---------------------------------------------------------------------------


def test_successful_enrollment_goes_on() -> None:
    assert screen(fact_of(shapes.enrollment_event()), DEFAULT) is None
    assert screen(fact_of(shapes.classic_activate()), DEFAULT) is None
    assert screen(fact_of(shapes.enrollment_event(engine="identity_engine")), GUARDED) is None


@pytest.mark.parametrize("event_type", DEFAULT_EVENT_TYPES)
def test_every_default_type_goes_on_when_successful(event_type: str) -> None:
    assert screen(fact_of(shapes.factor_event(event_type)), DEFAULT) is None


def test_admin_enrollment_by_someone_else_goes_on() -> None:
    event = shapes.enrollment_event(actor=shapes.admin(), client_id="0oa1someotherapp")
    assert screen(fact_of(event), GUARDED) is None


def test_missing_outcome_is_not_a_failure() -> None:
    fact = fact_of(shapes.sparse_event())
    assert fact.outcome is None
    assert screen(fact, DEFAULT) is None


# --- what is filtered, and why --------------------------------------------------------------


@pytest.mark.parametrize("event_type", [
    "user.session.start", "user.authentication.auth_via_mfa", "system.mfa.factor.activate",
    "unknown",
])
def test_unsubscribed_type(event_type: str) -> None:
    fact = fact_of(shapes.factor_event(event_type))
    assert screen(fact, DEFAULT) == f"event type {event_type} is not subscribed"


def test_unsubscribed_by_a_narrower_policy() -> None:
    only_activations = ScreenPolicy(event_types=frozenset({"user.mfa.factor.activate"}))
    assert screen(fact_of(shapes.enrollment_event()), only_activations) is None
    reset = fact_of(shapes.factor_event("user.mfa.factor.reset_all"))
    assert screen(reset, only_activations) == (
        "event type user.mfa.factor.reset_all is not subscribed")


def test_corpus_events_of_other_types_are_unsubscribed() -> None:
    for event in shapes.corpus_events("okta-events.ndjson"):
        reason = screen(fact_of(event), DEFAULT)
        if event["eventType"] in DEFAULT_EVENT_TYPES:
            assert reason is None
        else:
            assert reason == f"event type {event['eventType']} is not subscribed"


@pytest.mark.parametrize("result", ["FAILURE", "DENY", "SKIPPED", "UNKNOWN", "CHALLENGE"])
def test_unsuccessful_outcome(result: str) -> None:
    fact = fact_of(shapes.enrollment_event(result=result))
    assert screen(fact, DEFAULT) == f"outcome is {result}, not SUCCESS"


def test_own_service_account_by_id() -> None:
    fact = fact_of(shapes.enrollment_event(actor=own_account(login="renamed@example.com")))
    assert screen(fact, GUARDED) == LOOP_ACCOUNT
    assert screen(fact, DEFAULT) is None  # without the guard configured it is any admin


def test_own_service_account_by_login() -> None:
    fact = fact_of(shapes.enrollment_event(actor=own_account(user_id="00u1unknownid")))
    assert screen(fact, GUARDED) == LOOP_ACCOUNT


def test_own_login_matches_whatever_its_case() -> None:
    actor = own_account(user_id=None, login="FactorFlow-Bot@Example.com")
    assert screen(fact_of(shapes.enrollment_event(actor=actor)), GUARDED) == LOOP_ACCOUNT


def test_ids_are_case_sensitive() -> None:
    actor = own_account(user_id=OWN_ACCOUNT_ID.upper(), login=None)
    assert screen(fact_of(shapes.enrollment_event(actor=actor)), GUARDED) is None


def test_own_client_id() -> None:
    fact = fact_of(shapes.enrollment_event(actor=shapes.admin(), client_id=OWN_CLIENT_ID))
    assert screen(fact, GUARDED) == LOOP_CLIENT


def test_own_service_app_as_actor() -> None:
    app = shapes.service_app()
    app["id"] = OWN_CLIENT_ID
    assert screen(fact_of(shapes.enrollment_event(actor=app)), GUARDED) == LOOP_ACCOUNT


def test_reasons_come_in_order() -> None:
    # an unsubscribed, failed event by our own account: the type is named first
    event = shapes.factor_event("user.session.start", result="FAILURE", actor=own_account(),
                                client_id=OWN_CLIENT_ID)
    assert screen(fact_of(event), GUARDED) == "event type user.session.start is not subscribed"
    failed = shapes.enrollment_event(result="FAILURE", actor=own_account(),
                                     client_id=OWN_CLIENT_ID)
    assert screen(fact_of(failed), GUARDED) == "outcome is FAILURE, not SUCCESS"
    own = shapes.enrollment_event(actor=own_account(), client_id=OWN_CLIENT_ID)
    assert screen(fact_of(own), GUARDED) == LOOP_ACCOUNT


# --- SMS and voice twins --------------------------------------------------------------------


def test_phone_twins_share_the_phone_family() -> None:
    sms, voice = (fact_of(event) for event in shapes.phone_twins())
    assert (twin_family(sms), twin_family(voice)) == ("phone", "phone")
    assert (screen(sms, DEFAULT), screen(voice, DEFAULT)) == (None, None)


def test_classic_sms_and_call_factors_are_in_the_phone_family_too() -> None:
    # Classic sends no twins, but pairing is by same user and same timestamp only
    sms = fact_of(shapes.enrollment_event(factor="SMS_FACTOR"))
    call = fact_of(shapes.enrollment_event(factor="CALL_FACTOR"))
    assert (twin_family(sms), twin_family(call)) == ("phone", "phone")


@pytest.mark.parametrize("event", [
    shapes.enrollment_event(engine="identity_engine", authenticator="Email", method="EMAIL"),
    shapes.enrollment_event(engine="identity_engine", method="PUSH"),
    shapes.classic_activate(),
    shapes.factor_event("user.mfa.factor.deactivate", reason="User reset SMS_FACTOR factor"),
    shapes.factor_event("user.mfa.factor.suspend", reason="User suspended CALL_FACTOR factor"),
    shapes.enrollment_event(engine="identity_engine", authenticator="Phone", method="SMS",
                            target_user=shapes.user(user_id=None)),
    shapes.enrollment_event(engine="identity_engine", authenticator="Phone", method="SMS",
                            published=""),
    shapes.sparse_event(),
], ids=["email", "push", "corpus-email", "deactivate-sms", "suspend-voice", "no-user-id",
        "no-published", "sparse"])
def test_no_twin_family(event: dict[str, Any]) -> None:
    assert twin_family(fact_of(event)) is None
