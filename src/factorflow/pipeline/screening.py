"""Which facts go on to the rules, and why the others do not. Every decision has a reason."""

from __future__ import annotations

from dataclasses import dataclass

from factorflow.domain.facts import Fact

DEFAULT_EVENT_TYPES = (
    "user.mfa.factor.activate",
    "user.mfa.factor.deactivate",
    "user.mfa.factor.reset_all",
    "user.mfa.factor.suspend",
    "user.mfa.factor.unsuspend",
    "user.mfa.factor.update",
)

# Identity Engine emits two user.mfa.factor.activate events (SMS and voice) with the same
# timestamp for one Phone enrollment. Both belong to one "family"; the first one processed wins.
TWIN_FAMILIES = {"sms": "phone", "voice": "phone"}


@dataclass(frozen=True, slots=True)
class ScreenPolicy:
    event_types: frozenset[str] = frozenset(DEFAULT_EVENT_TYPES)
    own_actors: frozenset[str] = frozenset()  # factorflow's own service account / app ids


def screen(fact: Fact, policy: ScreenPolicy) -> str | None:
    """The reason this fact is filtered out, or None if it goes on to the rules."""
    if fact.event_type not in policy.event_types:
        return f"event type {fact.event_type} is not subscribed"
    if fact.outcome is not None and fact.outcome != "SUCCESS":
        return f"outcome is {fact.outcome}, not SUCCESS"
    if fact.actor is not None and _is_own(fact.actor.id, fact.actor.login, policy.own_actors):
        return "caused by factorflow's own service account (loop guard)"
    if fact.client.client_id and fact.client.client_id in policy.own_actors:
        return "caused by factorflow's own API client (loop guard)"
    return None


def _is_own(actor_id: str | None, login: str | None, own: frozenset[str]) -> bool:
    # Okta ids are case-sensitive; logins are not.
    if actor_id and actor_id in own:
        return True
    return login is not None and login.casefold() in {value.casefold() for value in own}


def twin_family(fact: Fact) -> str | None:
    """The family this fact could have a same-timestamp twin in, if any."""
    if fact.kind.value != "enrollment" or fact.user is None or not fact.user.id:
        return None
    if not fact.published:  # twins share a timestamp; without one nothing pairs them
        return None
    return TWIN_FAMILIES.get(fact.factor.type)
