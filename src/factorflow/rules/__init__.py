"""Declarative rules: a YAML file of conditions and actions, and a pure ``evaluate``.

No web framework, HTTP client, database driver or workflow library is imported here.
"""

from factorflow.rules.action_kinds import BUILTIN_ACTION_KINDS, ActionKind, extend_kinds
from factorflow.rules.decision import Decision, FailedAction, RuleStatus, RuleTrace, Suppression
from factorflow.rules.engine import evaluate
from factorflow.rules.loader import load_rules, parse_rules
from factorflow.rules.predicates import ConditionResult
from factorflow.rules.ruleset import MatchMode, RuleSet

__all__ = [
    "BUILTIN_ACTION_KINDS",
    "ActionKind",
    "ConditionResult",
    "Decision",
    "FailedAction",
    "MatchMode",
    "RuleSet",
    "RuleStatus",
    "RuleTrace",
    "Suppression",
    "evaluate",
    "extend_kinds",
    "load_rules",
    "parse_rules",
]
