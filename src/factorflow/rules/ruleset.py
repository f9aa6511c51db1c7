"""A loaded rules file: compiled conditions, compiled action templates, nothing left to check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from factorflow.rules.predicates import AnyOf, Condition, RecentFactorEvent
from factorflow.rules.templates import TemplateLimits

DEFAULTS_RULE_ID = "defaults"  # the rule id the default actions carry (reserved)


class MatchMode(StrEnum):
    ALL = "all"  # every matching rule contributes its actions
    FIRST = "first"  # only the first matching rule, in file order


@dataclass(frozen=True, slots=True)
class ActionSpec:
    id: str
    kind: str
    params: Any  # compiled: plain data with templates (see rules.templates)


@dataclass(frozen=True, slots=True)
class SuppressSpec:
    key: tuple[str, ...]  # dotted paths into Fact.to_dict()
    window_hours: float


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    conditions: tuple[Condition, ...]
    actions: tuple[ActionSpec, ...]
    description: str = ""
    enabled: bool = True
    suppress: SuppressSpec | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    source: str  # the file name, for messages and the decision record
    digest: str  # sha256 of the file's bytes: which version of the rules decided
    match: MatchMode
    rules: tuple[Rule, ...]
    default_actions: tuple[ActionSpec, ...] = field(default=())
    template_limits: TemplateLimits = field(default=TemplateLimits())

    @property
    def lookback_hours(self) -> float:
        """The largest ``recent_factor_event.within_hours`` used (0 if none): how far back the
        caller must look for the ``recent`` events it passes to ``evaluate``."""
        windows = [
            condition.within_hours
            for rule in self.rules
            if rule.enabled
            for condition in _walk(rule.conditions)
            if isinstance(condition, RecentFactorEvent)
        ]
        return max(windows, default=0.0)

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


def _walk(conditions: tuple[Condition, ...]) -> Iterator[Condition]:
    for condition in conditions:
        yield condition
        if isinstance(condition, AnyOf):
            yield from condition.walk()
