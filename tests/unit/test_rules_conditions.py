"""Every condition, holding and not holding, through a loaded rules file and ``evaluate``."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from tests.unit.test_rules_shapes import (
    admin_enrolled,
    api_enrolled,
    classic_enrollment,
    corpus_activation,
    fact_of,
    oie_enrollment,
    reset_all,
    system_enrolled,
)

from factorflow.domain.actions import Enrichment, RecentEvent
from factorflow.domain.facts import Fact
from factorflow.rules import ConditionResult, RuleStatus, evaluate, parse_rules

NOBODY = Enrichment(source="directory", found=False)
DANA = Enrichment(
    source="directory",
    found=True,
    profile={"department": "IT", "title": "Domain Administrator", "costCenter": "CC-100",
             "level": 7, "contractor": False, "languages": ["en", "fr"]},
    groups=({"id": "00g1privileged01", "name": "Privileged Access"},
            {"id": "00g1helpdesk0001", "name": "Helpdesk"}),
)


def check(
    when: str,
    fact: Fact,
    enrichment: Enrichment = NOBODY,
    recent: tuple[RecentEvent, ...] = (),
) -> tuple[bool, tuple[ConditionResult, ...]]:
    """Whether a rule with this ``when`` block matches, and its condition results."""
    body = textwrap.indent(textwrap.dedent(when).strip(), " " * 6)
    rules = parse_rules(
        "version: 1\nmatch: all\nrules:\n  - id: probe\n    actions: []\n    when:\n" + body,
        source="probe.yaml",
    )
    decision = evaluate(rules, fact, enrichment, recent)
    (trace,) = decision.trace
    assert (trace.status is RuleStatus.MATCHED) == (decision.matched_rules == ("probe",))
    return trace.status is RuleStatus.MATCHED, trace.conditions


def holds(when: str, fact: Fact, enrichment: Enrichment = NOBODY, **kw: Any) -> str:
    matched, conditions = check(when, fact, enrichment, **kw)
    assert matched, conditions
    return "; ".join(condition.detail for condition in conditions)


def fails(when: str, fact: Fact, enrichment: Enrichment = NOBODY, **kw: Any) -> str:
    matched, conditions = check(when, fact, enrichment, **kw)
    assert not matched, conditions
    return "; ".join(c.detail for c in conditions if not c.passed)


WEBAUTHN = fact_of(oie_enrollment())
EMAIL_CLASSIC = fact_of(corpus_activation())


def test_kind() -> None:
    assert holds("kind: [enrollment]", WEBAUTHN) == "kind=enrollment in [enrollment]"
    assert fails("kind: [reset_all, deactivation]", WEBAUTHN) == (
        "kind=enrollment not in [reset_all, deactivation]")
    assert holds("kind: {not_in: [reset_all]}", WEBAUTHN)
    assert fails("kind: [enrollment]", fact_of(reset_all())) == "kind=reset_all not in [enrollment]"


def test_factor_type() -> None:
    assert holds("factor_type: {in: [webauthn, u2f]}", WEBAUTHN) == (
        "factor_type=webauthn in [webauthn, u2f]")
    assert fails("factor_type: {in: [sms, voice]}", WEBAUTHN)
    assert holds("factor_type: {not_in: [sms]}", EMAIL_CLASSIC)
    assert fails("factor_type: {not_in: [email]}", EMAIL_CLASSIC) == "factor_type=email in [email]"


def test_strength() -> None:
    assert holds("strength: {in: [phishing_resistant]}", WEBAUTHN) == (
        "strength=phishing_resistant in [phishing_resistant]")
    assert fails("strength: {in: [phishing_resistant]}", EMAIL_CLASSIC) == (
        "strength=sms_voice_email not in [phishing_resistant]")
    assert holds("strength: {not_in: [sms_voice_email, password_question]}", WEBAUTHN)
    assert fails("strength: {not_in: [sms_voice_email]}", EMAIL_CLASSIC)


@pytest.mark.parametrize(
    ("event", "enrolled_by"),
    [
        (oie_enrollment(), "self"),
        (admin_enrolled(), "admin"),
        (api_enrolled(), "api"),
        (system_enrolled(), "system"),
    ],
)
def test_enrolled_by(event: dict[str, Any], enrolled_by: str) -> None:
    fact = fact_of(event)
    assert holds(f"enrolled_by: {{in: [{enrolled_by}]}}", fact) == (
        f"enrolled_by={enrolled_by} in [{enrolled_by}]")
    others = [v for v in ("self", "admin", "api", "system", "unknown") if v != enrolled_by]
    assert fails(f"enrolled_by: {{in: [{', '.join(others)}]}}", fact)
    assert holds(f"enrolled_by: {{not_in: [{', '.join(others)}]}}", fact)


def test_engine() -> None:
    assert holds("engine: identity_engine", WEBAUTHN) == (
        "engine=identity_engine in [identity_engine]")
    assert fails("engine: [identity_engine]", fact_of(classic_enrollment())) == (
        "engine=classic not in [identity_engine]")
    assert holds("engine: {not_in: [classic]}", WEBAUTHN)


def test_country_ignores_case_and_missing_is_in_no_list() -> None:
    assert holds("country: {in: [india]}", EMAIL_CLASSIC) == "country=India in [india]"
    assert fails("country: {in: [Canada]}", EMAIL_CLASSIC)
    assert holds("country: {not_in: [Canada, United States]}", EMAIL_CLASSIC)
    assert fails("country: {not_in: [India]}", EMAIL_CLASSIC)
    event = oie_enrollment()
    event["client"]["geographicalContext"]["country"] = None
    nowhere = fact_of(event)
    assert fails("country: {in: [Canada]}", nowhere) == "country=(none) not in [Canada]"
    assert holds("country: {not_in: [Canada]}", nowhere)


def test_zone() -> None:
    inside = fact_of(oie_enrollment(zone="Corporate VPN"))
    assert holds("zone: {in: [corporate vpn]}", inside) == "zone=Corporate VPN in [corporate vpn]"
    assert fails("zone: {not_in: [Corporate VPN]}", inside)
    # Okta's "null" zone is no zone.
    assert fails("zone: {in: [Corporate VPN]}", WEBAUTHN) == "zone=(none) not in [Corporate VPN]"
    assert holds("zone: {not_in: [Corporate VPN]}", WEBAUTHN)


def test_profile_equals_and_not_equals() -> None:
    assert holds("profile: {department: {equals: IT}}", WEBAUTHN, DANA) == (
        "profile.department=IT: equals IT")
    assert fails("profile: {department: {equals: it}}", WEBAUTHN, DANA) == (
        "profile.department=IT: expected equals it")
    assert holds("profile: {department: {not_equals: Sales}}", WEBAUTHN, DANA)
    assert fails("profile: {department: {not_equals: IT}}", WEBAUTHN, DANA)
    # numbers and booleans compare as text
    assert holds("profile: {level: {equals: 7}, contractor: {equals: false}}", WEBAUTHN, DANA)


def test_profile_in_not_in_and_lists() -> None:
    assert holds("profile: {costCenter: {in: [CC-100, CC-200]}}", WEBAUTHN, DANA)
    assert fails("profile: {costCenter: {in: [CC-300]}}", WEBAUTHN, DANA)
    assert holds("profile: {costCenter: {not_in: [CC-300]}}", WEBAUTHN, DANA)
    assert fails("profile: {costCenter: {not_in: [CC-100]}}", WEBAUTHN, DANA)
    # a multi-valued attribute holds if any of its items does
    assert holds("profile: {languages: {equals: fr}}", WEBAUTHN, DANA) == (
        "profile.languages=en, fr: equals fr")
    assert fails("profile: {languages: {not_in: [fr]}}", WEBAUTHN, DANA)


def test_profile_matches() -> None:
    assert holds('profile: {title: {matches: "(?i)admin"}}', WEBAUTHN, DANA) == (
        "profile.title=Domain Administrator: matches /(?i)admin/")
    assert fails('profile: {title: {matches: "^Admin"}}', WEBAUTHN, DANA) == (
        "profile.title=Domain Administrator: expected matches /^Admin/")


def test_profile_exists_and_unknown_user() -> None:
    assert holds("profile: {title: {exists: true}, manager: {exists: false}}", WEBAUTHN, DANA)
    assert fails("profile: {manager: {exists: true}}", WEBAUTHN, DANA)
    detail = fails("profile: {department: {equals: IT}}", WEBAUTHN, NOBODY)
    assert detail == "profile.department=(none) (user not found in directory): expected equals IT"
    # a missing attribute is in no list
    assert holds("profile: {department: {not_in: [IT]}}", WEBAUTHN, NOBODY)


def test_profile_all_tests_of_an_attribute_must_hold() -> None:
    assert holds('profile: {title: {matches: "Admin", not_equals: Admin}}', WEBAUTHN, DANA)
    assert fails('profile: {title: {matches: "Admin", equals: Admin}}', WEBAUTHN, DANA) == (
        "profile.title=Domain Administrator: expected equals Admin")


def test_groups_any_all_none_by_name_or_id() -> None:
    assert holds("groups: {any: [privileged access, Finance]}", WEBAUTHN, DANA) == (
        "groups any of [privileged access, Finance]: member of privileged access")
    assert holds("groups: {any: [00g1helpdesk0001]}", WEBAUTHN, DANA)
    assert fails("groups: {any: [Finance]}", WEBAUTHN, DANA) == (
        "groups any of [Finance]: member of none of them")
    assert holds("groups: {all: [Privileged Access, 00g1helpdesk0001]}", WEBAUTHN, DANA)
    assert fails("groups: {all: [Privileged Access, Finance]}", WEBAUTHN, DANA)
    assert holds("groups: {none: [Finance, Contractors]}", WEBAUTHN, DANA)
    assert fails("groups: {none: [Helpdesk]}", WEBAUTHN, DANA)
    assert fails("groups: {any: [Helpdesk], none: [Privileged Access]}", WEBAUTHN, DANA)
    assert "user not found in directory" in fails("groups: {any: [Helpdesk]}", WEBAUTHN, NOBODY)
    assert holds("groups: {none: [Helpdesk]}", WEBAUTHN, NOBODY)


def _recent(kind: str, published_at: str, factor_type: str = "webauthn",
            uuid: str = "r-1") -> RecentEvent:
    return RecentEvent(uuid=uuid, kind=kind, factor_type=factor_type, published_at=published_at)


RESET_WHEN = """
recent_factor_event:
  within_hours: 24
  kinds: [reset_all, deactivation]
"""


def test_recent_factor_event_holds_within_the_window() -> None:
    # WEBAUTHN was published 2026-03-15T10:22:14Z
    recent = (_recent("reset_all", "2026-03-15T08:22:14.000000Z"),)
    detail = holds(RESET_WHEN, WEBAUTHN, recent=recent)
    assert detail == ("reset_all webauthn at 2026-03-15T08:22:14.000000Z (2.0 h before), "
                      "within 24 h before")
    # exactly at the edge of the window still counts
    assert holds(RESET_WHEN, WEBAUTHN, recent=(_recent("deactivation", "2026-03-14T10:22:14Z"),))


def test_recent_factor_event_fails_outside_the_window_or_for_other_kinds() -> None:
    too_old = (_recent("reset_all", "2026-03-14T10:22:13Z"),)
    assert fails(RESET_WHEN, WEBAUTHN, recent=too_old) == (
        "no reset_all/deactivation event within 24 h before (1 recent event(s) checked)")
    after = (_recent("reset_all", "2026-03-15T11:00:00Z"),)
    assert fails(RESET_WHEN, WEBAUTHN, recent=after)
    other_kind = (_recent("enrollment", "2026-03-15T09:00:00Z"),)
    assert fails(RESET_WHEN, WEBAUTHN, recent=other_kind)
    unparseable = (_recent("reset_all", "yesterday"),)
    assert fails(RESET_WHEN, WEBAUTHN, recent=unparseable)
    assert fails(RESET_WHEN, WEBAUTHN)


def test_recent_factor_event_ignores_the_event_itself_and_filters_factor_types() -> None:
    itself = (_recent("enrollment", "2026-03-15T10:22:14Z", uuid=WEBAUTHN.uuid),)
    assert fails("recent_factor_event: {within_hours: 1}", WEBAUTHN, recent=itself)
    when = "recent_factor_event: {within_hours: 2, factor_types: [sms, voice]}"
    sms = (_recent("enrollment", "2026-03-15T10:00:00Z", "sms"),)
    assert holds(when, WEBAUTHN, recent=sms)
    assert fails(when, WEBAUTHN, recent=(_recent("enrollment", "2026-03-15T10:00:00Z"),))


def test_recent_factor_event_without_a_usable_timestamp() -> None:
    event = oie_enrollment(published="2017-09-31T22:23:07.777Z")  # no such date
    fact = fact_of(event)
    assert fact.published_at is None
    recent = (_recent("reset_all", "2017-09-30T22:23:07Z"),)
    assert fails(RESET_WHEN, fact, recent=recent) == "this event has no usable timestamp"


def test_any_of_holds_when_one_branch_holds() -> None:
    when = """
    any_of:
      - groups: {any: [Finance]}
      - profile: {title: {matches: "(?i)admin"}}
    """
    detail = holds(when, WEBAUTHN, DANA)
    assert detail == "branch 2 holds: profile.title=Domain Administrator: matches /(?i)admin/"
    detail = fails(when, WEBAUTHN, NOBODY)
    assert detail.startswith("no branch holds: 1) groups any of [Finance]")
    assert "| 2) profile.title=(none)" in detail


def test_all_conditions_must_hold_and_every_one_is_traced() -> None:
    when = """
    kind: [enrollment]
    strength: {in: [phishing_resistant]}
    groups: {any: [Finance]}
    """
    matched, conditions = check(when, WEBAUTHN, DANA)
    assert not matched
    assert [(c.name, c.passed) for c in conditions] == [
        ("kind", True), ("strength", True), ("groups", False)]
    matched, conditions = check("{}", WEBAUTHN)
    assert matched and conditions == ()
