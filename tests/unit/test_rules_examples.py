"""The shipped examples and docs/rules.md: the worked examples decide as the docs say, and every
YAML block in the docs is either a verbatim excerpt of a shipped file or loads as written."""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_rules_shapes import (
    api_enrolled,
    classic_enrollment,
    fact_of,
    oie_enrollment,
)

from factorflow.domain.actions import Enrichment, RecentEvent
from factorflow.enrichment.directory import DirectoryEnrichment
from factorflow.errors import InvalidRules
from factorflow.rules import Decision, evaluate, load_rules, parse_rules

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "rules.md"
EXAMPLES = Path(str(resources.files("factorflow").joinpath("examples")))
ALL = load_rules(EXAMPLES / "rules.example.yaml")
FIRST = load_rules(EXAMPLES / "rules.first-match.example.yaml")
DIRECTORY = DirectoryEnrichment.from_file(EXAMPLES / "directory.example.yaml")

DANA = {"id": "00u1privileged0001", "type": "User", "alternateId": "dana.admin@example.com",
        "displayName": "Dana Admin"}
LEE = {"id": "00u1sales00000003", "type": "User", "alternateId": "lee.sales@example.com",
       "displayName": "Lee Sales"}
HELPDESK = {"id": "00u1helpdesk000002", "type": "User", "alternateId": "helpdesk@example.com",
            "displayName": "Help Desk"}


def as_user(event: dict[str, Any], user: dict[str, Any], actor: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    event["target"] = [user, *(t for t in event["target"] if t["type"] != "User")]
    event["actor"] = actor or user
    return event


def decide(ruleset: Any, event: dict[str, Any], recent: tuple[RecentEvent, ...] = ()) -> Decision:
    fact = fact_of(event)
    return evaluate(ruleset, fact, DIRECTORY.lookup(fact.user), recent)


def summary(decision: Decision) -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
    return decision.matched_rules, [(a.rule_id, a.action_id, a.kind) for a in decision.actions]


# --- the worked examples of docs/rules.md ----------------------------------------------------


def test_privileged_user_enrolls_a_security_key_after_a_reset() -> None:
    reset = RecentEvent("r-1", "reset_all", "unknown", "2026-03-15T08:22:14.000000Z")
    decision = decide(ALL, as_user(oie_enrollment(), DANA), (reset,))
    assert summary(decision) == (
        ("privileged-enrollment", "passwordless-checkpoint", "reset-then-enroll"),
        [("privileged-enrollment", "ticket", "jira"), ("privileged-enrollment", "audit", "audit"),
         ("privileged-enrollment", "notify", "slack"),
         ("passwordless-checkpoint", "checkpoint", "checkpoint"),
         ("reset-then-enroll", "page", "pagerduty")],
    )
    assert decision.failed_actions == ()
    ticket = decision.actions[0].params
    assert ticket["summary"] == ("MFA enrollment by privileged user dana.admin@example.com: "
                                 "webauthn")
    assert ticket["description"] == (
        "Dana Admin (dana.admin@example.com) enrolled webauthn (phishing_resistant).\n"
        "Enrolled by: self\n"
        "When: 2026-03-15T10:22:14.000Z from Canada\n"
        "Title: Domain Administrator; groups: Helpdesk, Privileged Access\n"
        f"Okta event: {decision.event_uuid}\n")
    assert decision.actions[3].params == {"campaign": "passwordless-2026", "factor": "webauthn"}
    assert [s.key for s in decision.suppressions] == [
        "privileged-enrollment|user.id=00u1privileged0001|factor.type=webauthn",
        "reset-then-enroll|user.id=00u1privileged0001"]


def test_privileged_by_title_alone() -> None:
    directory = DirectoryEnrichment.from_file(EXAMPLES / "directory.example.csv")
    fact = fact_of(as_user(oie_enrollment("Okta Verify", "PUSH", None), DANA))
    by_title = Enrichment(source="directory", found=True,
                          profile={"title": "Sysadmin"})
    assert not evaluate(ALL, fact, by_title).matched_rules
    by_title = Enrichment(source="directory", found=True, profile={"title": "IT Admin"})
    assert evaluate(ALL, fact, by_title).matched_rules == ("privileged-enrollment",)
    assert summary(evaluate(ALL, fact, directory.lookup(fact.user)))[0] == (
        "privileged-enrollment",)


def test_everyone_else_is_stored_for_reporting() -> None:
    decision = decide(ALL, as_user(classic_enrollment("SMS_FACTOR"), LEE))
    assert summary(decision) == ((), [("defaults", "report", "report")])
    assert decision.used_defaults


def test_admin_enrolled_factor_alert() -> None:
    decision = decide(ALL, as_user(classic_enrollment("SMS_FACTOR"), LEE, HELPDESK))
    assert summary(decision) == (
        ("admin-enrolled-factor",),
        [("admin-enrolled-factor", "alert", "slack"),
         ("admin-enrolled-factor", "register", "register")])
    assert dict(decision.actions[1].params) == {
        "register": "admin-enrolled-factors", "user": "lee.sales@example.com",
        "actor": "helpdesk@example.com"}
    assert decision.actions[0].params["text"] == (
        "sms was enrolled for lee.sales@example.com by admin helpdesk@example.com")


def test_passkey_for_a_regular_user_only_checkpoints() -> None:
    decision = decide(ALL, as_user(oie_enrollment("Passkey", None, None), LEE))
    assert summary(decision) == (
        ("passwordless-checkpoint",),
        [("passwordless-checkpoint", "checkpoint", "checkpoint")])


def test_reset_more_than_a_day_before_does_not_page() -> None:
    old = RecentEvent("r-1", "deactivation", "webauthn", "2026-03-14T10:00:00.000000Z")
    decision = decide(ALL, as_user(oie_enrollment("Okta Verify", "PUSH", None), LEE), (old,))
    assert decision.used_defaults


def test_first_match_example() -> None:
    assert summary(decide(FIRST, api_enrolled())) == (("ignore-provisioning",), [])
    india = {"country": "India"}
    privileged = decide(FIRST, as_user(classic_enrollment("SMS_FACTOR", **india), DANA))
    assert summary(privileged) == (
        ("privileged-enrollment",),
        [("privileged-enrollment", "ticket", "servicenow"),
         ("privileged-enrollment", "audit", "audit")])
    assert [t.status.value for t in privileged.trace] == [
        "not_matched", "matched", "not_evaluated", "not_evaluated"]
    weak = decide(FIRST, as_user(classic_enrollment("EMAIL_FACTOR", **india), LEE))
    assert summary(weak) == (("weak-factor",), [("weak-factor", "email", "email")])
    assert weak.actions[0].params["to"] == "lee.sales@example.com"
    passkey = decide(FIRST, as_user(oie_enrollment("Passkey", None, None), LEE))
    assert summary(passkey) == (("everyone-else",), [("everyone-else", "report", "report")])


# --- the docs cannot rot -------------------------------------------------------------------

BLOCK = re.compile(r"<!-- (?P<marker>[^>]*?) -->\n```[a-z]*\n(?P<body>.*?)```", re.DOTALL)


def blocks(marker: str) -> list[str]:
    return [m["body"] for m in BLOCK.finditer(DOCS.read_text()) if m["marker"] == marker]


def excerpts() -> list[tuple[str, str]]:
    found = []
    for m in BLOCK.finditer(DOCS.read_text()):
        if m["marker"].startswith("from: "):
            found.append((m["marker"].removeprefix("from: "), m["body"]))
    return found


@pytest.mark.parametrize(("path", "body"), excerpts())
def test_doc_excerpts_are_verbatim_parts_of_the_shipped_files(path: str, body: str) -> None:
    assert body in (ROOT / path).read_text()


def test_doc_blocks_load_as_written() -> None:
    assert len(excerpts()) >= 8
    whens = blocks("when")
    assert len(whens) >= 5
    for when in whens:
        body = textwrap.indent(when, "      ")
        parse_rules(f"version: 1\nmatch: all\nrules:\n  - id: doc\n    actions: []\n    when:\n"
                    f"{body}", source="docs")
    files = blocks("rules")
    assert files
    for text in files:
        parse_rules(text, source="docs")


def test_doc_error_examples_are_what_the_loader_says() -> None:
    bad, expected = blocks("bad-rules"), blocks("problems")
    assert len(bad) == len(expected) >= 2
    for text, problems in zip(bad, expected, strict=True):
        with pytest.raises(InvalidRules) as raised:
            parse_rules(text, source="rules.yaml")
        assert raised.value.problems == problems.splitlines()
