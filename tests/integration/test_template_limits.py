"""A template past its limits is an action failure, not a crash: the pipeline dead-letters that
one action with the reason (rule, action and parameter named), runs the others, and records the
decision."""

from __future__ import annotations

from pathlib import Path

import orjson
from starlette.testclient import TestClient
from tests.conftest import SECRET, make_settings
from tests.payloads.shapes import enrollment_event

from factorflow.bootstrap import build_app, build_pipeline
from factorflow.store.factory import open_store
from factorflow.store.pipeline_sql import SqlPipelineLedger

RULES = """
version: 1
match: all
template_limits: {max_output_bytes: 2048, max_loop_iterations: 500}
rules:
  - id: notify
    when: {kind: [enrollment]}
    actions:
      - id: audit
        kind: audit
        params: {category: "{{ fact.factor.type }}"}
      - id: digest
        kind: audit
        params:
          category: "{% for i in range(100) %}{{ fact.uuid }}{% endfor %}"
      - id: spin
        kind: audit
        params:
          category: "{% for i in range(400) %}{% for j in range(400) %}{% endfor %}{% endfor %}"
"""


def test_a_template_past_its_limits_is_dead_lettered_with_the_reason(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES, encoding="utf-8")
    settings = make_settings(tmp_path, pipeline={"rules_file": rules_file},
                             workflows={"enabled": False})
    event = enrollment_event()
    body = orjson.dumps({"eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
                         "data": {"events": [event]}})
    with TestClient(build_app(settings)) as client:
        answer = client.post("/hooks/okta", content=body, headers={
            "Authorization": SECRET, "Content-Type": "application/json"})
        assert answer.status_code == 204
    store = open_store(settings.store_url())
    pipeline, http = build_pipeline(settings, store)
    try:
        uuid = event["uuid"]
        assert pipeline.prepare(uuid)["status"] == "ready"
        to_run = pipeline.decide(uuid, "run-1", pipeline.enrich(uuid))
        ledger = SqlPipelineLedger(store)
        letters = sorted(ledger.dead_letters(), key=lambda letter: letter.action_id)
        record = ledger.decisions_of(uuid)[-1]["decision"]
    finally:
        http.close()
        store.close()

    # The action within its limits goes ahead; the other two are dead letters with the reason.
    assert [(a["rule_id"], a["action_id"]) for a in to_run] == [("notify", "audit")]
    assert [(d.event_uuid, d.rule_id, d.action_id, d.kind, d.reason, d.attempts, d.status)
            for d in letters] == [
        (uuid, "notify", "digest", "audit",
         "could not prepare the action: params.category: the rendered text is longer than the "
         "limit of 2048 bytes (template_limits.max_output_bytes)", 0, "open"),
        (uuid, "notify", "spin", "audit",
         "could not prepare the action: params.category: the template ran more than 500 loop "
         "iterations (template_limits.max_loop_iterations)", 0, "open"),
    ]
    assert sorted(f["action_id"] for f in record["failed_actions"]) == ["digest", "spin"]
