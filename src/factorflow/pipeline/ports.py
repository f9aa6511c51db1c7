"""The narrow ports the pipeline needs; adapters live in store/, enrichment/, actions/."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
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


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try of one action, as the ledger keeps it: ``result`` is ``ok``, ``transient`` or
    ``permanent``; ``outcome`` is the action's result to record (a success), or None."""

    request: ActionRequest
    attempt: int
    result: str
    detail: str
    outcome: ActionOutcome | None = None


class EventSource(Protocol):
    def event_json(self, uuid: str) -> tuple[dict[str, Any], str, str] | None:
        """(event, org, received_at) of a stored event."""
        ...


class FactLedger(Protocol):
    def transaction(self) -> AbstractContextManager[None]:
        """The writes made inside (on this thread) commit together, or not at all."""
        ...

    def save_fact(self, fact: Fact, status: str, reason: str | None) -> None: ...

    def claim_twin(self, user_id: str, published: str, family: str, uuid: str) -> str: ...

    def recent_events(
        self, user_id: str, since: str, until: str, exclude: str
    ) -> list[RecentEvent]: ...

    def record_decision(
        self, uuid: str, run_id: str, status: str, reason: str | None,
        enrichment: dict[str, Any], decision: dict[str, Any],
    ) -> None: ...

    def decision_snapshot(self, uuid: str, run_id: str) -> dict[str, Any] | None:
        """The enrichment the decision of this run was recorded with, if it was."""
        ...

    def suppress(
        self, rule_id: str, key: str, at: str, window_hours: float, uuid: str
    ) -> str | None: ...


class ActionLedger(Protocol):
    def transaction(self) -> AbstractContextManager[None]: ...

    def results_of(self, idempotency_keys: Sequence[str]) -> dict[str, ActionOutcome]:
        """The recorded outcome of each key that has one."""
        ...

    def record_attempts(self, uuid: str, records: Sequence[AttemptRecord]) -> None:
        """Each try and, where it succeeded, its result: one transaction for all of them."""
        ...

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
