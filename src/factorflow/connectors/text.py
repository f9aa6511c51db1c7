"""The text connectors build from a fact when a rule gives none, and the reading of the text
params a rule does give.

Every connector words an event the same way: one title per event kind, the same labels for the
user, the actor, the factor and the client, and the same cuts (an ellipsis where text is cut).
Chat and paging connectors use the one-sentence :func:`event_sentence` and :func:`fact_fields`;
ticketing connectors use :func:`fact_summary` and :func:`fact_description`.
"""

from __future__ import annotations

import re

from factorflow.connectors.base import param, where
from factorflow.domain.actions import ActionRequest
from factorflow.domain.facts import EnrolledBy, EventKind, Fact, Person
from factorflow.errors import PermanentActionError

# How connectors title a message about each kind of factor event.
KIND_TITLES = {
    EventKind.ENROLLMENT: "MFA factor enrolled",
    EventKind.DEACTIVATION: "MFA factor removed",
    EventKind.RESET_ALL: "MFA factors reset",
    EventKind.SUSPENSION: "MFA factor suspended",
    EventKind.UNSUSPENSION: "MFA factor unsuspended",
    EventKind.UPDATE: "MFA factor updated",
    EventKind.OTHER: "MFA event",
}
ELLIPSIS = "\u2026"
_WHITESPACE = re.compile(r"\s+")

# -- labels ------------------------------------------------------------------------------------


def event_title(fact: Fact) -> str:
    return KIND_TITLES.get(fact.kind, KIND_TITLES[EventKind.OTHER])


def user_label(fact: Fact) -> str:
    person = fact.user
    if person is None:
        return "unknown user"
    return person.login or person.display_name or person.id or "unknown user"


def actor_label(fact: Fact) -> str | None:
    person = fact.actor
    if person is None:
        return None
    return person.login or person.display_name or person.id


def person_label(person: Person | None) -> str:
    """``Display Name <login>`` when both are known, else whichever is."""
    if person is None:
        return "unknown"
    name = person.login or person.display_name or person.id or "unknown"
    if person.display_name and person.display_name != name:
        return f"{person.display_name} <{name}>"
    return name


def factor_label(fact: Fact) -> str:
    factor = fact.factor
    if factor.authenticator and factor.authenticator.lower() != factor.type.lower():
        return f"{factor.authenticator} ({factor.type})"
    return factor.type


def enrolled_by_label(fact: Fact) -> str:
    actor = actor_label(fact)
    if fact.enrolled_by is EnrolledBy.SELF or actor is None:
        return fact.enrolled_by.value
    return f"{fact.enrolled_by.value} ({actor})"


def event_time(fact: Fact) -> str:
    return fact.published_at or fact.published


def client_label(fact: Fact) -> str:
    """``203.0.113.9 (Berlin, Berlin, Germany)``; the place only as far as it is known."""
    client = fact.client
    place = ", ".join(part for part in (client.city, client.state, client.country) if part)
    return (client.ip or "unknown IP") + (f" ({place})" if place else "")


# -- what a message says without params --------------------------------------------------------


def event_sentence(fact: Fact) -> str:
    """One sentence about the event: a chat message's or an alert's default text."""
    user, factor = user_label(fact), factor_label(fact)
    sentence = {
        EventKind.ENROLLMENT: f"{user} enrolled {factor} ({fact.factor.strength.value})",
        EventKind.DEACTIVATION: f"{factor} was removed from {user}",
        EventKind.RESET_ALL: f"All MFA factors of {user} were reset",
        EventKind.SUSPENSION: f"{factor} of {user} was suspended",
        EventKind.UNSUSPENSION: f"{factor} of {user} was unsuspended",
        EventKind.UPDATE: f"{factor} of {user} was updated",
    }.get(fact.kind, f"{fact.event_type} for {user}")
    actor = actor_label(fact)
    if fact.enrolled_by is not EnrolledBy.SELF and actor is not None:
        sentence += f", by {fact.enrolled_by.value} {actor}"
    return sentence


def fact_fields(fact: Fact) -> list[tuple[str, str]]:
    """(label, value) pairs shown with every chat message: user, factor, strength, who, when."""
    return [
        ("User", user_label(fact)),
        ("Factor", factor_label(fact)),
        ("Strength", fact.factor.strength.value),
        ("Enrolled by", enrolled_by_label(fact)),
        ("Time", event_time(fact)),
    ]


def fact_summary(fact: Fact) -> str:
    """A one-line title for a ticket: ``MFA factor enrolled: webauthn for dana@example.com``."""
    return f"{event_title(fact)}: {fact.factor.type} for {user_label(fact)}"


def fact_description(fact: Fact, request: ActionRequest) -> str:
    """A few lines about the event for a ticket's description."""
    lines = [
        f"Event: {fact.event_type} ({fact.uuid})",
        f"Okta org: {fact.org}",
        f"User: {person_label(fact.user)}",
        f"Changed by: {person_label(fact.actor)} ({fact.enrolled_by.value})",
        f"Factor: {fact.factor.type} ({fact.factor.strength.value})",
        f"Outcome: {fact.outcome or 'unknown'}"
        + (f" - {fact.outcome_reason}" if fact.outcome_reason else ""),
        f"Published: {event_time(fact)}",
        f"Client: {client_label(fact)}",
        f"Rule: {request.rule_id} / action {request.action_id}",
    ]
    return "\n".join(lines)


# -- params and cuts ---------------------------------------------------------------------------


def text_param(request: ActionRequest, name: str, default: str, *, numbers: bool = True) -> str:
    """An optional text param (usually a rendered template); ``default`` when it is absent or
    blank. Numbers are taken as their text unless ``numbers`` is false; anything else (a list, a
    mapping, true/false) is a permanent failure naming the param."""
    value = param(request, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise PermanentActionError(f"{where(request)}: params.{name} must be text")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last of them an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (runs of whitespace become one space), cut to ``limit``."""
    line = _WHITESPACE.sub(" ", text).strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + ELLIPSIS
