"""``factorflow audit|register|campaigns ...`` through click's runner, on a real store."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from tests.conftest import CORPUS

from factorflow.actions.audit import AuditHandler, verify_audit
from factorflow.actions.checkpoint import CheckpointHandler
from factorflow.actions.register import RegisterHandler
from factorflow.cli_actions import audit, campaigns, register
from factorflow.domain.actions import ActionRequest, idempotency_key
from factorflow.domain.facts import Fact, Person
from factorflow.okta.translate import to_fact
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

_ACTIVATE = next(
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if b'"user.mfa.factor.activate"' in line
)
BASE_FACT = to_fact(_ACTIVATE, org="example.okta.com", received_at="2024-05-01T12:00:00.000000Z")
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PEOPLE = [
    ("00u-alice", "alice@example.com", "2024-05-01T08:00:00.000000Z"),
    ("00u-bob", "bob@example.com", "2024-05-02T08:00:00.000000Z"),
    ("00u-carol", "carol@example.com", "2024-05-03T08:00:00.000000Z"),
]


def clock() -> datetime:
    return NOW


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FACTORFLOW_* variable of the surrounding shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("FACTORFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'factorflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "factorflow.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[store]\nurl = "{store_url}"\n', encoding="utf-8")
    return path


@pytest.fixture
def store(store_url: str) -> Iterator[SqlEventStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def fact_of(number: int) -> Fact:
    user, login, published_at = PEOPLE[number]
    return dataclasses.replace(
        BASE_FACT, uuid=f"5f1d3c1e-0000-4000-8000-{number:012d}", published_at=published_at,
        user=Person(id=user, login=login, display_name=None, type="User"),
    )


def perform(store: SqlEventStore, kind: str, params: dict[str, Any]) -> None:
    handlers = {"audit": AuditHandler, "checkpoint": CheckpointHandler,
                "register": RegisterHandler}
    handler = handlers[kind](store, clock)
    for number in range(len(PEOPLE)):
        fact = fact_of(number)
        handler.perform(
            ActionRequest("r1", kind, kind, params, idempotency_key(fact.uuid, "r1", kind)), fact
        )


def run(group: Any, *args: str) -> Result:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def audit_rows(store: SqlEventStore) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.read("SELECT * FROM audit_log ORDER BY seq")]


def test_audit_verify_reports_an_intact_chain(config: Path, store: SqlEventStore) -> None:
    perform(store, "audit", {})
    head = verify_audit(store).head_hash
    result = run(audit, "verify", "--config", str(config))
    assert result.exit_code == 0
    assert result.stdout == f"audit chain OK: 3 rows; head row 3, hash {head}\n"


def test_audit_verify_fails_naming_the_first_bad_row(config: Path, store: SqlEventStore) -> None:
    perform(store, "audit", {})
    with store.write() as cur:
        cur.execute("UPDATE audit_log SET actor = 'someone else' WHERE seq = 2")
    tampered = audit_rows(store)
    result = run(audit, "verify", "--config", str(config))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: audit chain broken at row 2: row 2: its content does not match its hash "
        "(changed) (2 rows checked)\n"
    )
    assert audit_rows(store) == tampered


def test_audit_export_writes_json_lines(config: Path, store: SqlEventStore,
                                        tmp_path: Path) -> None:
    perform(store, "audit", {})
    target = tmp_path / "audit.jsonl"
    result = run(audit, "export", "--config", str(config), "--output", str(target))
    assert result.exit_code == 0
    assert result.stderr == "exported 3 audit rows\n"
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert [line["details"]["fact"]["user"]["login"] for line in lines] == [
        login for _, login, _ in PEOPLE]
    to_stdout = run(audit, "export", "--config", str(config))
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout == target.read_text(encoding="utf-8")


def test_register_export_writes_csv(config: Path, store: SqlEventStore, tmp_path: Path) -> None:
    perform(store, "register", {"register": "sms-exceptions", "reason": "SMS only",
                                "owner": "iam", "expires_in_days": 14})
    target = tmp_path / "register.csv"
    result = run(register, "export", "sms-exceptions", "--config", str(config),
                 "--output", str(target))
    assert result.exit_code == 0
    assert result.stderr == "exported 3 entries of register 'sms-exceptions'\n"
    table = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert [(row["user_login"], row["reason"], row["owner"], row["expires_at"]) for row in
            table] == [(login, "SMS only", "iam", "2024-05-15T12:00:00.000000Z")
                       for _, login, _ in PEOPLE]
    to_stdout = run(register, "export", "sms-exceptions", "--config", str(config))
    assert to_stdout.stdout.splitlines() == target.read_text(encoding="utf-8").splitlines()


def test_register_export_of_an_unknown_register_fails(config: Path, store: SqlEventStore,
                                                      tmp_path: Path) -> None:
    perform(store, "register", {"register": "sms-exceptions"})
    target = tmp_path / "register.csv"
    result = run(register, "export", "sms-exeptions", "--config", str(config),
                 "--output", str(target))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: register 'sms-exeptions' has no entries (registers: sms-exceptions)\n")
    assert not target.exists()
    assert len(store.read("SELECT id FROM register_entries")) == 3


def test_campaigns_progress(config: Path, store: SqlEventStore) -> None:
    perform(store, "checkpoint", {"campaign": "fido2-2024"})
    result = run(campaigns, "progress", "fido2-2024", "--config", str(config))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "campaign 'fido2-2024': 3 users completed"
    assert [line.split()[:3] for line in lines[1:]] == [
        [at, login, user] for user, login, at in PEOPLE]
    as_json = run(campaigns, "progress", "fido2-2024", "--json", "--config", str(config))
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(e["user_id"], e["completed_at"], e["factor_type"]) for e in entries] == [
        (user, at, "email") for user, _, at in PEOPLE]
    none_yet = run(campaigns, "progress", "okta-verify", "--config", str(config))
    assert none_yet.exit_code == 0
    assert none_yet.stdout == (
        "campaign 'okta-verify': 0 users completed\n(campaigns with progress: fido2-2024)\n")


def test_a_bad_store_url_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "factorflow.toml"
    path.write_text('[store]\nurl = "mysql://db/factorflow"\n', encoding="utf-8")
    result = run(audit, "verify", "--config", str(path))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: store.url must start with sqlite:/// or postgresql:// (got a URL with scheme "
        "'mysql')\n")
