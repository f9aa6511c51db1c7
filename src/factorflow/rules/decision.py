"""What ``evaluate`` returns: the actions to take, and why (kept with the event)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from factorflow.domain.actions import ActionRequest
from factorflow.rules.predicates import ConditionResult


class RuleStatus(StrEnum):
    MATCHED = "matched"
    NOT_MATCHED = "not_matched"
    DISABLED = "disabled"  # enabled: false in the file
    NOT_EVALUATED = "not_evaluated"  # match: first, and an earlier rule matched


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule_id: str
    status: RuleStatus
    conditions: tuple[ConditionResult, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "status": self.status.value,
            "conditions": [condition.to_dict() for condition in self.conditions],
        }


@dataclass(frozen=True, slots=True)
class Suppression:
    """A matched rule's suppression key. The caller looks it up in the store: if the same key
    was recorded less than ``window_hours`` ago, this rule's actions are suppressed."""

    rule_id: str
    key: str
    window_hours: float

    def to_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "key": self.key, "window_hours": self.window_hours}


@dataclass(frozen=True, slots=True)
class FailedAction:
    """An action whose parameters could not be rendered (e.g. a value the template needs is
    missing). It is not in ``Decision.actions``; the caller records it as dead with ``error``."""

    rule_id: str
    action_id: str
    kind: str
    idempotency_key: str
    error: str  # "params.summary: UndefinedError: 'None' has no attribute 'login'"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "action_id": self.action_id,
            "kind": self.kind,
            "idempotency_key": self.idempotency_key,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    event_uuid: str
    rules_source: str
    rules_digest: str
    match: str  # "all" or "first"
    matched_rules: tuple[str, ...]
    actions: tuple[ActionRequest, ...]
    failed_actions: tuple[FailedAction, ...]
    suppressions: tuple[Suppression, ...]
    trace: tuple[RuleTrace, ...]
    used_defaults: bool  # no rule matched: the actions are the file's defaults

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_uuid": self.event_uuid,
            "rules_source": self.rules_source,
            "rules_digest": self.rules_digest,
            "match": self.match,
            "matched_rules": list(self.matched_rules),
            "used_defaults": self.used_defaults,
            "actions": [action_to_dict(action) for action in self.actions],
            "failed_actions": [failed.to_dict() for failed in self.failed_actions],
            "suppressions": [suppression.to_dict() for suppression in self.suppressions],
            "trace": [entry.to_dict() for entry in self.trace],
        }


def action_to_dict(action: ActionRequest) -> dict[str, Any]:
    return {
        "rule_id": action.rule_id,
        "action_id": action.action_id,
        "kind": action.kind,
        "params": dict(action.params),
        "idempotency_key": action.idempotency_key,
    }
