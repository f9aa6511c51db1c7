"""The text every connector builds from a fact (factorflow.connectors.text): one title per event
kind and one set of labels, used the same way by email, chat, paging and ticketing connectors;
and the reading of optional text params."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from factorflow.connectors import email, slack, teams
from factorflow.connectors.text import (
    KIND_TITLES,
    client_label,
    clip,
    event_sentence,
    event_title,
    fact_description,
    fact_fields,
    fact_summary,
    one_line,
    person_label,
    text_param,
    user_label,
)
from factorflow.domain.actions import ActionRequest
from factorflow.domain.facts import Client, EnrolledBy, EventKind, Person
from factorflow.errors import PermanentActionError
from tests.connectors.fakes import FACT

ADMIN = Person("00uADMIN", "helpdesk@example.com", "Help Desk", "User")


def request(**params: Any) -> ActionRequest:
    return ActionRequest("rule-1", "act-1", "slack", params, "ff-0123456789abcdef0123456789abcdef")


def test_every_kind_has_a_title() -> None:
    assert set(KIND_TITLES) == set(EventKind)
    assert event_title(FACT) == "MFA factor enrolled"
    reset = dataclasses.replace(FACT, kind=EventKind.RESET_ALL)
    assert event_title(reset) == "MFA factors reset"


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_connector_titles_an_event_kind_the_same_way(kind: EventKind) -> None:
    fact = dataclasses.replace(FACT, kind=kind)
    title = KIND_TITLES[kind]
    assert fact_summary(fact) == f"{title}: email for aps@google.com"  # jira, servicenow
    assert email.default_subject(fact) == f"{title}: aps@google.com (email)"
    card = teams.message(request(), fact)["attachments"][0]["content"]
    assert card["body"][0]["text"] == title
    _, blocks = slack.blocks(request(), fact)
    assert blocks[0]["text"]["text"] == title


def test_labels() -> None:
    assert user_label(FACT) == "aps@google.com"
    assert user_label(dataclasses.replace(FACT, user=None)) == "unknown user"
    assert user_label(dataclasses.replace(FACT, user=Person("00u1", None, None, None))) == "00u1"
    assert person_label(ADMIN) == "Help Desk <helpdesk@example.com>"
    assert person_label(Person("00u1", "a@example.com", "a@example.com", None)) == "a@example.com"
    assert person_label(None) == "unknown"
    assert client_label(FACT) == "1.1.1.1 (India)"
    assert client_label(dataclasses.replace(
        FACT, client=Client(ip=None, city="Berlin", state="Berlin", country="Germany"),
    )) == "unknown IP (Berlin, Berlin, Germany)"


def test_the_sentence_and_fields_name_who_acted_when_it_was_not_the_user() -> None:
    by_admin = dataclasses.replace(FACT, actor=ADMIN, enrolled_by=EnrolledBy.ADMIN)
    assert event_sentence(FACT) == "aps@google.com enrolled email (sms_voice_email)"
    assert event_sentence(by_admin) == (
        "aps@google.com enrolled email (sms_voice_email), by admin helpdesk@example.com")
    assert dict(fact_fields(by_admin))["Enrolled by"] == "admin (helpdesk@example.com)"
    assert dict(fact_fields(FACT))["Enrolled by"] == "self"


def test_the_description_has_one_line_per_aspect() -> None:
    lines = fact_description(FACT, request()).splitlines()
    assert lines[0] == f"Event: user.mfa.factor.activate ({FACT.uuid})"
    assert "Client: 1.1.1.1 (India)" in lines
    assert lines[-1] == "Rule: rule-1 / action act-1"


@pytest.mark.parametrize(("params", "expected"), [
    ({}, "fallback"),
    ({"text": None}, "fallback"),
    ({"text": "  \n "}, "fallback"),
    ({"text": " kept as written "}, " kept as written "),
    ({"text": 42}, "42"),
    ({"text": 1.5}, "1.5"),
])
def test_text_params_fall_back_when_absent_or_blank(params: dict[str, Any], expected: str) -> None:
    assert text_param(request(**params), "text", "fallback") == expected


@pytest.mark.parametrize(("value", "numbers"), [
    (["a"], True), ({"a": 1}, True), (True, True), (42, False),
])
def test_other_text_params_are_permanent_failures(value: Any, numbers: bool) -> None:
    with pytest.raises(PermanentActionError) as caught:
        text_param(request(text=value), "text", "fallback", numbers=numbers)
    assert str(caught.value) == "slack action rule-1/act-1: params.text must be text"


def test_cuts_end_with_an_ellipsis() -> None:
    assert clip("abcdef", 6) == "abcdef"
    assert clip("abcdefg", 6) == "abcde\u2026"
    assert one_line(" a\r\n b\tc ", 10) == "a b c"
    assert one_line("word " * 10, 12) == "word word w\u2026"
    assert one_line("abcd  efgh", 6) == "abcd\u2026"  # no space before the ellipsis
