"""The rules engine behind the pipeline's ``Decide`` port."""

from __future__ import annotations

from collections.abc import Sequence

from factorflow.domain.actions import ActionRequest, Enrichment, RecentEvent
from factorflow.domain.facts import Fact
from factorflow.pipeline.ports import Plan, Suppression
from factorflow.rules.engine import evaluate
from factorflow.rules.ruleset import RuleSet


class RulesDecider:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.lookback_hours = ruleset.lookback_hours

    def __call__(
        self, fact: Fact, enrichment: Enrichment, recent: Sequence[RecentEvent]
    ) -> Plan:
        decision = evaluate(self.ruleset, fact, enrichment, recent)
        failed = tuple(
            (ActionRequest(item.rule_id, item.action_id, item.kind, {}, item.idempotency_key),
             f"could not prepare the action: {item.error}")
            for item in decision.failed_actions
        )
        return Plan(
            actions=decision.actions,
            suppressions=tuple(
                Suppression(s.rule_id, s.key, s.window_hours) for s in decision.suppressions
            ),
            record=decision.to_dict(),
            failed=failed,
        )
