"""What a decision asks for, and what became of it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


def idempotency_key(event_uuid: str, rule_id: str, action_id: str) -> str:
    """Stable across retries, crashes and replays of the same decision: a step that runs
    twice passes the same key to the target's own de-duplication."""
    digest = hashlib.sha256(f"{event_uuid}\x1f{rule_id}\x1f{action_id}".encode()).hexdigest()
    return f"ff-{digest[:32]}"


@dataclass(frozen=True, slots=True)
class ActionRequest:
    rule_id: str
    action_id: str  # unique within its rule
    kind: str  # "audit", "checkpoint", "register", "report", "webhook", or a connector name
    params: Mapping[str, Any]  # parameters with templates already rendered over the fact
    idempotency_key: str


class OutcomeStatus(StrEnum):
    DONE = "done"
    ALREADY_DONE = "already_done"  # the target (or our ledger) had it already
    SUPPRESSED = "suppressed"
    DEAD = "dead"  # permanent failure, or retries exhausted: in the dead-letter list


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    status: OutcomeStatus
    detail: str = ""
    reference: str | None = None  # e.g. the ticket key the target returned
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What was known about the user when the decision was made (kept with the decision)."""

    source: str  # "directory", "okta", "none"
    found: bool
    profile: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[Mapping[str, str], ...] = ()  # {"id": ..., "name": ...}
    factors: tuple[Mapping[str, Any], ...] = ()
    fetched_at: str | None = None

    def group_names(self) -> set[str]:
        return {g["name"] for g in self.groups if g.get("name")}

    def group_ids(self) -> set[str]:
        return {g["id"] for g in self.groups if g.get("id")}


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """Another factor event of the same user, for "within N hours" conditions."""

    uuid: str
    kind: str
    factor_type: str
    published_at: str
