"""The narrow ports the pipeline needs; adapters live in store/, enrichment/, actions/."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from factorflow.domain.actions import ActionOutcome, ActionRequest, Enrichment, RecentEvent
from factorflow.domain.facts import Fact, Person


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    idempotency_key: str
    event_uuid: str
    rule_id: str
    action_id: str
    kind: str
    request: dict[str, Any]
    reason: str
    attempts: int
    created_at: str
    status: str
    retries: int
    resolved_at: str | None
    resolved_by: str | None


class EventSource(Protocol):
    def event_json(self, uuid: str) -> tuple[dict[str, Any], str, str] | None:
        """(event, org, received_at) of a stored event."""
        ...


class FactLedger(Protocol):
    def save_fact(self, fact: Fact, status: str, reason: str | None) -> None: ...

    def claim_twin(self, user_id: str, published: str, family: str, uuid: str) -> str: ...

    def recent_events(
        self, user_id: str, since: str, until: str, exclude: str
    ) -> list[RecentEvent]: ...

    def record_decision(
        self, uuid: str, run_id: str, status: str, reason: str | None,
        enrichment: dict[str, Any], decision: dict[str, Any],
    ) -> None: ...

    def suppress(
        self, rule_id: str, key: str, at: str, window_hours: float, uuid: str
    ) -> str | None: ...


class ActionLedger(Protocol):
    def result_of(self, idempotency_key: str) -> ActionOutcome | None: ...

    def record_attempt(
        self, request: ActionRequest, uuid: str, attempt: int, result: str, detail: str
    ) -> None: ...

    def record_result(
        self, request: ActionRequest, uuid: str, outcome: ActionOutcome
    ) -> None: ...

    def dead_letter(
        self, request: ActionRequest, uuid: str, reason: str, attempts: int
    ) -> int: ...

    def dead_letters(self, status: str | None = None, limit: int = 100) -> Sequence[DeadLetter]: ...

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None: ...

    def resolve_dead_letter(self, dead_letter_id: int, status: str, by: str) -> bool: ...


class Enricher(Protocol):
    """Profile and groups of a user (a directory file, or the Okta API)."""

    def lookup(self, user: Person | None) -> Enrichment: ...


class Handler(Protocol):
    """Carries out one kind of action; raises TransientActionError / PermanentActionError."""

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome: ...


@dataclass(frozen=True, slots=True)
class Suppression:
    rule_id: str
    key: str
    window_hours: float


@dataclass(frozen=True, slots=True)
class Plan:
    """What the rules decided for one fact: the actions, the suppression windows of the rules
    that matched, and a JSON-able record (the rule trace) kept with the decision."""

    actions: tuple[ActionRequest, ...]
    suppressions: tuple[Suppression, ...]
    record: dict[str, Any]
    failed: tuple[tuple[ActionRequest, str], ...] = ()  # could not be prepared: the error


class Decide(Protocol):
    lookback_hours: float  # how far back "another factor event within N hours" looks

    def __call__(
        self, fact: Fact, enrichment: Enrichment, recent: Sequence[RecentEvent]
    ) -> Plan: ...
