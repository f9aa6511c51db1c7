"""``evaluate``: match semantics, defaults, rendered actions, idempotency and suppression keys,
template failures and the sandbox, the decision record."""

from __future__ import annotations

import textwrap

import orjson
from tests.unit.test_rules_shapes import (
    USER_ID,
    USER_LOGIN,
    admin_enrolled,
    corpus_activation,
    fact_of,
    oie_enrollment,
)

from factorflow.domain.actions import Enrichment, RecentEvent, idempotency_key
from factorflow.rules import RuleSet, RuleStatus, evaluate, parse_rules

NOBODY = Enrichment(source="none", found=False)
DANA = Enrichment(
    source="directory", found=True,
    profile={"title": "Domain Administrator", "manager": None},
    groups=({"id": "00g1privileged01", "name": "Privileged Access"}, {"name": "Everyone"}),
)
WEBAUTHN = fact_of(oie_enrollment(uuid="5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"))

TWO_RULES = """
version: 1
match: {match}
rules:
  - id: enrollments
    when: {{kind: [enrollment]}}
    actions:
      - {{id: audit, kind: audit}}
  - id: strong
    when: {{strength: [phishing_resistant]}}
    actions:
      - id: cp
        kind: checkpoint
        params: {{campaign: passwordless-2026}}
  - id: never
    when: {{kind: [reset_all]}}
    actions:
      - {{id: page, kind: pagerduty}}
"""


def rules(text: str) -> RuleSet:
    return parse_rules(textwrap.dedent(text), source="rules.yaml")


def test_match_all_collects_every_matching_rule_in_file_order() -> None:
    decision = evaluate(rules(TWO_RULES.format(match="all")), WEBAUTHN, NOBODY)
    assert decision.matched_rules == ("enrollments", "strong")
    assert [(a.rule_id, a.action_id, a.kind) for a in decision.actions] == [
        ("enrollments", "audit", "audit"), ("strong", "cp", "checkpoint")]
    assert [(t.rule_id, t.status) for t in decision.trace] == [
        ("enrollments", RuleStatus.MATCHED), ("strong", RuleStatus.MATCHED),
        ("never", RuleStatus.NOT_MATCHED)]
    assert not decision.used_defaults


def test_match_first_stops_at_the_first_matching_rule() -> None:
    decision = evaluate(rules(TWO_RULES.format(match="first")), WEBAUTHN, NOBODY)
    assert decision.matched_rules == ("enrollments",)
    assert [(a.rule_id, a.action_id) for a in decision.actions] == [("enrollments", "audit")]
    assert [(t.rule_id, t.status) for t in decision.trace] == [
        ("enrollments", RuleStatus.MATCHED), ("strong", RuleStatus.NOT_EVALUATED),
        ("never", RuleStatus.NOT_EVALUATED)]
    assert decision.trace[1].conditions == ()


def test_match_first_skips_rules_that_do_not_match() -> None:
    text = TWO_RULES.format(match="first").replace("kind: [enrollment]", "kind: [update]")
    decision = evaluate(rules(text), WEBAUTHN, NOBODY)
    assert decision.matched_rules == ("strong",)
    assert [t.status for t in decision.trace] == [
        RuleStatus.NOT_MATCHED, RuleStatus.MATCHED, RuleStatus.NOT_EVALUATED]


def test_a_matching_rule_without_actions_still_counts_as_a_match() -> None:
    ruleset = rules("""
        version: 1
        match: first
        rules:
          - {id: ignore, when: {kind: [enrollment]}, actions: []}
          - {id: all, actions: [{id: audit, kind: audit}]}
    """)
    decision = evaluate(ruleset, WEBAUTHN, NOBODY)
    assert decision.matched_rules == ("ignore",)
    assert decision.actions == ()
    assert not decision.used_defaults


def test_disabled_rules_never_match() -> None:
    text = TWO_RULES.format(match="all").replace(
        "  - id: enrollments\n", "  - id: enrollments\n    enabled: false\n")
    decision = evaluate(rules(text), WEBAUTHN, NOBODY)
    assert decision.matched_rules == ("strong",)
    assert decision.trace[0].status is RuleStatus.DISABLED


def test_defaults_apply_only_when_no_rule_matches() -> None:
    email = fact_of(corpus_activation())
    text = TWO_RULES.format(match="all").replace("kind: [enrollment]", "kind: [update]")
    decision = evaluate(rules(text), email, NOBODY)
    assert decision.matched_rules == ()
    assert decision.used_defaults
    assert [(a.rule_id, a.action_id, a.kind, dict(a.params)) for a in decision.actions] == [
        ("defaults", "report", "report", {})]
    assert decision.actions[0].idempotency_key == idempotency_key(email.uuid, "defaults", "report")

    custom = rules("""
        version: 1
        match: all
        defaults:
          actions:
            - id: unmatched
              kind: webhook
              params: {url: "https://example.com/in", secret: hooks, event: "{{ fact.uuid }}"}
        rules: []
    """)
    decision = evaluate(custom, email, NOBODY)
    assert [(a.rule_id, dict(a.params)) for a in decision.actions] == [
        ("defaults", {"url": "https://example.com/in", "secret": "hooks", "event": email.uuid})]
    silent = rules("version: 1\nmatch: all\ndefaults: {actions: []}\nrules: []\n")
    assert evaluate(silent, email, NOBODY).actions == ()


RENDERING = """
version: 1
match: all
rules:
  - id: privileged
    description: Privileged enrollment
    when: {groups: {any: [Privileged Access]}}
    actions:
      - id: ticket
        kind: jira
        params:
          project: SEC
          priority: 2
          urgent: true
          summary: >-
            {{ fact.user.login }} enrolled {{ fact.factor.type }}
            ({{ fact.factor.strength }})
          labels: ["{{ rule.id }}", "{{ action.kind }}", plain]
          fields:
            title: "{{ enrichment.profile.title }}"
            groups: "{{ enrichment.group_names | join(', ') }}"
            country: "[{{ fact.client.zone }}]"
            rule: "{{ rule.description }}"
"""


def test_params_are_rendered_over_fact_enrichment_rule_and_action() -> None:
    decision = evaluate(rules(RENDERING), WEBAUTHN, DANA)
    (ticket,) = decision.actions
    assert dict(ticket.params) == {
        "project": "SEC",
        "priority": 2,
        "urgent": True,
        "summary": f"{USER_LOGIN} enrolled webauthn (phishing_resistant)",
        "labels": ["privileged", "jira", "plain"],
        "fields": {
            "title": "Domain Administrator",
            "groups": "Everyone, Privileged Access",
            "country": "[]",  # a null fact field renders as nothing
            "rule": "Privileged enrollment",
        },
    }
    assert ticket.idempotency_key == idempotency_key(WEBAUTHN.uuid, "privileged", "ticket")
    assert decision.failed_actions == ()


def test_idempotency_keys_are_stable_across_evaluations_and_differ_per_action() -> None:
    ruleset = rules(TWO_RULES.format(match="all"))
    first = evaluate(ruleset, WEBAUTHN, NOBODY)
    again = evaluate(ruleset, fact_of(oie_enrollment(uuid=WEBAUTHN.uuid)), DANA)
    assert [a.idempotency_key for a in first.actions] == [a.idempotency_key for a in again.actions]
    assert len({a.idempotency_key for a in first.actions}) == 2
    other = evaluate(ruleset, fact_of(oie_enrollment()), NOBODY)
    assert not {a.idempotency_key for a in other.actions} & {a.idempotency_key
                                                             for a in first.actions}


def test_a_missing_value_fails_that_action_only() -> None:
    ruleset = rules("""
        version: 1
        match: all
        rules:
          - id: r
            actions:
              - id: good
                kind: slack
                params: {text: "{{ fact.uuid }}"}
              - id: bad
                kind: slack
                params: {text: "manager: {{ enrichment.profile.manager_email }}"}
              - id: fallback
                kind: slack
                params: {text: "manager: {{ enrichment.profile.manager_email | default('n/a') }}"}
    """)
    decision = evaluate(ruleset, WEBAUTHN, DANA)
    assert [(a.action_id, dict(a.params)) for a in decision.actions] == [
        ("good", {"text": WEBAUTHN.uuid}), ("fallback", {"text": "manager: n/a"})]
    (failed,) = decision.failed_actions
    assert (failed.rule_id, failed.action_id, failed.kind) == ("r", "bad", "slack")
    assert failed.error == (
        "params.text: UndefinedError: 'dict object' has no attribute 'manager_email'")
    assert failed.idempotency_key == idempotency_key(WEBAUTHN.uuid, "r", "bad")


def test_a_fact_without_user_fails_templates_that_need_one() -> None:
    event = oie_enrollment(target=[{"type": "AppInstance", "id": "0oa1", "displayName": "App"}])
    event["actor"] = {"id": "0oa1system", "type": "SystemPrincipal"}
    fact = fact_of(event)
    assert fact.user is None
    ruleset = rules("""
        version: 1
        match: all
        rules:
          - id: r
            actions:
              - {id: a, kind: email, params: {to: "{{ fact.user.login }}"}}
    """)
    decision = evaluate(ruleset, fact, NOBODY)
    assert decision.actions == ()
    assert decision.failed_actions[0].error == (
        "params.to: UndefinedError: 'None' has no attribute 'login'")


def test_the_sandbox_refuses_unsafe_access_at_render_time() -> None:
    # Names starting with '_' are refused at load; the sandbox still guards what slips past.
    ruleset = rules("""
        version: 1
        match: all
        rules:
          - id: r
            actions:
              - id: attr
                kind: slack
                params: {text: "{{ fact | attr('__class__') }}"}
              - id: mro
                kind: slack
                params: {text: "{{ (fact.uuid | attr('__class__')).mro() }}"}
              - id: range
                kind: slack
                params: {text: "{{ range(10000000) | length }}"}
              - id: format
                kind: slack
                params: {text: "{{ '{0.__class__}'.format(fact) }}"}
    """)
    decision = evaluate(ruleset, WEBAUTHN, NOBODY)
    assert decision.actions == ()
    errors = {failed.action_id: failed.error for failed in decision.failed_actions}
    assert errors["attr"].startswith("params.text: SecurityError: access to attribute "
                                     "'__class__' of 'dict' object is unsafe")
    assert errors["mro"].startswith("params.text: SecurityError: access to attribute "
                                    "'__class__' of 'str' object is unsafe")
    assert errors["range"] == (
        "params.text: range(10000000) would have 10000000 items, more than the limit of 10000 "
        "(template_limits.max_loop_iterations)")
    assert errors["format"].startswith("params.text: SecurityError: access to attribute "
                                       "'__class__' of 'dict' object is unsafe")


def test_suppression_keys_for_matched_rules() -> None:
    ruleset = rules("""
        version: 1
        match: all
        rules:
          - id: per-user-factor
            actions: [{id: a, kind: audit}]
            suppress: {key: [user.id, factor.type], window_hours: 24}
          - id: per-country
            actions: []
            suppress: {key: [client.country, client.zone, user.login], window_hours: 1.5}
          - id: not-matched
            when: {kind: [reset_all]}
            actions: []
            suppress: {key: [user.id], window_hours: 24}
          - id: no-suppress
            actions: []
    """)
    event = oie_enrollment(country="Bosnia|Herzegovina=50%")
    decision = evaluate(ruleset, fact_of(event), NOBODY)
    assert [s.to_dict() for s in decision.suppressions] == [
        {"rule_id": "per-user-factor", "key": f"per-user-factor|user.id={USER_ID}"
         "|factor.type=webauthn", "window_hours": 24},
        {"rule_id": "per-country", "key": "per-country|client.country=Bosnia%7CHerzegovina%3D50%25"
         f"|client.zone=|user.login={USER_LOGIN}", "window_hours": 1.5},
    ]
    # the key depends on the named fields only
    again = evaluate(ruleset, fact_of(oie_enrollment(country="Bosnia|Herzegovina=50%")), DANA)
    assert again.suppressions == decision.suppressions


def test_decision_to_dict_is_plain_json() -> None:
    ruleset = rules(RENDERING.replace("{{ fact.factor.type }}", "{{ fact.nope }}"))
    admin = fact_of(admin_enrolled())
    decision = evaluate(ruleset, admin, DANA, [RecentEvent("x", "reset_all", "sms", "2026-01-01")])
    data = orjson.loads(orjson.dumps(decision.to_dict()))
    assert data["event_uuid"] == admin.uuid
    assert data["rules_source"] == "rules.yaml"
    assert data["rules_digest"] == ruleset.digest
    assert data["match"] == "all"
    assert data["matched_rules"] == ["privileged"]
    assert data["used_defaults"] is False
    assert data["actions"] == []
    assert data["failed_actions"] == [{
        "rule_id": "privileged", "action_id": "ticket", "kind": "jira",
        "idempotency_key": idempotency_key(admin.uuid, "privileged", "ticket"),
        "error": "params.summary: UndefinedError: 'dict object' has no attribute 'nope'",
    }]
    assert data["trace"] == [{
        "rule_id": "privileged", "status": "matched",
        "conditions": [{"name": "groups", "passed": True,
                        "detail": "groups any of [Privileged Access]: member of "
                                  "Privileged Access"}],
    }]
