"""Several Okta orgs in one deployment: each has its own hook path, credential, rules and
directory; events are filed under their org; one org's credential opens no other org's door."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient
from tests.payloads.shapes import enrollment_event

from factorflow.bootstrap import build_app, build_pipeline
from factorflow.errors import ConfigError
from factorflow.settings import Settings, load_settings
from factorflow.store.factory import open_store
from factorflow.store.pipeline_sql import SqlPipelineLedger

ACME_SECRET = "acme-hook-secret-0001"
GLOBEX_SECRET = "globex-hook-secret-0002"

ACME_RULES = """
version: 1
match: all
rules:
  - id: acme-audit
    when: {kind: [enrollment]}
    actions:
      - {id: audit, kind: audit, params: {category: acme}}
"""
GLOBEX_RULES = """
version: 1
match: all
rules:
  - id: globex-register
    when: {kind: [enrollment], groups: {any: [Privileged Access]}}
    actions:
      - {id: entry, kind: register, params: {register: globex-privileged}}
"""
GLOBEX_DIRECTORY = """
users:
  - id: 00u1enduser0000001
    login: pat.lee@example.com
    groups: [Privileged Access]
"""


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "acme.yaml").write_text(ACME_RULES)
    (tmp_path / "globex.yaml").write_text(GLOBEX_RULES)
    (tmp_path / "globex-directory.yaml").write_text(GLOBEX_DIRECTORY)
    return Settings(
        data_dir=tmp_path,
        orgs={
            "acme": {"hook": {"path": "/hooks/acme", "secret": ACME_SECRET},
                     "rules_file": tmp_path / "acme.yaml"},
            "globex": {"hook": {"path": "/hooks/globex", "auth_header": "X-Okta-Secret",
                                "secret": GLOBEX_SECRET},
                       "rules_file": tmp_path / "globex.yaml",
                       "directory_file": tmp_path / "globex-directory.yaml"},
        },
    )


def _delivery(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"eventType": "com.okta.event_hook", "eventId": "d-1",
                         "data": {"events": list(events)}})


def test_each_org_has_its_own_path_credential_and_partition(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    acme_event, globex_event = enrollment_event(), enrollment_event()
    with TestClient(build_app(settings)) as client:
        acme = client.post("/hooks/acme", content=_delivery(acme_event), headers={
            "Authorization": ACME_SECRET, "Content-Type": "application/json"})
        globex = client.post("/hooks/globex", content=_delivery(globex_event), headers={
            "X-Okta-Secret": GLOBEX_SECRET, "Content-Type": "application/json"})
        # One org's credential is refused on the other org's path, in either header.
        crossed = [
            client.post("/hooks/globex", content=_delivery(enrollment_event()), headers={
                "X-Okta-Secret": ACME_SECRET, "Content-Type": "application/json"}),
            client.post("/hooks/acme", content=_delivery(enrollment_event()), headers={
                "Authorization": GLOBEX_SECRET, "Content-Type": "application/json"}),
        ]
        verified = client.get("/hooks/globex", headers={
            "X-Okta-Secret": GLOBEX_SECRET, "X-Okta-Verification-Challenge": "c-1"})
        metrics = client.get("/metrics").text
    assert (acme.status_code, globex.status_code) == (204, 204)
    assert [r.status_code for r in crossed] == [401, 401]
    assert verified.json() == {"verification": "c-1"}
    store = open_store(settings.store_url())
    try:
        assert store.get_event(acme_event["uuid"]).org == "acme"  # type: ignore[union-attr]
        assert store.get_event(globex_event["uuid"]).org == "globex"  # type: ignore[union-attr]
        assert store.counts()["events"] == 2
        assert {row.org for row in store.ledger()} == {"acme", "globex"}
    finally:
        store.close()
    assert 'factorflow_requests_rejected_total{org="globex",reason="auth"} 1.0' in metrics
    assert 'factorflow_requests_rejected_total{org="acme",reason="auth"} 1.0' in metrics


def test_each_org_is_decided_by_its_own_rules_and_directory(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    acme_event, globex_event = enrollment_event(), enrollment_event()
    with TestClient(build_app(settings)) as client:
        client.post("/hooks/acme", content=_delivery(acme_event), headers={
            "Authorization": ACME_SECRET, "Content-Type": "application/json"})
        client.post("/hooks/globex", content=_delivery(globex_event), headers={
            "X-Okta-Secret": GLOBEX_SECRET, "Content-Type": "application/json"})
    store = open_store(settings.store_url())
    pipeline, http = build_pipeline(settings, store)
    try:
        decided = {}
        for event in (acme_event, globex_event):
            assert pipeline.prepare(event["uuid"])["status"] == "ready"
            snapshot = pipeline.enrich(event["uuid"])
            decided[event["uuid"]] = (snapshot, pipeline.decide(event["uuid"], "run-1", snapshot))
        acme_snapshot, acme_actions = decided[acme_event["uuid"]]
        globex_snapshot, globex_actions = decided[globex_event["uuid"]]
        assert [(a["rule_id"], a["kind"]) for a in acme_actions] == [("acme-audit", "audit")]
        assert [(a["rule_id"], a["kind"]) for a in globex_actions] == [
            ("globex-register", "register")
        ]
        # acme has no directory; globex's directory knows the user.
        assert acme_snapshot["source"] == "none"
        assert globex_snapshot["found"] is True
        records = SqlPipelineLedger(store).decisions_of(globex_event["uuid"])
        assert records[-1]["decision"]["rules_source"].endswith("globex.yaml")
    finally:
        http.close()
        store.close()


def test_generated_secrets_are_per_org(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, orgs={
        "acme": {"hook": {"path": "/hooks/acme"}},
        "globex": {"hook": {"path": "/hooks/globex"}},
    })
    with TestClient(build_app(settings)) as client:
        acme_secret = (tmp_path / "hook-secret-acme").read_text().strip()
        globex_secret = (tmp_path / "hook-secret-globex").read_text().strip()
        assert acme_secret != globex_secret
        ok = client.get("/hooks/acme", headers={"Authorization": acme_secret,
                                                "X-Okta-Verification-Challenge": "x"})
        refused = client.get("/hooks/globex", headers={"Authorization": acme_secret,
                                                       "X-Okta-Verification-Challenge": "x"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    assert (tmp_path / "hook-secret-acme").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("orgs", "message"),
    [
        ({"a": {"hook": {"path": "/hooks/x"}}, "b": {"hook": {"path": "/hooks/x"}}},
         "orgs 'a' and 'b' share the hook path /hooks/x"),
        ({"bad name": {"hook": {"path": "/hooks/x"}}}, "org name 'bad name'"),
        ({"a": {"hook": {"path": "/hooks/a"}, "rule_file": "x.yaml"}}, "orgs.a.rule_file"),
    ],
)
def test_invalid_org_configuration_names_the_problem(
    tmp_path: Path, orgs: dict[str, Any], message: str
) -> None:
    config = tmp_path / "factorflow.toml"
    lines = []
    for name, org in orgs.items():
        lines.append(f'[orgs."{name}".hook]\npath = "{org["hook"]["path"]}"')
        for key, value in org.items():
            if key != "hook":
                lines.append(f'[orgs."{name}"]\n{key} = {json.dumps(value)}')
    config.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert message in str(raised.value)
