"""The registry of action kinds and the report action."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from factorflow.actions import BUILTIN_KINDS, ActionRegistry, builtin_registry
from factorflow.actions.report import ReportHandler
from factorflow.domain.actions import ActionRequest, OutcomeStatus
from factorflow.domain.facts import Engine, EnrolledBy, EventKind, Fact, Factor, Strength
from factorflow.errors import ConfigError, PermanentActionError
from factorflow.store.factory import open_store

FACT = Fact(
    uuid="7a0e2b8e-0000-4000-8000-000000000002", event_type="user.mfa.factor.activate",
    kind=EventKind.ENROLLMENT, org="example.okta.com", user=None, actor=None,
    enrolled_by=EnrolledBy.UNKNOWN,
    factor=Factor("unknown", Strength.UNKNOWN, None, None, None, None),
    outcome="SUCCESS", outcome_reason=None, published="2024-05-01T11:59:00.000Z",
    published_at=None, received_at=None, delay_seconds=None, engine=Engine.UNKNOWN,
)


def test_report_is_done_every_time_and_changes_nothing() -> None:
    handler = ReportHandler()
    request = ActionRequest("r1", "keep", "report", {}, "ff-key")
    first = handler.perform(request, FACT)
    second = handler.perform(request, FACT)
    assert first.status is OutcomeStatus.DONE
    assert first.detail == "stored for reporting"
    assert second == first


def test_builtin_registry_has_every_builtin_kind(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'ff.db'}")
    registry = builtin_registry(store)
    try:
        assert registry.kinds() == frozenset(BUILTIN_KINDS)
        for kind in BUILTIN_KINDS:
            assert registry.handler(kind).kind == kind
            assert registry[kind] is registry.handler(kind)
        assert sorted(registry) == sorted(BUILTIN_KINDS)
        assert len(registry) == len(BUILTIN_KINDS)
        assert registry.get("jira") is None
        outcome = registry.perform(ActionRequest("r1", "keep", "report", {}, "k"), FACT)
        assert outcome.detail == "stored for reporting"
    finally:
        registry.close()
        store.close()


def test_unknown_kind_is_a_permanent_error_naming_the_known_ones() -> None:
    registry = ActionRegistry([ReportHandler()])
    with pytest.raises(PermanentActionError) as caught:
        registry.perform(ActionRequest("r1", "a", "jira", {}, "k"), FACT)
    assert str(caught.value) == "no handler for action kind 'jira' (known: report)"


def test_a_kind_registers_once() -> None:
    registry = ActionRegistry([ReportHandler()])
    with pytest.raises(ValueError, match="'report' is already registered"):
        registry.add(ReportHandler())
    assert registry.kinds() == {"report"}


def test_a_malformed_webhook_secret_stops_the_registry(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'ff.db'}")
    try:
        with pytest.raises(ConfigError) as caught:
            builtin_registry(store, webhook_secrets={"crm": SecretStr("plain-text-secret")})
        assert str(caught.value) == "webhook secret 'crm' must start with whsec_"
        assert "plain-text-secret" not in str(caught.value)
    finally:
        store.close()
