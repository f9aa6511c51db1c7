"""Read a rules file and return a :class:`RuleSet`, or raise ``InvalidRules`` with every problem.

Each problem reads ``<file>: rule '<id>': <field>: <why>`` (a rule without a usable id is named
``rule #<n>``, counting from 1; top-level problems have no rule part).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from factorflow.errors import InvalidRules
from factorflow.rules.action_kinds import BUILTIN_ACTION_KINDS, ActionKind
from factorflow.rules.compiler import compile_actions, compile_rule, compile_when, describe
from factorflow.rules.ruleset import DEFAULTS_RULE_ID, ActionSpec, MatchMode, Rule, RuleSet
from factorflow.rules.schema import (
    ActionModel,
    DefaultsModel,
    RuleModel,
    RulesFileModel,
    When,
)
from factorflow.rules.templates import TemplateLimits
from factorflow.rules.yaml_document import YamlProblems, parse_yaml

# Used when the file has no ``defaults``: an event no rule matched is kept for reporting.
IMPLICIT_DEFAULT_ACTIONS = (ActionSpec(id="report", kind="report", params={}),)


def load_rules(
    path: str | Path, *, action_kinds: Mapping[str, ActionKind] = BUILTIN_ACTION_KINDS
) -> RuleSet:
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRules([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    return parse_rules(content, source=str(path), action_kinds=action_kinds)


def parse_rules(
    content: str | bytes,
    *,
    source: str = "rules",
    action_kinds: Mapping[str, ActionKind] = BUILTIN_ACTION_KINDS,
) -> RuleSet:
    raw = content.encode() if isinstance(content, str) else content
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRules([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        document = parse_yaml(text)
    except YamlProblems as exc:
        raise InvalidRules([
            f"{source}: line {line}: {message}" if line else f"{source}: {message}"
            for line, message in exc.problems
        ]) from None
    data = document.data
    if data is None:
        raise InvalidRules([f"{source}: the file is empty (expected version, match and rules)"])
    if not isinstance(data, dict):
        raise InvalidRules(
            [f"{source}: expected a mapping with version, match and rules, got {describe(data)}"]
        )

    problems: list[str] = []
    top = _validate(RulesFileModel, data, f"{source}: ", problems)
    raw_rules = data.get("rules")
    rules = _rules(raw_rules if isinstance(raw_rules, list) else [], source, action_kinds,
                   problems)
    defaults = _defaults(data.get("defaults"), source, action_kinds, problems)
    if problems or top is None:
        raise InvalidRules(problems)
    return RuleSet(
        source=source,
        digest=hashlib.sha256(raw).hexdigest(),
        match=MatchMode(top.match),
        rules=tuple(rules),
        default_actions=defaults,
        template_limits=TemplateLimits(
            max_output_bytes=top.template_limits.max_output_bytes,
            max_loop_iterations=top.template_limits.max_loop_iterations,
        ),
    )


def _rules(
    raw_rules: Sequence[Any],
    source: str,
    action_kinds: Mapping[str, ActionKind],
    problems: list[str],
) -> list[Rule]:
    rules: list[Rule] = []
    first_use: dict[str, int] = {}
    for index, raw in enumerate(raw_rules, start=1):
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"rule {rule_id!r}" if isinstance(rule_id, str) and rule_id else f"rule #{index}"
        prefix = f"{source}: {label}: "
        if isinstance(rule_id, str):
            if rule_id in first_use:
                problems.append(
                    f"{prefix}id: duplicate rule id (rule #{first_use[rule_id]} has it too)"
                )
            elif rule_id == DEFAULTS_RULE_ID:
                problems.append(f"{prefix}id: {rule_id!r} is reserved for the default actions")
            first_use.setdefault(rule_id, index)
        if not isinstance(raw, dict):
            problems.append(f"{prefix}expected a mapping with id, when and actions, "
                            f"got {describe(raw)}")
            continue
        model = _validate(RuleModel, raw, prefix, problems)
        rule_problems: list[str] = []
        if model is None:
            _check_valid_parts(raw, action_kinds, rule_problems)
        else:
            rules.append(compile_rule(model, action_kinds, rule_problems))
        problems.extend(prefix + problem for problem in rule_problems)
    return rules


def _check_valid_parts(
    raw: dict[str, Any], action_kinds: Mapping[str, ActionKind], problems: list[str]
) -> None:
    """A rule with shape problems (already reported) still gets the other checks on the parts
    that have the right shape, so one pass shows as much as possible."""
    when = _quietly(When, raw.get("when", {}))
    if when is not None:
        compile_when(when, problems)
    raw_actions = raw.get("actions")
    if isinstance(raw_actions, list):
        models = [_quietly(ActionModel, item) for item in raw_actions]
        compile_actions([m for m in models if m is not None], action_kinds, problems)


def _quietly(model: type[_Model], data: Any) -> _Model | None:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _defaults(
    raw: Any, source: str, action_kinds: Mapping[str, ActionKind], problems: list[str]
) -> tuple[ActionSpec, ...]:
    if raw is None:
        return IMPLICIT_DEFAULT_ACTIONS
    prefix = f"{source}: defaults: "
    model = _validate(DefaultsModel, raw, prefix, problems)
    if model is None:
        return ()
    compile_problems: list[str] = []
    actions = compile_actions(model.actions, action_kinds, compile_problems)
    problems.extend(prefix + problem for problem in compile_problems)
    return tuple(actions)


_Model = typing.TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], data: Any, prefix: str, problems: list[str]) -> _Model | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            location = _location(error["loc"])
            message = _message(model, error)
            problems.append(f"{prefix}{location}: {message}" if location else prefix + message)
        return None


def _location(loc: Sequence[int | str]) -> str:
    text = ""
    for step in loc:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _message(model: type[BaseModel], error: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        if not allowed:
            return "unknown key"
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        suggestion = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key ({suggestion}allowed: {', '.join(allowed)})"
    if kind == "literal_error":
        if loc == ("version",):
            return f"unsupported version {value!r} (this factorflow reads version 1)"
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{value!r} is not one of {', '.join(expected)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {describe(value)}"
    if kind == "list_type":
        return f"expected a list, got {describe(value)}"
    if kind == "string_type":
        return f"expected a string, got {describe(value)}"
    if kind == "bool_type":
        return f"expected true or false, got {describe(value)}"
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing"):
        return f"expected a number, got {describe(value)}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx.get('gt'))}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx.get('le'))}"
    if kind == "string_pattern_mismatch":
        return (f"{value!r} is not a valid id (up to 100 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit)")
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    current: Any = model
    for step in loc:
        current = _unwrap_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {(info.alias or name): info for name, info in current.model_fields.items()}
            if not isinstance(step, str) or step not in fields:
                return []
            current = fields[step].annotation
        elif typing.get_origin(current) is list and isinstance(step, int):
            current = typing.get_args(current)[0]
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap_optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation
