"""Checked models -> runtime rules: vocabularies, regexes, templates, ids, suppression keys.

Every check appends ``path: why`` to a list instead of stopping, so a rules file shows all of its
problems at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from factorflow.domain.factors import FACTOR_TYPES
from factorflow.domain.facts import Engine, EnrolledBy, EventKind, Fact, Strength
from factorflow.rules.action_kinds import ActionKind
from factorflow.rules.predicates import (
    AnyOf,
    Condition,
    GroupMembership,
    ProfileAttribute,
    RecentFactorEvent,
    ValueIn,
    scalar_text,
)
from factorflow.rules.ruleset import ActionSpec, Rule, SuppressSpec
from factorflow.rules.schema import ActionModel, AttributeMatch, RuleModel, SetMatch, When
from factorflow.rules.templates import compile_params

VOCABULARIES: Mapping[str, tuple[str, ...]] = {
    "kind": tuple(item.value for item in EventKind),
    "factor_type": FACTOR_TYPES,
    "strength": tuple(item.value for item in Strength),
    "enrolled_by": tuple(item.value for item in EnrolledBy),
    "engine": tuple(item.value for item in Engine),
}

READERS: Mapping[str, Callable[[Fact], str | None]] = {
    "kind": lambda fact: str(fact.kind),
    "factor_type": lambda fact: fact.factor.type,
    "strength": lambda fact: str(fact.factor.strength),
    "enrolled_by": lambda fact: str(fact.enrolled_by),
    "engine": lambda fact: str(fact.engine),
    "country": lambda fact: fact.client.country,
    "zone": lambda fact: fact.client.zone,
}

# Free-text fields: compared ignoring case (Okta's country and zone names).
FOLDED = frozenset({"country", "zone"})


def compile_rule(
    model: RuleModel, action_kinds: Mapping[str, ActionKind], problems: list[str]
) -> Rule:
    conditions = compile_when(model.when, problems)
    actions = compile_actions(model.actions, action_kinds, problems)
    suppress = None
    if model.suppress is not None:
        for path in model.suppress.key:
            if path not in FACT_PATHS:
                problems.append(
                    f"suppress.key: {path!r} is not a field of the fact{_hint(path, FACT_PATHS)}"
                )
        suppress = SuppressSpec(tuple(model.suppress.key), model.suppress.window_hours)
    return Rule(
        id=model.id,
        conditions=tuple(conditions),
        actions=tuple(actions),
        description=model.description,
        enabled=model.enabled,
        suppress=suppress,
    )


def compile_when(when: When, problems: list[str], path: str = "when") -> list[Condition]:
    conditions: list[Condition] = []
    for name in ("kind", "factor_type", "strength", "enrolled_by", "engine", "country", "zone"):
        match = getattr(when, name)
        if isinstance(match, SetMatch):
            conditions.append(_value_in(name, match, f"{path}.{name}", problems))
    for attribute, test in (when.profile or {}).items():
        conditions.append(_profile(attribute, test, f"{path}.profile.{attribute}", problems))
    if when.groups is not None:
        groups = when.groups
        conditions.append(GroupMembership(
            any_of=_tuple(groups.any), all_of=_tuple(groups.all), none_of=_tuple(groups.none)
        ))
    recent = when.recent_factor_event
    if recent is not None:
        where = f"{path}.recent_factor_event"
        _check_vocabulary(f"{where}.kinds", recent.kinds or [], VOCABULARIES["kind"], problems)
        _check_vocabulary(
            f"{where}.factor_types", recent.factor_types or [], FACTOR_TYPES, problems
        )
        conditions.append(RecentFactorEvent(
            within_hours=recent.within_hours,
            kinds=_tuple(recent.kinds),
            factor_types=_tuple(recent.factor_types),
        ))
    if when.any_of is not None:
        conditions.append(AnyOf(tuple(
            tuple(compile_when(branch, problems, f"{path}.any_of[{index}]"))
            for index, branch in enumerate(when.any_of)
        )))
    return conditions


def compile_actions(
    models: Sequence[ActionModel], action_kinds: Mapping[str, ActionKind], problems: list[str]
) -> list[ActionSpec]:
    actions: list[ActionSpec] = []
    seen: set[str] = set()
    for model in models:
        where = f"action {model.id!r}"
        if model.id in seen:
            problems.append(f"{where}: id: duplicate action id within this rule")
        seen.add(model.id)
        kind = action_kinds.get(model.kind)
        if kind is None:
            known = ", ".join(sorted(action_kinds))
            problems.append(
                f"{where}: kind: {model.kind!r} is not a known action kind"
                f"{_hint(model.kind, action_kinds)} (known: {known})"
            )
        else:
            for required in kind.required_params:
                value = model.params.get(required)
                if not isinstance(value, str) or not value.strip():
                    problems.append(
                        f"{where}: params.{required}: required for kind {kind.name!r} "
                        "(a non-empty string)"
                    )
        params, template_problems = compile_params(model.params)
        problems.extend(f"{where}: {problem}" for problem in template_problems)
        actions.append(ActionSpec(id=model.id, kind=model.kind, params=params))
    return actions


def _value_in(name: str, match: SetMatch, path: str, problems: list[str]) -> ValueIn:
    negate = match.in_ is None
    values = match.not_in if negate else match.in_
    assert values is not None  # SetMatch guarantees exactly one of the two
    if name in VOCABULARIES:
        key = "not_in" if negate else "in"
        _check_vocabulary(f"{path}.{key}", values, VOCABULARIES[name], problems)
    return ValueIn(
        name=name, read=READERS[name], values=tuple(values), negate=negate,
        fold_case=name in FOLDED,
    )


def _profile(
    attribute: str, test: AttributeMatch, path: str, problems: list[str]
) -> ProfileAttribute:
    pattern = None
    if test.matches is not None:
        try:
            pattern = re.compile(test.matches)
        except re.error as exc:
            problems.append(f"{path}.matches: invalid regular expression {test.matches!r}: {exc}")
    return ProfileAttribute(
        attribute=attribute,
        equals=_scalar(f"{path}.equals", test, "equals", problems),
        not_equals=_scalar(f"{path}.not_equals", test, "not_equals", problems),
        one_of=_scalars(f"{path}.in", test.in_, problems),
        none_of=_scalars(f"{path}.not_in", test.not_in, problems),
        pattern=pattern,
        exists=test.exists,
    )


def _scalar(path: str, test: AttributeMatch, field: str, problems: list[str]) -> str | None:
    if field not in test.model_fields_set:
        return None
    value = getattr(test, field)
    if isinstance(value, str | int | float | bool):
        return scalar_text(value)
    problems.append(f"{path}: expected a string, number or true/false, got {describe(value)}")
    return None


def _scalars(path: str, values: list[Any] | None, problems: list[str]) -> tuple[str, ...] | None:
    if values is None:
        return None
    texts: list[str] = []
    for index, value in enumerate(values):
        if isinstance(value, str | int | float | bool):
            texts.append(scalar_text(value))
        else:
            problems.append(
                f"{path}[{index}]: expected a string, number or true/false, got {describe(value)}"
            )
    return tuple(texts)


def _check_vocabulary(
    path: str, values: Sequence[str], allowed: Sequence[str], problems: list[str]
) -> None:
    for value in values:
        if value not in allowed:
            problems.append(f"{path}: {value!r} is not one of {', '.join(allowed)}")


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


def _hint(word: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _fact_paths(cls: type[Any], prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    paths: list[str] = []
    for field in dataclasses.fields(cls):
        path = f"{prefix}{field.name}"
        nested = [
            arg for arg in _union_args(hints[field.name]) if dataclasses.is_dataclass(arg)
        ]
        if nested and isinstance(nested[0], type):
            paths.extend(_fact_paths(nested[0], f"{path}."))
        else:
            paths.append(path)
    return paths


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


# Dotted paths a suppression key may use: the leaves of Fact.to_dict().
FACT_PATHS: tuple[str, ...] = tuple(_fact_paths(Fact))
