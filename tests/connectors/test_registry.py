"""The connector registry: the built-in kinds, third-party connectors found through the
``factorflow.connectors`` entry-point group, and the errors of a bad ``[connectors.<kind>]``.

The third-party connector is a real distribution made in a temporary folder (a module and its
``.dist-info`` with ``entry_points.txt``) and put on ``sys.path``, so ``importlib.metadata`` finds
it exactly as it finds an installed package.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from factorflow.connectors.base import ConnectorSettings
from factorflow.connectors.registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    available,
    build_connectors,
    load_factory,
)
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus
from factorflow.errors import ConfigError, InvalidRules
from factorflow.rules import evaluate, parse_rules
from factorflow.rules.action_kinds import ActionKind, extend_kinds
from factorflow.settings import load_settings
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import FACT

MODULE = "ffx_ticker_connector"
API_KEY = "tk-live-0d9c8b7a6f5e4d3c"
WATCHED_SECRETS.add(API_KEY)  # never in a log line
BUILTIN_KINDS = {"email", "jira", "okta_workflows", "pagerduty", "servicenow", "slack", "teams"}


# A complete third-party connector, as its author would write it (see docs/connectors.md).
CONNECTOR_SOURCE = '''
"""A "ticker" connector: appends one line per action to a board file."""

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from factorflow.connectors.base import ConnectorSettings, param, secret_value
from factorflow.domain.actions import ActionOutcome, OutcomeStatus
from factorflow.rules.action_kinds import ActionKind

ACTION_KIND = ActionKind("ticker", ("headline",), "append a headline to a ticker board")


class TickerSettings(ConnectorSettings):
    board: Path
    api_key: SecretStr | None = None
    api_key_file: Path | None = None


class TickerHandler:
    kind = "ticker"

    def __init__(self, settings: TickerSettings) -> None:
        self.settings = settings
        self.api_key = secret_value(settings.api_key, settings.api_key_file, "api_key")

    def perform(self, request: Any, fact: Any) -> ActionOutcome:
        headline = param(request, "headline", required=True)
        board = self.settings.board
        lines = board.read_text().splitlines() if board.exists() else []
        keys = [line.split()[0] for line in lines]
        if request.idempotency_key in keys:
            number = keys.index(request.idempotency_key) + 1
            return ActionOutcome(OutcomeStatus.ALREADY_DONE, "on the board",
                                 reference=f"line {number}")
        with board.open("a") as out:
            out.write(f"{request.idempotency_key} {fact.uuid} {headline}\\n")
        return ActionOutcome(OutcomeStatus.DONE, "posted", reference=f"line {len(keys) + 1}")


class TickerFactory:
    kind = "ticker"
    settings_model = TickerSettings

    def create(self, settings: TickerSettings, http: Any, clock: Any) -> TickerHandler:
        return TickerHandler(settings)


FACTORY = TickerFactory()
'''

ENTRY_POINTS = f"""
[{ENTRY_POINT_GROUP}]
ticker = {MODULE}:FACTORY
broken = ffx_not_installed_anywhere:FACTORY
email = {MODULE}:FACTORY
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution ``ffx-ticker`` on sys.path; the folder it lives in."""
    site = tmp_path / "site"
    dist_info = site / "ffx_ticker-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / f"{MODULE}.py").write_text(CONNECTOR_SOURCE)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ffx-ticker\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    monkeypatch.syspath_prepend(str(site))
    try:
        yield site
    finally:
        sys.modules.pop(MODULE, None)


def request(key: str = "ff-00000000000000000000000000000001", **params: Any) -> ActionRequest:
    return ActionRequest("r1", "tick", "ticker", params, key)


# -- what is available ---------------------------------------------------------------------------


def test_available_lists_the_built_in_connectors() -> None:
    found = available()

    assert set(BUILTIN) >= BUILTIN_KINDS
    assert {kind: found[kind] for kind in BUILTIN} == BUILTIN
    assert {kind: BUILTIN[kind] for kind in BUILTIN_KINDS} == {
        kind: f"factorflow.connectors.{kind}:FACTORY" for kind in BUILTIN_KINDS}


@pytest.mark.parametrize("kind", sorted(BUILTIN))
def test_every_built_in_factory_loads_and_names_its_kind(kind: str) -> None:
    factory = load_factory(kind)

    assert factory.kind == kind
    assert issubclass(factory.settings_model, ConnectorSettings)
    assert factory.settings_model.model_config.get("extra") == "forbid"


def test_an_installed_distribution_adds_its_kinds_but_cannot_replace_a_built_in(
    third_party: Path,
) -> None:
    found = available()

    assert found["ticker"] == f"{MODULE}:FACTORY"
    assert found["broken"] == "ffx_not_installed_anywhere:FACTORY"
    assert found["email"] == "factorflow.connectors.email:FACTORY"  # the built-in wins
    assert set(found) >= BUILTIN_KINDS


# -- building a third-party connector -------------------------------------------------------------


def test_a_third_party_connector_is_built_from_its_section_and_performs(
    third_party: Path, http: httpx.Client, tmp_path: Path
) -> None:
    board = tmp_path / "board.txt"
    (handler,) = build_connectors(
        {"ticker": {"board": str(board), "api_key": API_KEY}}, http)

    first = handler.perform(request(headline="aps enrolled email"), FACT)
    again = handler.perform(request(headline="aps enrolled email"), FACT)

    assert handler.kind == "ticker"
    assert (first.status, first.reference) == (OutcomeStatus.DONE, "line 1")
    assert (again.status, again.reference) == (OutcomeStatus.ALREADY_DONE, "line 1")
    assert board.read_text() == (
        f"ff-00000000000000000000000000000001 {FACT.uuid} aps enrolled email\n")


def test_the_section_can_come_from_the_config_file_and_the_environment(
    third_party: Path, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = tmp_path / "board.txt"
    config = tmp_path / "factorflow.toml"
    config.write_text(f'[connectors.ticker]\nboard = "{board.as_posix()}"\n'
                      'timeout_seconds = 3\n')
    monkeypatch.setenv("FACTORFLOW_CONNECTORS__TICKER__API_KEY", API_KEY)
    monkeypatch.setenv("FACTORFLOW_CONNECTORS__TICKER__TIMEOUT_SECONDS", "4.5")

    settings = load_settings(config)
    (handler,) = build_connectors(settings.connectors, http)

    assert handler.settings.board == board  # type: ignore[attr-defined]
    assert handler.settings.timeout_seconds == 4.5  # type: ignore[attr-defined]
    assert handler.api_key == API_KEY  # type: ignore[attr-defined]
    assert API_KEY not in repr(handler.settings)  # type: ignore[attr-defined]


def test_a_third_party_kind_is_known_to_the_rules_loader_once_declared(
    third_party: Path, http: httpx.Client, tmp_path: Path
) -> None:
    module = importlib.import_module(MODULE)
    rules = textwrap.dedent("""
        version: 1
        match: all
        rules:
          - id: board
            when: {kind: [enrollment]}
            actions:
              - id: tick
                kind: ticker
                params: {headline: "{{ fact.user.login }} enrolled {{ fact.factor.type }}"}
    """)

    with pytest.raises(InvalidRules) as unknown:
        parse_rules(rules, source="rules.yaml")
    with pytest.raises(InvalidRules) as missing:
        parse_rules(rules.replace('{headline: "', '{other: "'), source="rules.yaml",
                    action_kinds=extend_kinds([module.ACTION_KIND]))
    ruleset = parse_rules(rules, source="rules.yaml",
                          action_kinds=extend_kinds([module.ACTION_KIND]))
    (action,) = evaluate(ruleset, FACT, Enrichment(source="none", found=False)).actions
    (handler,) = build_connectors({"ticker": {"board": str(tmp_path / "b.txt")}}, http)
    outcome = handler.perform(action, FACT)

    assert "'ticker' is not a known action kind" in str(unknown.value)
    assert "params.headline: required for kind 'ticker'" in str(missing.value)
    assert isinstance(module.ACTION_KIND, ActionKind)
    assert outcome.status is OutcomeStatus.DONE
    assert (tmp_path / "b.txt").read_text().endswith(" aps@google.com enrolled email\n")


def test_several_sections_build_one_handler_each(http: httpx.Client) -> None:
    handlers = build_connectors({
        "email": {"host": "smtp.example.org", "from_address": "ff@example.org",
                  "to": "soc@example.org"},
        "okta_workflows": {"security": "public",
                           "invoke_url": "https://example.workflows.okta.com/api/flo/a/invoke"},
    }, http)

    assert [handler.kind for handler in handlers] == ["email", "okta_workflows"]


# -- errors --------------------------------------------------------------------------------------


def test_an_unknown_kind_lists_the_known_kinds(third_party: Path, http: httpx.Client) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"tickr": {}}, http)

    message = str(caught.value)
    assert message.startswith("connectors.tickr: unknown connector (known: ")
    for kind in [*BUILTIN_KINDS, "ticker", "broken"]:
        assert kind in message


def test_a_declared_connector_that_cannot_be_imported_is_a_config_error(
    third_party: Path, http: httpx.Client
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"broken": {}}, http)

    assert "connectors.broken: cannot load ffx_not_installed_anywhere:FACTORY" in str(
        caught.value)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"api_key": API_KEY}, ["connectors.ticker.board: Field required"]),
        ({"board": "b.txt", "api_key": {"value": API_KEY}},
         ["connectors.ticker.api_key: Input should be a valid string"]),
        ({"board": "b.txt", "apikey": API_KEY},
         ["connectors.ticker.apikey: Extra inputs are not permitted"]),
        ({"api_key": [API_KEY], "timeout_seconds": "soon"},
         ["connectors.ticker.board: Field required",
          "connectors.ticker.api_key: Input should be a valid string",
          "connectors.ticker.timeout_seconds: Input should be a valid number"]),
    ],
)
def test_invalid_third_party_settings_name_each_key_without_the_secret(
    third_party: Path, http: httpx.Client, section: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({"ticker": section}, http)

    message = str(caught.value)
    assert message.startswith("invalid connector settings:")
    for line in expected:
        assert line in message
    assert API_KEY not in message


@pytest.mark.parametrize(
    ("kind", "section", "expected"),
    [
        ("email", {"host": "smtp.example.org", "from_address": "ff@example.org",
                   "username": "ff", "password": 12345678},
         "connectors.email.password: Input should be a valid string"),
        ("okta_workflows", {"invoke_url": ["https://example.workflows.okta.com/api/flo/a/"
                                           "invoke?clientToken=12345678"]},
         "connectors.okta_workflows.invoke_url: Input should be a valid string"),
    ],
)
def test_invalid_built_in_settings_name_the_key_without_the_secret(
    http: httpx.Client, kind: str, section: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_connectors({kind: section}, http)

    assert expected in str(caught.value)
    assert "12345678" not in str(caught.value)
