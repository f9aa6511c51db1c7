"""Several Okta orgs in one deployment: each has its own hook path, credential, rules and
directory; events are filed under their org; one org's credential opens no other org's door."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from tests.integration.held_peer import HeldPeer
from tests.payloads.shapes import enrollment_event

from factorflow.bootstrap import build_app, build_pipeline
from factorflow.errors import ConfigError
from factorflow.settings import Settings, load_settings
from factorflow.store.factory import open_store
from factorflow.store.pipeline_sql import SqlPipelineLedger
from factorflow.store.sql import SqlEventStore

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


# -- one org's slow connector does not hold up the others -------------------------------------

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"factorflow-org-isolation-key-32b").decode()
DEADLINE = 90.0  # seconds any expected state may take to appear (a loaded 2-core machine)
SLOW_RULES = """
version: 1
match: all
rules:
  - id: notify
    when: {{kind: [enrollment]}}
    actions:
      - {{id: hook, kind: webhook, params: {{url: "{url}", secret: peer, type: mfa.enrolled}}}}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'factorflow.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def slow_peer() -> Iterator[HeldPeer]:
    with HeldPeer() as peer:
        yield peer


def _isolation_settings(tmp_path: Path, store_url: str, peer: HeldPeer,
                        **workflows: Any) -> Settings:
    (tmp_path / "acme.yaml").write_text(SLOW_RULES.format(url=peer.url("/acme")))
    (tmp_path / "globex.yaml").write_text(ACME_RULES.replace("acme", "globex"))
    system_db = store_url if store_url.startswith("postgresql") else None
    return Settings(
        data_dir=tmp_path,
        store={"url": store_url},
        orgs={
            "acme": {"hook": {"path": "/hooks/acme", "secret": ACME_SECRET},
                     "rules_file": tmp_path / "acme.yaml"},
            "globex": {"hook": {"path": "/hooks/globex", "secret": GLOBEX_SECRET},
                       "rules_file": tmp_path / "globex.yaml"},
        },
        actions={"webhook_secrets": {"peer": WEBHOOK_SECRET}},
        # A webhook that times out is retried soon and often: it keeps its slot meanwhile.
        pipeline={"retry": {"webhook": {"max_attempts": 100, "initial_seconds": 0.2,
                                        "max_seconds": 1.0}}},
        workflows={"worker_concurrency": 4, "relay_interval_seconds": 0.1,
                   "queue_polling_seconds": 0.1, "system_database_url": system_db, **workflows},
    )


def _statuses(store: SqlEventStore, events: list[dict[str, Any]]) -> dict[str, str]:
    """event uuid -> status of its one action, for the events that have a result."""
    marks = ", ".join("?" for _ in events)
    rows = store.read(f"SELECT event_uuid, status FROM action_results WHERE event_uuid IN "  # noqa: S608
                      f"({marks})", tuple(e["uuid"] for e in events))
    return {str(uuid): str(status) for uuid, status in rows}


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE:g} s: {what}")
        time.sleep(0.1)


def _workflow_gauge(client: TestClient) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.labels["org"], s.labels["state"]): s.value
            for family in families if family.name == "factorflow_workflows"
            for s in family.samples}


def test_a_slow_org_keeps_to_its_share_of_the_worker_and_the_other_org_moves_on(
    tmp_path: Path, store_url: str, slow_peer: HeldPeer
) -> None:
    """acme's connector hangs. With 4 workflow slots and two orgs, acme may hold 2 (the
    default share); globex's events, sent after acme's six, are carried out meanwhile. Without
    the share acme's six would take all 4 slots and globex would wait for acme's connector."""
    settings = _isolation_settings(tmp_path, store_url, slow_peer)
    assert settings.workflows.org_share(len(settings.org_list())) == 2
    acme_events = [enrollment_event() for _ in range(6)]
    globex_events = [enrollment_event() for _ in range(3)]
    slow_peer.close_gate()
    with TestClient(build_app(settings, worker=True)) as client:
        store: SqlEventStore = client.app.store  # type: ignore[attr-defined]
        assert client.post("/hooks/acme", content=_delivery(*acme_events), headers={
            "Authorization": ACME_SECRET, "Content-Type": "application/json"}).status_code == 204
        assert slow_peer.wait_for_in_flight(2, DEADLINE), "acme's webhooks never started"
        assert client.post("/hooks/globex", content=_delivery(*globex_events), headers={
            "Authorization": GLOBEX_SECRET, "Content-Type": "application/json"}
        ).status_code == 204

        _wait_for(lambda: _statuses(store, globex_events) == {
            e["uuid"]: "done" for e in globex_events}, "globex's events carried out")
        # acme is stuck on its connector, at its share: two running, four waiting their turn.
        assert _statuses(store, acme_events) == {}
        assert slow_peer.max_in_flight == 2
        gauge = _workflow_gauge(client)
        assert (gauge.get(("acme", "running")), gauge.get(("acme", "enqueued"))) == (2.0, 4.0)
        assert ("globex", "running") not in gauge and ("globex", "enqueued") not in gauge

        slow_peer.open_gate()
        _wait_for(lambda: _statuses(store, acme_events) == {
            e["uuid"]: "done" for e in acme_events}, "acme's events carried out")
    assert slow_peer.max_in_flight == 2  # never more than its share at once
    assert slow_peer.paths.count("/acme") >= 6


def test_replays_go_to_their_org_and_the_old_queue_is_still_served(tmp_path: Path) -> None:
    """A replay is enqueued under its event's org; a workflow that an earlier version left on
    the old, unpartitioned queue still runs after the upgrade."""
    from dbos import DBOS, SetWorkflowID

    from factorflow.workflows import process
    from factorflow.workflows.client import WorkflowClient
    from factorflow.workflows.engine import ORG_QUEUE

    settings = _settings(tmp_path)
    acme_event, globex_event = enrollment_event(), enrollment_event()
    with TestClient(build_app(settings, worker=True)) as client:
        store: SqlEventStore = client.app.store  # type: ignore[attr-defined]
        client.post("/hooks/acme", content=_delivery(acme_event), headers={
            "Authorization": ACME_SECRET, "Content-Type": "application/json"})
        client.post("/hooks/globex", content=_delivery(globex_event), headers={
            "X-Okta-Secret": GLOBEX_SECRET, "Content-Type": "application/json"})
        _wait_for(lambda: len(_statuses(store, [acme_event, globex_event])) == 2,
                  "both events carried out")
        workflows = WorkflowClient(settings, SqlPipelineLedger(store))
        try:
            replay = workflows.replay(acme_event["uuid"])
            _wait_for(lambda: workflows.status(replay) == "SUCCESS", "the replay finishes")
        finally:
            workflows.close()
        # The old queue, as an earlier version registered it, with a workflow left on it.
        DBOS.register_queue(process.QUEUE, worker_concurrency=4, polling_interval_sec=0.1)
        legacy = f"legacy-{globex_event['uuid']}"
        with SetWorkflowID(legacy):
            DBOS.enqueue_workflow(process.QUEUE, process.process_event, globex_event["uuid"])
        _wait_for(lambda: DBOS.get_workflow_status(legacy).status == "SUCCESS",  # type: ignore[union-attr]
                  "the workflow on the old queue finishes")
        (replayed,) = DBOS.list_workflows(workflow_ids=[replay])
        first = DBOS.list_workflows(workflow_ids=[acme_event["uuid"], globex_event["uuid"]])
        # Done once: the replay and the old queue's run found the actions done already.
        assert _statuses(store, [acme_event, globex_event]) == {
            acme_event["uuid"]: "done", globex_event["uuid"]: "done"}
        assert store.read("SELECT COUNT(*) FROM action_results")[0][0] == 2
    assert (replayed.queue_name, replayed.queue_partition_key) == (ORG_QUEUE, "acme")
    assert {(w.queue_name, w.queue_partition_key) for w in first} == {
        (ORG_QUEUE, "acme"), (ORG_QUEUE, "globex")}


@pytest.mark.parametrize(("workflows", "message"), [
    ({"worker_concurrency": 4, "org_concurrency": 5},
     "org_concurrency (5) cannot exceed worker_concurrency (4)"),
    ({"org_concurrency": 0}, "workflows.org_concurrency: Input should be greater than or equal"),
])
def test_an_impossible_org_share_is_a_config_error(
    tmp_path: Path, workflows: dict[str, int], message: str
) -> None:
    config = tmp_path / "factorflow.toml"
    config.write_text("[workflows]\n" + "".join(f"{k} = {v}\n" for k, v in workflows.items()))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert message in str(raised.value)


def test_the_org_share_defaults_to_half_the_worker_with_several_orgs() -> None:
    one = Settings(workflows={"worker_concurrency": 16})
    two = Settings(workflows={"worker_concurrency": 16}, orgs={
        "a": {"hook": {"path": "/hooks/a"}}, "b": {"hook": {"path": "/hooks/b"}}})
    assert one.workflows.org_share(len(one.org_list())) == 16
    assert two.workflows.org_share(len(two.org_list())) == 8
    assert Settings(workflows={"worker_concurrency": 1}).workflows.org_share(3) == 1
    assert Settings(workflows={"worker_concurrency": 16, "org_concurrency": 3}) \
        .workflows.org_share(1) == 3
