"""Properties of ``evaluate`` over arbitrary events: it never raises, its record is plain JSON,
idempotency keys are stable, and ``match: first`` agrees with ``match: all``."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.unit.test_rules_shapes import corpus_events

from factorflow.domain.actions import Enrichment, RecentEvent, idempotency_key
from factorflow.okta.translate import KINDS, to_fact
from factorflow.rules import RuleSet, evaluate, parse_rules

EVERYTHING = """
version: 1
match: {match}
rules:
  - id: privileged
    when:
      kind: [enrollment, update]
      any_of:
        - groups: {{any: [Privileged Access, 00g1priv]}}
        - profile: {{title: {{matches: "(?i)admin"}}, level: {{in: [7, "8"]}}}}
        - profile: {{department: {{equals: IT, not_equals: HR}}, manager: {{exists: false}}}}
    actions:
      - id: ticket
        kind: jira
        params:
          summary: >-
            {{{{ fact.user.login }}}} {{{{ fact.factor.type }}}}
            {{{{ fact.client.ip_chain | join(',') }}}}
          text: >-
            {{{{ enrichment.profile.title | default('-') }}}}
            {{{{ enrichment.group_names | join(';') }}}}
          nested: [{{n: "{{{{ rule.id }}}}/{{{{ action.id }}}}"}}, 3, true, null]
    suppress: {{key: [user.id, factor.type, client.ip_chain, client.latitude], window_hours: 24}}
  - id: strong
    when:
      strength: {{in: [phishing_resistant, device_bound_push]}}
      factor_type: {{not_in: [unknown]}}
      engine: {{not_in: [unknown]}}
    actions:
      - {{id: cp, kind: checkpoint, params: {{campaign: passwordless-2026}}}}
  - id: elsewhere
    when:
      enrolled_by: {{in: [admin, api, system, unknown]}}
      country: {{not_in: [Canada]}}
      zone: {{not_in: [Corporate]}}
      groups: {{none: [Helpdesk], all: [Everyone]}}
    actions:
      - id: alert
        kind: slack
        params: {{text: "{{{{ fact.actor.login }}}} {{{{ fact.delay_seconds }}}}"}}
  - id: reset-then-enroll
    when:
      recent_factor_event: {{within_hours: 24, kinds: [reset_all, deactivation]}}
    actions:
      - {{id: page, kind: pagerduty, params: {{summary: "{{{{ fact.published_at[:10] }}}}"}}}}
    suppress: {{key: [user.login], window_hours: 1}}
"""

RULES_ALL: RuleSet = parse_rules(EVERYTHING.format(match="all"), source="all.yaml")
RULES_FIRST: RuleSet = parse_rules(EVERYTHING.format(match="first"), source="first.yaml")

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
timestamps = st.sampled_from([
    "2026-03-15T10:22:14.000Z", "2026-03-15T08:00:00Z", "2026-03-14T10:00:00.123456Z",
    "2017-09-31T22:23:07.777Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
    "2022-06-22 18:18:29.015", "redacted", "",
]) | st.text(max_size=30)
texts = (st.sampled_from(["00u1", "00u2", "Dana Admin", "dana@example.com", "null", " "])
         | json_values)


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return value | json_values


people = st.fixed_dictionaries({}, optional={
    "id": texts,
    "type": _maybe(st.sampled_from(["User", "SystemPrincipal", "PublicClientApp",
                                    "AuthenticatorEnrollment", "AppInstance"])),
    "alternateId": texts,
    "displayName": _maybe(st.sampled_from(["Okta Verify", "Phone", "Security Key or Biometric",
                                           "Email", "Password", "Dana"])),
    "detailEntry": _maybe(st.fixed_dictionaries({}, optional={
        "methodTypeUsed": _maybe(st.sampled_from(["PUSH", "SMS", "VOICE", "WEBAUTHN", "OTP",
                                                  "Use Okta FastPass"])),
        "methodUsedVerifiedProperties": _maybe(st.sampled_from(
            ["[DEVICE_BOUND, PHISHING_RESISTANT]", "[USER_PRESENCE]"])),
    })),
})
events = st.fixed_dictionaries({}, optional={
    "uuid": _maybe(st.sampled_from(["5d3c9a6e", "a", ""])),
    "published": _maybe(timestamps),
    "eventType": _maybe(st.sampled_from([*KINDS, "user.session.start"])),
    "actor": _maybe(people),
    "target": _maybe(st.lists(_maybe(people), max_size=3)),
    "outcome": _maybe(st.fixed_dictionaries({}, optional={
        "result": _maybe(st.just("SUCCESS")),
        "reason": _maybe(st.sampled_from(["User set up FIDO_WEBAUTHN factor",
                                          "User set up SMS_FACTOR factor", "User reset x"])),
    })),
    "client": _maybe(st.fixed_dictionaries({}, optional={
        "zone": _maybe(st.sampled_from(["null", "Corporate"])),
        "ipChain": _maybe(st.lists(st.fixed_dictionaries({"ip": texts}), max_size=2)),
        "geographicalContext": _maybe(st.fixed_dictionaries({}, optional={
            "country": _maybe(st.sampled_from(["Canada", "India"])),
            "geolocation": _maybe(st.fixed_dictionaries({"lat": json_values})),
        })),
    })),
    "transaction": _maybe(st.fixed_dictionaries({}, optional={
        "detail": _maybe(st.fixed_dictionaries({}, optional={"requestApiTokenId": texts}))})),
    "debugContext": _maybe(st.fixed_dictionaries({}, optional={
        "debugData": _maybe(st.fixed_dictionaries({}, optional={"factor": texts}))})),
    "authenticationContext": _maybe(st.fixed_dictionaries({}, optional={
        "externalSessionId": texts})),
    "legacyEventType": texts,
})
enrichments = st.builds(
    Enrichment,
    source=st.sampled_from(["directory", "okta", "none"]),
    found=st.booleans(),
    profile=st.dictionaries(st.sampled_from(["title", "level", "department", "manager", "x"]),
                            json_values, max_size=4),
    groups=st.lists(st.dictionaries(st.sampled_from(["id", "name"]),
                                    st.sampled_from(["Privileged Access", "00g1priv", "Everyone",
                                                     "Helpdesk", ""]) | st.text(max_size=8),
                                    max_size=2), max_size=3).map(tuple),
)
recents = st.lists(st.builds(
    RecentEvent,
    uuid=st.text(max_size=4),
    kind=st.sampled_from(["reset_all", "deactivation", "enrollment"]) | st.text(max_size=5),
    factor_type=st.sampled_from(["sms", "webauthn"]) | st.text(max_size=5),
    published_at=timestamps,
), max_size=4)

SETTINGS = hypothesis_settings(max_examples=150, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(event=events, enrichment=enrichments, recent=recents)
def test_evaluate_never_raises_and_its_record_is_json(
    event: dict[str, Any], enrichment: Enrichment, recent: list[RecentEvent]
) -> None:
    fact = to_fact(event, org="example")
    decision = evaluate(RULES_ALL, fact, enrichment, recent)
    data = orjson.loads(orjson.dumps(decision.to_dict()))
    assert data["event_uuid"] == fact.uuid
    assert set(data["matched_rules"]) <= {"privileged", "strong", "elsewhere", "reset-then-enroll"}
    # every planned action either rendered or failed, none vanished
    planned = sum(len(RULES_ALL.rule(r).actions) for r in decision.matched_rules)  # type: ignore[union-attr]
    if decision.used_defaults:
        planned = len(RULES_ALL.default_actions)
    assert len(decision.actions) + len(decision.failed_actions) == planned
    assert len(decision.trace) == len(RULES_ALL.rules)


@SETTINGS
@given(event=events, enrichment=enrichments, recent=recents)
def test_idempotency_keys_are_stable_and_distinct(
    event: dict[str, Any], enrichment: Enrichment, recent: list[RecentEvent]
) -> None:
    fact = to_fact(event)
    first = evaluate(RULES_ALL, fact, enrichment, recent)
    again = evaluate(RULES_ALL, to_fact(event), enrichment, list(recent))
    assert first == again
    keys = [(a.rule_id, a.action_id, a.idempotency_key) for a in first.actions] + [
        (f.rule_id, f.action_id, f.idempotency_key) for f in first.failed_actions]
    for rule_id, action_id, key in keys:
        assert key == idempotency_key(fact.uuid, rule_id, action_id)
    assert len({key for _, _, key in keys}) == len(keys)


@SETTINGS
@given(event=events, enrichment=enrichments, recent=recents)
def test_match_first_takes_the_first_of_match_all(
    event: dict[str, Any], enrichment: Enrichment, recent: list[RecentEvent]
) -> None:
    fact = to_fact(event)
    everything = evaluate(RULES_ALL, fact, enrichment, recent)
    first = evaluate(RULES_FIRST, fact, enrichment, recent)
    assert first.matched_rules == everything.matched_rules[:1]
    assert first.used_defaults == everything.used_defaults
    assert {a.rule_id for a in first.actions + first.failed_actions} <= set(first.matched_rules) | (
        {"defaults"} if first.used_defaults else set())


def test_every_corpus_event_evaluates() -> None:
    enrichment = Enrichment(source="directory", found=True, profile={"title": "Admin"},
                            groups=({"name": "Everyone"},))
    for event in corpus_events():
        decision = evaluate(RULES_ALL, to_fact(event), enrichment)
        assert decision.event_uuid == event["uuid"]
        assert decision.trace


SUPPRESSING = parse_rules(
    "version: 1\nmatch: all\nrules:\n  - id: r\n    actions: []\n"
    "    suppress: {key: [user.id, user.login], window_hours: 1}\n")


@SETTINGS
@given(first=st.tuples(st.text(max_size=6), st.text(max_size=6)),
       second=st.tuples(st.text(max_size=6), st.text(max_size=6)))
def test_suppression_keys_tell_different_values_apart(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    def key(user_id: str, login: str) -> str:
        event = {"uuid": "u", "eventType": "user.mfa.factor.activate",
                 "actor": {"id": user_id, "type": "User", "alternateId": login},
                 "target": [{"id": user_id, "type": "User", "alternateId": login}]}
        fact = to_fact(event)
        (suppression,) = evaluate(SUPPRESSING, fact, Enrichment("none", False)).suppressions
        return suppression.key

    # to_fact keeps non-blank texts as they are and makes blank ones null
    def seen(value: str) -> str:
        return value if value.strip() else ""

    same_values = (seen(first[0]), seen(first[1])) == (seen(second[0]), seen(second[1]))
    assert (key(*first) == key(*second)) == same_values
