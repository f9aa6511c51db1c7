"""Template renderings are bounded: a rendered value past ``template_limits.max_output_bytes``
and a rendering past ``max_loop_iterations`` fail that action with a message naming the limit
(the rest of the decision is unaffected), and the ways of building a huge value without a loop
(repeating, adding, padding, joining, powers) are held to the same limits."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import pytest
from tests.unit.test_rules_shapes import fact_of, oie_enrollment

from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person
from factorflow.errors import InvalidRules
from factorflow.rules import evaluate, parse_rules
from factorflow.rules.ruleset import RuleSet
from factorflow.rules.templates import (
    DEFAULT_MAX_LOOP_ITERATIONS,
    DEFAULT_MAX_OUTPUT_BYTES,
    TemplateLimits,
)

NOBODY = Enrichment(source="none", found=False)
WEBAUTHN = fact_of(oie_enrollment(uuid="5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"))
OUTPUT_LIMIT = "(template_limits.max_output_bytes)"
LOOP_LIMIT = "(template_limits.max_loop_iterations)"


def rules(text: str, limits: str = "") -> RuleSet:
    body = textwrap.dedent(text)
    header = "version: 1\nmatch: all\n" + textwrap.dedent(limits)
    return parse_rules(header + body, source="rules.yaml")


def one_action(template: str, limits: str = "", fact: Any = WEBAUTHN) -> tuple[Any, Any]:
    """(rendered params or None, error or None) of one slack action whose text is ``template``;
    a second action of the same rule always renders."""
    ruleset = rules("""
        rules:
          - id: r
            actions:
              - id: big
                kind: slack
                params: {text: TEMPLATE}
              - id: small
                kind: slack
                params: {text: "{{ fact.factor.type }}"}
    """.replace("TEMPLATE", _yaml_string(template)), limits)
    decision = evaluate(ruleset, fact, NOBODY)
    small = [dict(a.params) for a in decision.actions if a.action_id == "small"]
    assert small == [{"text": fact.factor.type}]
    big = [a for a in decision.actions if a.action_id == "big"]
    failed = [f for f in decision.failed_actions if f.action_id == "big"]
    assert len(big) + len(failed) == 1
    if big:
        return dict(big[0].params), None
    assert (failed[0].rule_id, failed[0].kind) == ("r", "slack")
    return None, failed[0].error


def _yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_the_defaults() -> None:
    assert TemplateLimits() == TemplateLimits(65536, 10_000)
    assert (DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_LOOP_ITERATIONS) == (65536, 10_000)
    ruleset = rules("rules: []\n")
    assert ruleset.template_limits == TemplateLimits()


# -- the output limit --------------------------------------------------------------------------


LIMIT_100 = "template_limits: {max_output_bytes: 100}\n"


def test_output_up_to_the_limit_renders_and_one_byte_more_fails() -> None:
    params, error = one_action("{{ 'x' * 60 }}{{ 'y' * 40 }}", LIMIT_100)
    assert params == {"text": "x" * 60 + "y" * 40} and error is None

    params, error = one_action("{{ 'x' * 60 }}{{ 'y' * 41 }}", LIMIT_100)
    assert params is None
    assert error == ("params.text: the rendered text is longer than the limit of 100 bytes "
                     f"{OUTPUT_LIMIT}")


def test_the_limit_counts_utf8_bytes() -> None:
    assert one_action("{{ 'é' * 50 }}", LIMIT_100) == ({"text": "é" * 50}, None)
    _, error = one_action("{{ 'é' * 50 }}!", LIMIT_100)
    assert error is not None and error.startswith("params.text: the rendered text is longer")


def test_a_loop_whose_output_passes_the_limit_fails() -> None:
    _, error = one_action("{% for i in range(2000) %}{{ fact.uuid }}{% endfor %}")
    assert error == ("params.text: the rendered text is longer than the limit of 65536 bytes "
                     f"{OUTPUT_LIMIT}")


def test_a_huge_field_value_fails_the_action_that_prints_it() -> None:
    huge = dataclasses.replace(WEBAUTHN, user=Person("00u1", "a" * 70_000, "A", "User"))
    _, error = one_action("Enrolled: {{ fact.user.login }}", fact=huge)
    assert error == ("params.text: a printed value would be 70000 characters, more than the "
                     f"limit of 65536 bytes {OUTPUT_LIMIT}")


def test_the_limit_applies_to_each_rendered_value_in_nested_params() -> None:
    ruleset = rules("""
        rules:
          - id: r
            actions:
              - id: ticket
                kind: jira
                params:
                  summary: "{{ 'x' * 80 }}"
                  fields: {notes: ["{{ 'y' * 80 }}", "{{ 'z' * 60 }}{{ 'z' * 41 }}"]}
    """, LIMIT_100)
    (failed,) = evaluate(ruleset, WEBAUTHN, NOBODY).failed_actions
    assert failed.error == ("params.fields.notes[1]: the rendered text is longer than the limit "
                            f"of 100 bytes {OUTPUT_LIMIT}")


# -- loops ---------------------------------------------------------------------------------------


def test_a_range_past_the_loop_limit_fails_before_it_runs() -> None:
    # Without the bound this loop would run for hours.
    _, error = one_action("{% for i in range(10**9) %}{% endfor %}done")
    assert error == ("params.text: range(1000000000) would have 1000000000 items, more than "
                     f"the limit of 10000 {LOOP_LIMIT}")


def test_nested_loops_count_every_iteration() -> None:
    limits = "template_limits: {max_loop_iterations: 8}\n"
    # 2 outer + 2 x 3 inner = 8 iterations: allowed; 2 + 2 x 4 = 10: refused.
    assert one_action("{% for i in range(2) %}{% for j in range(3) %}.{% endfor %}{% endfor %}",
                      limits) == ({"text": "......"}, None)
    _, error = one_action(
        "{% for i in range(2) %}{% for j in range(4) %}{% endfor %}{% endfor %}", limits)
    assert error == f"params.text: the template ran more than 8 loop iterations {LOOP_LIMIT}"


def test_loops_over_data_and_inside_macros_are_counted() -> None:
    limits = "template_limits: {max_loop_iterations: 50}\n"
    template = ("{% macro each(items) %}{% for x in items %}{% endfor %}{% endmacro %}"
                "{% for i in range(10) %}{{ each(fact.factor.type|list) }}{% endfor %}")
    # "webauthn" has 8 letters: 10 + 10 x 8 = 90 iterations
    _, error = one_action(template, limits)
    assert error == f"params.text: the template ran more than 50 loop iterations {LOOP_LIMIT}"


def test_the_budget_is_per_rendered_value() -> None:
    limits = "template_limits: {max_loop_iterations: 5}\n"
    ruleset = rules("""
        rules:
          - id: r
            actions:
              - id: a
                kind: slack
                params:
                  text: "{% for i in range(5) %}{{ i }}{% endfor %}"
                  title: "{% for i in range(5) %}{{ i }}{% endfor %}"
    """, limits)
    (action,) = evaluate(ruleset, WEBAUTHN, NOBODY).actions
    assert dict(action.params) == {"text": "01234", "title": "01234"}


def test_ordinary_templates_are_unaffected() -> None:
    template = ("{{ fact.factor.type|upper }} {{ '%05d'|format(42) }} {{ '{:>4}'.format('ab') }} "
                "{{ ['a', 'b']|join('-') }} {{ 'ab' * 2 }} {{ 2 ** 10 }} {{ 'x'|center(5) }}"
                "|{% for c in 'abc' %}{{ c ~ loop.index }}{% endfor %}"
                "{% set ns = namespace(n='') %}{% for i in range(3) %}{% set ns.n = ns.n ~ i %}"
                "{% endfor %} {{ ns.n }} {{ range(3)|batch(2)|list|length }}")
    params, error = one_action(template)
    assert error is None
    assert params == {"text": "WEBAUTHN 00042   ab a-b abab 1024   x  |a1b2c3 012 2"}


# -- values built without a loop -------------------------------------------------------------


@pytest.mark.parametrize(("template", "message"), [
    ("{{ 'x' * 10**9 }}", f"repeated text would be 1000000000 characters, more than the limit "
                          f"of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ ([1] * 10**9)|length }}", f"a repeated list would have 1000000000 items, more than the "
                                   f"limit of 10000 {LOOP_LIMIT}"),
    ("{{ ('x' * 40000) + ('y' * 40000) }}", f"added text would be 80000 characters, more than "
                                            f"the limit of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ (('x' * 40000) ~ ('y' * 40000))|length }}",
     f"concatenated text would be 80000 characters, more than the limit of 65536 bytes "
     f"{OUTPUT_LIMIT}"),
    ("{{ 10 ** (10 ** 10) }}", "a power of about 33219280949 bits, more than the limit of "
                               "10000 bits"),
    ("{{ '%0999999999d' % 1 }}", f"a % format width would be 999999999 characters, more than "
                                 f"the limit of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ '%*d' % (5, 1) }}", "'*' widths in % formats are not allowed in templates"),
    ("{{ '%0999999999d'|format(1) }}", f"a % format width would be 999999999 characters, more "
                                       f"than the limit of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ '{:>999999999}'.format(1) }}", f"a format width would be 999999999 characters, more "
                                        f"than the limit of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ '{:>{}}'.format(1, 9) }}", "nested fields in format specs are not allowed in templates"),
    ("{{ 'x'|center(10**9) }}", f"center() would be 1000000000 characters, more than the limit "
                                f"of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ 'x'.ljust(10**9) }}", f"str.ljust() would be 1000000000 characters, more than the "
                               f"limit of 65536 bytes {OUTPUT_LIMIT}"),
    ("{{ ('x' * 100)|indent(1000) }}", f"indent() would be 1100 characters, more than the limit "
                                       f"of 1000 bytes {OUTPUT_LIMIT}"),
    ("{{ ('x' * 600)|replace('x', 'yy') }}", f"replace() would be 1200 characters, more than "
                                             f"the limit of 1000 bytes {OUTPUT_LIMIT}"),
    ("{{ (['x' * 500] * 3)|join }}", f"join() would be 1500 characters, more than the limit of "
                                     f"1000 bytes {OUTPUT_LIMIT}"),
    ("{{ ''.join(['x' * 500] * 3) }}", f"str.join() would be 1500 characters, more than the "
                                       f"limit of 1000 bytes {OUTPUT_LIMIT}"),
    ("{{ range(3)|batch(10**9, 0)|list }}", f"a batch() would have 1000000000 items, more than "
                                            f"the limit of 10000 {LOOP_LIMIT}"),
    ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", f"concatenated text would be 1024 characters, more than the limit of "
                     f"1000 bytes {OUTPUT_LIMIT}"),
    ("{% macro twice(s, n) %}{{ twice(s ~ s, n - 1) if n else s|length }}{% endmacro %}"
     "{{ twice('x', 60) }}", f"concatenated text would be 1024 characters, more than the limit "
                             f"of 1000 bytes {OUTPUT_LIMIT}"),
])
def test_values_built_without_a_loop_are_held_to_the_limits(template: str, message: str) -> None:
    limits = "template_limits: {max_output_bytes: 1000}\n" if "1000 bytes" in message else ""
    params, error = one_action(template, limits)
    assert params is None
    assert error == f"params.text: {message}"


def test_a_namespace_attribute_is_held_to_the_limit() -> None:
    _, error = one_action("{% set ns = namespace(items=[]) %}{% set ns.items = 'abcdefghi'|list %}",
                          "template_limits: {max_loop_iterations: 8}\n")
    assert error == ("params.text: namespace attribute 'items' would have 9 items, more than the "
                     f"limit of 8 {LOOP_LIMIT}")


def test_lists_cannot_grow_in_place() -> None:
    _, error = one_action("{% set xs = [1] %}{{ xs.extend(xs) }}")
    assert error is not None
    assert error.startswith("params.text: SecurityError: access to attribute 'extend' of 'list' "
                            "object is unsafe")


def test_loading_runs_no_part_of_a_template() -> None:
    # Constant expressions are not folded while loading, so these are only refused at render.
    ruleset = rules("""
        rules:
          - id: r
            actions:
              - id: a
                kind: slack
                params: {text: "{{ 'x'|center(10**9) }}{{ 'x' * 10**9 }}"}
    """)
    (failed,) = evaluate(ruleset, WEBAUTHN, NOBODY).failed_actions
    assert failed.error.startswith("params.text: center() would be 1000000000 characters")


# -- the rules file ----------------------------------------------------------------------------


def test_the_limits_come_from_the_rules_file() -> None:
    ruleset = rules("rules: []\n", """
        template_limits:
          max_output_bytes: 4096
          max_loop_iterations: 250
    """)
    assert ruleset.template_limits == TemplateLimits(4096, 250)
    partly = rules("rules: []\n", "template_limits: {max_loop_iterations: 7}\n")
    assert partly.template_limits == TemplateLimits(DEFAULT_MAX_OUTPUT_BYTES, 7)


@pytest.mark.parametrize(("limits", "problem"), [
    ("{max_output_bytes: 0}", "template_limits.max_output_bytes: must be greater than 0"),
    ("{max_output_bytes: 16777217}",
     "template_limits.max_output_bytes: must be at most 16777216"),
    ("{max_loop_iterations: -1}", "template_limits.max_loop_iterations: must be greater than 0"),
    ("{max_loop_iterations: 10000001}",
     "template_limits.max_loop_iterations: must be at most 10000000"),
    ("{max_loop_iterations: '10'}",
     "template_limits.max_loop_iterations: expected a number, got a string ('10')"),
    ("{max_output: 10}", "template_limits.max_output: unknown key (did you mean "
                         "'max_output_bytes'? allowed: max_output_bytes, max_loop_iterations)"),
    ("64k", "template_limits: expected a mapping, got a string ('64k')"),
])
def test_bad_limits_are_load_errors(limits: str, problem: str) -> None:
    with pytest.raises(InvalidRules) as raised:
        rules("rules: []\n", f"template_limits: {limits}\n")
    assert raised.value.problems == [f"rules.yaml: {problem}"]
