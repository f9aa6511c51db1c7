"""``factorflow rules check`` and ``factorflow rules test`` through click's runner."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from tests.conftest import CORPUS
from tests.unit.test_rules_shapes import (
    admin_enrolled,
    api_enrolled,
    corpus_activation,
    oie_enrollment,
    reset_all,
)

from factorflow.cli_rules import rules
from factorflow.domain.actions import idempotency_key

EXAMPLES = Path(str(resources.files("factorflow").joinpath("examples")))
RULES = EXAMPLES / "rules.example.yaml"
FIRST = EXAMPLES / "rules.first-match.example.yaml"
DIRECTORY = EXAMPLES / "directory.example.yaml"
RESET_UUID = "7b1e2c3d-0b8f-11f1-9f3a-0b6c2e4d7a10"
ENROLL_UUID = "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"
ADMIN_UUID = "9a8b7c6d-0b8f-11f1-9f3a-0b6c2e4d7a10"
CORPUS_UUID = "e766d84e-a0a8-11ed-a750-9f5fc296ce63"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(rules, [str(arg) for arg in args])


def recorded_events() -> list[dict[str, Any]]:
    """Dana (privileged) resets her factors, then enrolls a security key 2 h later; the corpus
    activation (unknown user); a helpdesk agent enrolls SMS for Lee (Sales)."""
    admin = admin_enrolled(uuid=ADMIN_UUID)
    admin["target"] = [{"id": "00u1sales00000003", "type": "User",
                        "alternateId": "lee.sales@example.com", "displayName": "Lee Sales"}]
    return [
        reset_all(uuid=RESET_UUID, published="2026-03-15T08:10:00.000Z"),
        oie_enrollment(uuid=ENROLL_UUID),
        corpus_activation(),
        admin,
    ]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps(event) + "\n" for event in recorded_events()))
    return path


def test_check_accepts_the_examples() -> None:
    result = run("check", RULES)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{RULES}: OK: 4 rule(s), 4 enabled, match: all, when nothing matches: report (report); "
        "looks back 24 h for recent factor events\n")
    result = run("check", FIRST)
    assert result.exit_code == 0
    assert "match: first" in result.stdout


def test_check_prints_every_problem_on_stderr_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    original = (
        "version: 1\nmatch: all\nrules:\n"
        "  - id: privileged-enrollment\n    when: {strength: {in: [strong]}}\n    actions: []\n"
        "  - id: typo\n    when: {grups: {any: [x]}}\n    actions: [{id: a, kind: jria}]\n"
    )
    path.write_text(original)
    result = run("check", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: rule 'privileged-enrollment': when.strength.in: 'strong' is not one of "
        "phishing_resistant, device_bound_push, otp, sms_voice_email, password_question, unknown",
        f"{path}: rule 'typo': when.grups: unknown key (did you mean 'groups'? allowed: kind, "
        "factor_type, strength, enrolled_by, engine, country, zone, profile, groups, "
        "recent_factor_event, any_of)",
        f"{path}: rule 'typo': action 'a': kind: 'jria' is not a known action kind (did you mean "
        "'jira'?) (known: audit, checkpoint, email, jira, okta_group, okta_workflows, pagerduty, "
        "register, report, servicenow, slack, teams, webhook)",
        f"{path}: 3 problem(s)",
    ]
    assert path.read_text() == original  # checking never rewrites the file


def test_check_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nmatch: all\nrules:\n  - id: [x\n")
    result = run("check", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: line 5: column 1: YAML syntax error")
    result = run("check", tmp_path / "missing.yaml")
    assert result.exit_code == 1
    assert result.stderr == (f"{tmp_path / 'missing.yaml'}: cannot read the file: No such file "
                             f"or directory\n{tmp_path / 'missing.yaml'}: 1 problem(s)\n")


def test_shadow_mode_prints_what_would_happen(tmp_path: Path, events_file: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("test", RULES, "--events", events_file, "--directory", DIRECTORY)
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    reset, enroll, unknown, admin, summary = blocks
    assert reset.splitlines()[0].startswith(f"{RESET_UUID}  2026-03-15T08:10:00.000Z")
    assert "  no rule matched: default actions" in reset.splitlines()
    assert "  matched: privileged-enrollment, passwordless-checkpoint, reset-then-enroll" in enroll
    assert ("      summary: MFA enrollment by privileged user dana.admin@example.com: webauthn"
            in enroll)
    assert "      campaign: passwordless-2026" in enroll
    ticket_key = idempotency_key(ENROLL_UUID, "privileged-enrollment", "ticket")
    assert f"  action privileged-enrollment/ticket (jira)  key {ticket_key}" in enroll
    assert ("  suppress privileged-enrollment for 24 h: key privileged-enrollment|"
            "user.id=00u1privileged0001|factor.type=webauthn") in enroll
    assert "      dedup_key: reset-then-enroll-00u1privileged0001" in enroll
    assert unknown.splitlines()[1] == (
        "  user aps@google.com, factor email (sms_voice_email), enrolled by self; "
        "directory: not found")
    assert "  action defaults/report (report)" in unknown
    assert "  matched: admin-enrolled-factor" in admin
    assert ("      text: sms was enrolled for lee.sales@example.com by admin "
            "helpdesk@example.com") in admin
    assert summary == ("4 event(s): 2 matched a rule; 9 action(s) would run, 0 could not be "
                       "rendered, 2 suppression key(s). Nothing was sent or stored.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no side effects


def test_shadow_mode_json_and_trace(events_file: Path) -> None:
    result = run("test", RULES, "--events", events_file, "--directory", DIRECTORY, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["uuid"] for r in records] == [RESET_UUID, ENROLL_UUID, CORPUS_UUID, ADMIN_UUID]
    enroll = records[1]
    assert enroll["enrichment"] == {"source": "directory", "found": True}
    decision = enroll["decision"]
    assert decision["matched_rules"] == [
        "privileged-enrollment", "passwordless-checkpoint", "reset-then-enroll"]
    checkpoint = next(a for a in decision["actions"] if a["kind"] == "checkpoint")
    assert checkpoint["params"] == {"campaign": "passwordless-2026", "factor": "webauthn"}
    recent = next(t for t in decision["trace"] if t["rule_id"] == "reset-then-enroll")
    assert recent["conditions"][1]["detail"].startswith(
        "reset_all unknown at 2026-03-15T08:10:00.000000Z (2.2 h before)")

    traced = run("test", RULES, "--events", events_file, "--trace")
    assert traced.exit_code == 0
    assert "  rule privileged-enrollment: not_matched" in traced.stdout
    assert ("    [no ] any_of: no branch holds: 1) groups any of [Privileged Access, Domain "
            "Admins]: member of none of them; user not found in none") in traced.stdout


def test_first_match_example(tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    events.write_text(json.dumps([api_enrolled(uuid="a1"), corpus_activation()]))
    result = run("test", FIRST, "--events", events, "--json")
    assert result.exit_code == 0, result.output
    api, email = (json.loads(line)["decision"] for line in result.stdout.splitlines())
    assert (api["matched_rules"], api["actions"]) == (["ignore-provisioning"], [])
    assert [t["status"] for t in api["trace"]] == [
        "matched", "not_evaluated", "not_evaluated", "not_evaluated"]
    # email from India: a weak factor outside the US and Canada
    assert email["matched_rules"] == ["weak-factor"]
    assert email["actions"][0]["params"]["to"] == "aps@google.com"


def test_events_from_a_delivery_envelope() -> None:
    delivery = CORPUS / "okta-deliveries" / "2023-03-28_user.session.start_85b60edb.json"
    result = run("test", RULES, "--events", delivery, "--json")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["uuid"] == "f1d0b993-cc19-11ed-a688-db22c99ef6c4"
    assert record["decision"]["used_defaults"] is True


def test_the_whole_corpus_runs_without_errors() -> None:
    result = run("test", RULES, "--events", CORPUS / "okta-events.ndjson", "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == sum(1 for line in (CORPUS / "okta-events.ndjson").open() if line.strip())
    assert all(not r["decision"]["failed_actions"] for r in records)


def test_bad_events_and_directory_files(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(oie_enrollment()) + "\n{not json\n")
    result = run("test", RULES, "--events", events)
    assert result.exit_code == 1
    assert f"{events}: line 2: not valid JSON" in result.stderr
    assert result.stdout == ""

    events.write_text('[{"uuid": "x"}, 5]')
    result = run("test", RULES, "--events", events)
    assert result.exit_code == 1
    assert f"{events}: item 1: expected a JSON object (an Okta LogEvent)" in result.stderr

    events.write_text(json.dumps(oie_enrollment()) + "\n")
    directory = tmp_path / "people.csv"
    directory.write_text("title\nx\n")
    result = run("test", RULES, "--events", events, "--directory", directory)
    assert result.exit_code == 1
    assert f"{directory}: line 1: the header needs an 'id' or a 'login' column" in result.stderr

    bad_rules = tmp_path / "rules.yaml"
    bad_rules.write_text("version: 1\nmatch: most\nrules: []\n")
    result = run("test", bad_rules, "--events", events)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"{bad_rules}: match: 'most' is not one of all, first"

    result = run("test", RULES, "--events", tmp_path / "missing.ndjson")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_template_failures_are_shown_not_raised(tmp_path: Path, events_file: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nmatch: all\nrules:\n  - id: r\n    actions:\n"
        "      - {id: a, kind: slack, params: {text: '{{ enrichment.profile.title }}'}}\n")
    result = run("test", path, "--events", events_file, "--directory", DIRECTORY)
    assert result.exit_code == 0
    assert ("  FAILED r/a (slack): params.text: UndefinedError: 'dict object' has no attribute "
            "'title'") in result.stdout  # the corpus user is not in the directory
    assert result.stdout.endswith("3 action(s) would run, 1 could not be rendered, "
                                  "0 suppression key(s). Nothing was sent or stored.\n")
