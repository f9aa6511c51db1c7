"""``evaluate``: a pure function from (rules, fact, enrichment, recent events) to a Decision.

It reads no clock, file or network; everything it needs is passed in, so replaying an event with
the same inputs gives the same decision (and the same idempotency keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from factorflow.domain.actions import ActionRequest, Enrichment, RecentEvent, idempotency_key
from factorflow.domain.facts import Fact
from factorflow.rules.decision import (
    Decision,
    FailedAction,
    RuleStatus,
    RuleTrace,
    Suppression,
)
from factorflow.rules.predicates import Context
from factorflow.rules.ruleset import DEFAULTS_RULE_ID, ActionSpec, MatchMode, Rule, RuleSet
from factorflow.rules.templates import TemplateProblem, render_params


def evaluate(
    ruleset: RuleSet,
    fact: Fact,
    enrichment: Enrichment,
    recent: Iterable[RecentEvent] = (),
) -> Decision:
    context = Context(fact, enrichment, tuple(recent))
    trace: list[RuleTrace] = []
    matched: list[Rule] = []
    for rule in ruleset.rules:
        if not rule.enabled:
            trace.append(RuleTrace(rule.id, RuleStatus.DISABLED))
            continue
        if matched and ruleset.match is MatchMode.FIRST:
            trace.append(RuleTrace(rule.id, RuleStatus.NOT_EVALUATED))
            continue
        # Every condition is checked (no short cut) so the trace explains each miss in full.
        results = tuple(condition.check(context) for condition in rule.conditions)
        if all(result.passed for result in results):
            matched.append(rule)
            trace.append(RuleTrace(rule.id, RuleStatus.MATCHED, results))
        else:
            trace.append(RuleTrace(rule.id, RuleStatus.NOT_MATCHED, results))

    fact_data = fact.to_dict()
    variables = template_variables(fact_data, enrichment)
    planned: list[tuple[str, ActionSpec, dict[str, Any]]] = []
    for rule in matched:
        rule_vars = {"id": rule.id, "description": rule.description}
        planned.extend((rule.id, action, rule_vars) for action in rule.actions)
    if not matched:
        rule_vars = {"id": DEFAULTS_RULE_ID, "description": "no rule matched"}
        planned.extend((DEFAULTS_RULE_ID, action, rule_vars) for action in ruleset.default_actions)

    actions: list[ActionRequest] = []
    failed: list[FailedAction] = []
    for rule_id, action, rule_vars in planned:
        key = idempotency_key(fact.uuid, rule_id, action.id)
        action_vars = {**variables, "rule": rule_vars, "action": {"id": action.id,
                                                                  "kind": action.kind}}
        try:
            params = render_params(action.params, action_vars,
                                   limits=ruleset.template_limits)
        except TemplateProblem as exc:
            failed.append(FailedAction(rule_id, action.id, action.kind, key, str(exc)))
            continue
        actions.append(ActionRequest(rule_id, action.id, action.kind, params, key))

    suppressions = tuple(
        Suppression(rule.id, suppression_key(rule, fact_data), rule.suppress.window_hours)
        for rule in matched
        if rule.suppress is not None
    )
    return Decision(
        event_uuid=fact.uuid,
        rules_source=ruleset.source,
        rules_digest=ruleset.digest,
        match=ruleset.match.value,
        matched_rules=tuple(rule.id for rule in matched),
        actions=tuple(actions),
        failed_actions=tuple(failed),
        suppressions=suppressions,
        trace=tuple(trace),
        used_defaults=not matched,
    )


def template_variables(fact_data: Mapping[str, Any], enrichment: Enrichment) -> dict[str, Any]:
    """What templates see: ``fact``, ``enrichment`` (and ``rule``, ``action`` per action)."""
    return {
        "fact": fact_data,
        "enrichment": {
            "source": enrichment.source,
            "found": enrichment.found,
            "profile": dict(enrichment.profile),
            "groups": [dict(group) for group in enrichment.groups],
            "group_names": sorted(enrichment.group_names()),
            "factors": [dict(factor) for factor in enrichment.factors],
            "fetched_at": enrichment.fetched_at,
        },
    }


def suppression_key(rule: Rule, fact_data: Mapping[str, Any]) -> str:
    """``<rule id>|<path>=<value>|…``; a missing value is empty, ``%``, ``|`` and ``=`` in values
    are percent-encoded so two different facts never share a key by accident."""
    assert rule.suppress is not None
    parts = [rule.id]
    for path in rule.suppress.key:
        parts.append(f"{path}={_key_text(_lookup(fact_data, path))}")
    return "|".join(parts)


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for step in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = ",".join(_key_text(item) for item in value)
    else:
        text = str(value)
    return text.replace("%", "%25").replace("|", "%7C").replace("=", "%3D")
