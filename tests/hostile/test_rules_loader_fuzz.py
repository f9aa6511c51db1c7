"""The rules loader under hostile input: arbitrary YAML documents, arbitrary bytes and
mutations of a valid rules file either load or raise InvalidRules with messages that name the
file; nothing else escapes."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factorflow.errors import InvalidRules
from factorflow.rules.loader import parse_rules

EXAMPLE = resources.files("factorflow").joinpath("examples/rules.example.yaml").read_text()
TRIED: list[int] = []

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=25,
)
KEYS = ["version", "match", "rules", "defaults", "id", "when", "actions", "kind", "params",
        "suppress", "key", "window_hours", "groups", "any", "all", "none", "profile",
        "matches", "in", "not_in", "recent_factor_event", "within_hours", "any_of", "strength"]
shaped = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30,
)


def _load(content: str | bytes) -> None:
    TRIED.append(1)
    try:
        parse_rules(content, source="fuzz.yaml")
    except InvalidRules as exc:
        assert exc.problems
        assert all(problem.startswith("fuzz.yaml") for problem in exc.problems), exc.problems


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(document=documents)
def test_arbitrary_yaml_documents(document: Any) -> None:
    _load(yaml.safe_dump(document))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(document=shaped)
def test_documents_made_of_rule_keywords(document: Any) -> None:
    _load(yaml.safe_dump({"version": 1, "match": "all", "rules": [document]}))


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    _load(data)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(position=st.integers(min_value=0, max_value=len(EXAMPLE) - 1),
       length=st.integers(min_value=1, max_value=40),
       replacement=st.text(max_size=10))
def test_mutations_of_the_example_file(position: int, length: int, replacement: str) -> None:
    _load(EXAMPLE[:position] + replacement + EXAMPLE[position + length:])


def test_cases_were_tried() -> None:
    # Runs last in this module: the property tests above really generated inputs.
    assert len(TRIED) >= 500
    print(f"rules loader inputs tried: {len(TRIED)}")
