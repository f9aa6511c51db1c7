"""Loading rules files: what is accepted, and every problem named by file, rule and field."""

from __future__ import annotations

import textwrap
from importlib import resources
from pathlib import Path

import pytest

from factorflow.domain.factors import STRENGTH
from factorflow.errors import InvalidRules
from factorflow.rules import (
    BUILTIN_ACTION_KINDS,
    ActionKind,
    MatchMode,
    extend_kinds,
    load_rules,
    parse_rules,
)

EXAMPLES = resources.files("factorflow").joinpath("examples")
# Vocabularies as the problems list them.
STRENGTHS = (
    "phishing_resistant, device_bound_push, otp, sms_voice_email, password_question, unknown"
)
EVENT_KINDS = "enrollment, deactivation, reset_all, suspension, unsuspension, update, other"
UNKNOWN_JRIA = (
    "kind: 'jria' is not a known action kind (did you mean 'jira'?) (known: audit, checkpoint, "
    "email, jira, okta_group, okta_workflows, pagerduty, register, report, servicenow, slack, "
    "teams, webhook)"
)


def problems_of(text: str, source: str = "rules.yaml") -> list[str]:
    with pytest.raises(InvalidRules) as raised:
        parse_rules(textwrap.dedent(text), source=source)
    assert str(raised.value) == "\n".join(raised.value.problems)
    return raised.value.problems


def rule_problems(rules: str) -> list[str]:
    """The problems of a version 1, ``match: all`` file whose rules are ``rules`` (the YAML
    list, indented as it pleases)."""
    return problems_of("version: 1\nmatch: all\nrules:\n" + textwrap.dedent(rules))


def test_the_shipped_examples_load() -> None:
    ruleset = load_rules(Path(str(EXAMPLES.joinpath("rules.example.yaml"))))
    assert ruleset.match is MatchMode.ALL
    assert [rule.id for rule in ruleset.rules] == [
        "privileged-enrollment", "passwordless-checkpoint", "admin-enrolled-factor",
        "reset-then-enroll"]
    assert ruleset.lookback_hours == 24
    assert [(a.id, a.kind) for a in ruleset.default_actions] == [("report", "report")]
    first = load_rules(Path(str(EXAMPLES.joinpath("rules.first-match.example.yaml"))))
    assert first.match is MatchMode.FIRST
    assert first.rules[0].actions == ()
    assert first.lookback_hours == 0


def test_minimal_file_gets_the_implicit_report_default() -> None:
    ruleset = parse_rules("version: 1\nmatch: first\nrules: []\n", source="r.yaml")
    assert ruleset.rules == ()
    assert [(a.id, a.kind, a.params) for a in ruleset.default_actions] == [
        ("report", "report", {})]
    assert ruleset.source == "r.yaml"
    assert len(ruleset.digest) == 64
    explicit_none = parse_rules("version: 1\nmatch: all\ndefaults: {actions: []}\nrules: []\n")
    assert explicit_none.default_actions == ()


def test_digest_identifies_the_content() -> None:
    one = parse_rules("version: 1\nmatch: all\nrules: []\n")
    same = parse_rules(b"version: 1\nmatch: all\nrules: []\n")
    other = parse_rules("version: 1\nmatch: first\nrules: []\n")
    assert one.digest == same.digest != other.digest


def test_the_example_message_from_the_issue() -> None:
    problems = rule_problems("""
          - id: privileged-enrollment
            when:
              strength: {in: [strong]}
            actions: []
    """)
    assert problems == [
        "rules.yaml: rule 'privileged-enrollment': when.strength.in: 'strong' is not one of "
        + STRENGTHS
    ]


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of("""
        version: 2
        match: any
        rules:
          - id: one
            when:
              kind: [enrolment]
              strenght: {in: [otp]}
              profile:
                title: {matches: "(admin"}
            actions:
              - id: t
                kind: jria
          - when: {}
            actions: []
          - id: three
            actions:
              - id: cp
                kind: checkpoint
              - id: cp
                kind: audit
                params:
                  note: "{{ fact.uuid "
          - id: one
            actions: []
    """)
    assert problems == [
        "rules.yaml: version: unsupported version 2 (this factorflow reads version 1)",
        "rules.yaml: match: 'any' is not one of all, first",
        "rules.yaml: rule 'one': when.strenght: unknown key (did you mean 'strength'? allowed: "
        "kind, factor_type, strength, enrolled_by, engine, country, zone, profile, groups, "
        "recent_factor_event, any_of)",
        f"rules.yaml: rule 'one': action 't': {UNKNOWN_JRIA}",
        "rules.yaml: rule #2: id: required",
        "rules.yaml: rule 'three': action 'cp': params.campaign: required for kind "
        "'checkpoint' (a non-empty string)",
        "rules.yaml: rule 'three': action 'cp': id: duplicate action id within this rule",
        "rules.yaml: rule 'three': action 'cp': params.note: template syntax error on line 1: "
        "unexpected end of template, expected 'end of print statement'.",
        "rules.yaml: rule 'one': id: duplicate rule id (rule #1 has it too)",
    ]


def test_semantic_problems_of_one_rule_are_all_reported() -> None:
    problems = rule_problems("""
          - id: r
            when:
              kind: [enrolment, reset_all]
              enrolled_by: {not_in: [admn]}
              engine: [oie]
              profile:
                title: {matches: "(admin"}
              recent_factor_event: {within_hours: 24, kinds: [reset], factor_types: [yubikey]}
            actions:
              - id: t
                kind: jria
            suppress: {key: [user.idd, factor.type], window_hours: 24}
    """)
    assert problems == [
        f"rules.yaml: rule 'r': when.kind.in: 'enrolment' is not one of {EVENT_KINDS}",
        "rules.yaml: rule 'r': when.enrolled_by.not_in: 'admn' is not one of self, admin, api, "
        "system, unknown",
        "rules.yaml: rule 'r': when.engine.in: 'oie' is not one of classic, identity_engine, "
        "unknown",
        "rules.yaml: rule 'r': when.profile.title.matches: invalid regular expression '(admin': "
        "missing ), unterminated subpattern at position 0",
        "rules.yaml: rule 'r': when.recent_factor_event.kinds: 'reset' is not one of "
        + EVENT_KINDS,
        "rules.yaml: rule 'r': when.recent_factor_event.factor_types: 'yubikey' is not one of "
        + ", ".join([*STRENGTH, "unknown"]),
        f"rules.yaml: rule 'r': action 't': {UNKNOWN_JRIA}",
        "rules.yaml: rule 'r': suppress.key: 'user.idd' is not a field of the fact (did you "
        "mean 'user.id'?)",
    ]


def test_nested_any_of_problems_name_the_branch() -> None:
    problems = rule_problems("""
          - id: r
            when:
              any_of:
                - strength: [strong]
                - groups: {some: [x]}
            actions: []
    """)
    assert problems == [
        "rules.yaml: rule 'r': when.any_of[1].groups.some: unknown key (allowed: any, all, "
        "none)",
    ]
    problems = rule_problems("""
          - id: r
            when: {any_of: [{strength: [strong]}]}
            actions: []
    """)
    assert problems == [
        "rules.yaml: rule 'r': when.any_of[0].strength.in: 'strong' is not one of " + STRENGTHS
    ]


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("strength: {in: [otp], not_in: [sms]}", "when.strength: give exactly one of 'in' or "
                                                  "'not_in'"),
        ("strength: {}", "when.strength: give exactly one of 'in' or 'not_in'"),
        ("strength: {in: []}", "when.strength.in: must not be empty"),
        ("strength: 5", "when.strength: expected a mapping, got a number (5)"),
        ("country: {in: [NO]}", "when.country.in[0]: expected a string, got true/false"),
        ("profile: {}", "when.profile: must not be empty"),
        ("profile: {title: {}}", "when.profile.title: give at least one of equals, not_equals, "
                                 "in, not_in, matches, exists"),
        ("profile: {title: {equal: x}}", "when.profile.title.equal: unknown key (did you mean "
                                         "'equals'? allowed: equals, not_equals, in, not_in, "
                                         "matches, exists)"),
        ("profile: {title: {equals: [a]}}", "when.profile.title.equals: expected a string, "
                                            "number or true/false, got a list"),
        ("profile: {title: {in: [a, {b: c}]}}", "when.profile.title.in[1]: expected a string, "
                                                "number or true/false, got a mapping"),
        ("profile: {title: {exists: yes please}}", "when.profile.title.exists: expected true "
                                                   "or false, got a string ('yes please')"),
        ("groups: {}", "when.groups: give at least one of any, all, none"),
        ("groups: {any: Admins}", "when.groups.any: expected a list, got a string ('Admins')"),
        ("recent_factor_event: {kinds: [reset_all]}", "when.recent_factor_event.within_hours: "
                                                      "required"),
        ("recent_factor_event: {within_hours: 0}", "when.recent_factor_event.within_hours: must "
                                                   "be greater than 0"),
        ("recent_factor_event: {within_hours: '24'}", "when.recent_factor_event.within_hours: "
                                                      "expected a number, got a string ('24')"),
        ("recent_factor_event: {within_hours: 5000}", "when.recent_factor_event.within_hours: "
                                                      "must be at most 2160"),
        ("any_of: []", "when.any_of: must not be empty"),
    ],
)
def test_condition_shape_problems(when: str, problem: str) -> None:
    problems = rule_problems(f"""
          - id: r
            when:
              {when}
            actions: []
    """)
    assert problems == [f"rules.yaml: rule 'r': {problem}"]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("{id: r, actions: [], whne: {}}", "whne: unknown key (did you mean 'when'? allowed: id, "
                                           "description, enabled, when, actions, suppress)"),
        ("{id: r}", "actions: required"),
        ("{id: 'has space', actions: []}", "id: 'has space' is not a valid id (up to 100 "
                                           "letters, digits, '_', '.', ':' or '-', starting with "
                                           "a letter or digit)"),
        ("{id: defaults, actions: []}", "id: 'defaults' is reserved for the default actions"),
        ("{id: r, actions: [{id: a}]}", "actions[0].kind: required"),
        ("{id: r, actions: [{id: a, kind: report, param: {}}]}",
         "actions[0].param: unknown key (did you mean 'params'? allowed: id, kind, params)"),
        ("{id: r, actions: [{id: a, kind: webhook, params: {url: '', secret: s}}]}",
         "action 'a': params.url: required for kind 'webhook' (a non-empty string)"),
        ("{id: r, actions: [{id: a, kind: register, params: {register: [x]}}]}",
         "action 'a': params.register: required for kind 'register' (a non-empty string)"),
        ("{id: r, actions: [], suppress: {key: [], window_hours: 24}}",
         "suppress.key: must not be empty"),
        ("{id: r, actions: [], suppress: {key: [user.id]}}", "suppress.window_hours: required"),
        ("{id: r, actions: [], enabled: 'no'}", "enabled: expected true or false, got a string "
                                                "('no')"),
    ],
)
def test_rule_shape_problems(rule: str, problem: str) -> None:
    problems = rule_problems(f"- {rule}\n")
    label = "rule 'has space'" if "has space" in rule else (
        "rule 'defaults'" if "defaults" in rule else "rule 'r'")
    assert problems == [f"rules.yaml: {label}: {problem}"]


def test_templates_are_checked_at_load() -> None:
    problems = rule_problems("""
          - id: r
            actions:
              - id: a
                kind: slack
                params:
                  text: "{{ ''.__class__ }}"
                  blocks:
                    - {text: "{% if %}"}
                    - {text: "{{ fact['_secret'] }} {{ _private }}"}
                  ok: "{{ fact.uuid }}"
    """)
    assert problems == [
        "rules.yaml: rule 'r': action 'a': params.text: template uses '__class__': names "
        "starting with '_' are not allowed",
        "rules.yaml: rule 'r': action 'a': params.blocks[0].text: template syntax error on "
        "line 1: Expected an expression, got 'end of statement block'",
        "rules.yaml: rule 'r': action 'a': params.blocks[1].text: template uses '_private', "
        "'_secret': names starting with '_' are not allowed",
    ]


def test_defaults_problems() -> None:
    problems = problems_of("""
        version: 1
        match: all
        defaults:
          actions:
            - {id: cp, kind: checkpoint}
          action: []
        rules: []
    """)
    assert problems == [
        "rules.yaml: defaults: action: unknown key (did you mean 'actions'? allowed: actions)",
    ]
    problems = problems_of("""
        version: 1
        match: all
        defaults: {actions: [{id: cp, kind: checkpoint}]}
        rules: []
    """)
    assert problems == [
        "rules.yaml: defaults: action 'cp': params.campaign: required for kind 'checkpoint' "
        "(a non-empty string)",
    ]


def test_top_level_problems() -> None:
    assert problems_of("version: 1\nrules: []\nextra: 1\n") == [
        "rules.yaml: match: required",
        "rules.yaml: extra: unknown key (allowed: version, match, defaults, rules, "
        "template_limits)",
    ]
    assert problems_of("version: 1\nmatch: all\nrules: {a: 1}\n") == [
        "rules.yaml: rules: expected a list, got a mapping",
    ]
    assert problems_of("version: 1\nmatch: all\nrules: [5]\n") == [
        "rules.yaml: rule #1: expected a mapping with id, when and actions, got a number (5)",
    ]
    assert problems_of("") == [
        "rules.yaml: the file is empty (expected version, match and rules)"]
    assert problems_of("- a\n- b\n") == [
        "rules.yaml: expected a mapping with version, match and rules, got a list"]


def test_yaml_syntax_errors_give_the_line() -> None:
    problems = problems_of("""\
        version: 1
        match: all
        rules:
          - id: r
            when: {kind: [enrollment}
            actions: []
    """)
    assert len(problems) == 1
    assert problems[0].startswith("rules.yaml: line 5: column ")
    assert "YAML syntax error" in problems[0]


def test_duplicate_keys_are_errors_with_their_line() -> None:
    problems = problems_of("""\
        version: 1
        match: all
        rules:
          - id: r
            when:
              strength: {in: [otp]}
              strength: {in: [sms_voice_email]}
            actions: []
    """)
    assert problems == ["rules.yaml: line 7: duplicate key 'strength'"]


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InvalidRules) as raised:
        load_rules(missing)
    assert raised.value.problems == [f"{missing}: cannot read the file: No such file or directory"]
    binary = tmp_path / "rules.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe")
    with pytest.raises(InvalidRules) as raised:
        load_rules(binary)
    assert raised.value.problems == [f"{binary}: not UTF-8 text (byte 11)"]


def test_problems_name_the_file_as_given(tmp_path: Path) -> None:
    path = tmp_path / "team-rules.yaml"
    path.write_text("version: 1\nmatch: all\nrules:\n  - {id: r, actions: [{id: a, kind: x}]}\n")
    with pytest.raises(InvalidRules) as raised:
        load_rules(path)
    assert raised.value.problems[0].startswith(f"{path}: rule 'r': action 'a': kind: 'x' is not")


def test_connectors_can_extend_the_action_kinds() -> None:
    text = "version: 1\nmatch: all\nrules:\n  - {id: r, actions: [{id: a, kind: opsgenie}]}\n"
    assert "kind: 'opsgenie' is not a known action kind" in problems_of(text)[0]
    kinds = extend_kinds([ActionKind("opsgenie", ("team",))])
    assert set(BUILTIN_ACTION_KINDS) < set(kinds)
    with pytest.raises(InvalidRules) as raised:
        parse_rules(text, source="rules.yaml", action_kinds=kinds)
    assert raised.value.problems == [
        "rules.yaml: rule 'r': action 'a': params.team: required for kind 'opsgenie' "
        "(a non-empty string)"]
    ruleset = parse_rules(text.replace("kind: opsgenie", "kind: opsgenie, params: {team: sec}"),
                          action_kinds=kinds)
    assert ruleset.rules[0].actions[0].kind == "opsgenie"


def test_lookback_is_the_largest_window_of_enabled_rules() -> None:
    ruleset = parse_rules("""
version: 1
match: all
rules:
  - id: a
    when: {recent_factor_event: {within_hours: 6}}
    actions: []
  - id: b
    when:
      any_of:
        - recent_factor_event: {within_hours: 48.5}
    actions: []
  - id: c
    enabled: false
    when: {recent_factor_event: {within_hours: 500}}
    actions: []
""")
    assert ruleset.lookback_hours == 48.5
    assert ruleset.rule("c") is not None and not ruleset.rule("c").enabled  # type: ignore[union-attr]
    assert ruleset.rule("zzz") is None


def test_a_rule_with_shape_problems_still_gets_its_other_parts_checked() -> None:
    problems = rule_problems("""
          - id: 'bad id'
            when: {strength: [strong]}
            actions:
              - {id: a, kind: jria}
              - {id: b, kind: audit, params: {text: "{{ x "}}
              - {id: 5}
    """)
    assert problems == [
        "rules.yaml: rule 'bad id': id: 'bad id' is not a valid id (up to 100 letters, digits, "
        "'_', '.', ':' or '-', starting with a letter or digit)",
        "rules.yaml: rule 'bad id': actions[2].id: expected a string, got a number (5)",
        "rules.yaml: rule 'bad id': actions[2].kind: required",
        "rules.yaml: rule 'bad id': when.strength.in: 'strong' is not one of phishing_resistant, "
        "device_bound_push, otp, sms_voice_email, password_question, unknown",
        "rules.yaml: rule 'bad id': action 'a': kind: 'jria' is not a known action kind (did you "
        "mean 'jira'?) (known: audit, checkpoint, email, jira, okta_group, okta_workflows, "
        "pagerduty, register, report, servicenow, slack, teams, webhook)",
        "rules.yaml: rule 'bad id': action 'b': params.text: template syntax error on line 1: "
        "unexpected end of template, expected 'end of print statement'.",
    ]


def test_an_unknown_template_filter_is_a_load_error_naming_the_param() -> None:
    # Found by the loader fuzz test: jinja2 checks filters when it compiles, after parsing.
    with pytest.raises(InvalidRules) as raised:
        parse_rules(
            "version: 1\nmatch: all\nrules:\n  - id: r\n    when: {kind: [enrollment]}\n"
            "    actions:\n      - {id: a, kind: report,\n"
            "         params: {x: \"{{ fact.uuid | efault }}\"}}\n",
            source="t.yaml",
        )
    assert raised.value.problems == [
        "t.yaml: rule 'r': action 'a': params.x: template error on line 1: "
        "No filter named 'efault'."
    ]
