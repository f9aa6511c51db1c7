"""Building what the dashboard shows: Okta enrollment events (the bundled sample, reshaped),
their delivery through the real hook endpoint, and the real pipeline run over them step by
step (prepare, enrich, decide, act, dead-letter), as the workflow engine would."""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from factorflow.bootstrap import build_pipeline
from factorflow.settings import Settings
from factorflow.store.sql import SqlEventStore
from tests.acceptance.serverproc import delivery_body as delivery
from tests.acceptance.serverproc import enrollment_event

CAMPAIGN = "pilot-2026"
PILOT_GROUP = "Passwordless Pilot"
ADMIN_ID = "00uHelpdeskAdmin0001"
ADMIN = {"id": ADMIN_ID, "type": "User", "alternateId": "helpdesk@example.com",
         "displayName": "Help Desk", "detailEntry": None}

# Every enrollment: an audit row and a campaign checkpoint. An admin's enrollment also asks
# for a Jira ticket; Jira is not configured here, so that action is dead-lettered.
RULES = f"""\
version: 1
match: all
rules:
  - id: enrolled
    when:
      kind: [enrollment]
    actions:
      - id: log
        kind: audit
      - id: done
        kind: checkpoint
        params:
          campaign: {CAMPAIGN}
  - id: admin-ticket
    when:
      kind: [enrollment]
      enrolled_by: {{in: [admin]}}
    actions:
      - id: ticket
        kind: jira
        params:
          project: SEC
          summary: "factor enrolled for {{{{ fact.user.login }}}}"
"""


def user_id(n: int) -> str:
    return f"00uUser{n:013d}"


def login(n: int) -> str:
    return f"user{n}@example.com"


def directory_yaml(pilot: range, others: range) -> str:
    lines = ["users:"]
    for n in pilot:
        lines += [f"  - id: {user_id(n)}", f"    login: {login(n)}",
                  f"    groups: [{PILOT_GROUP}, Everyone]"]
    for n in others:
        lines += [f"  - id: {user_id(n)}", f"    login: {login(n)}", "    groups: [Everyone]"]
    return "\n".join(lines) + "\n"


def enrollment(
    n: int, *, published: datetime | None = None, authenticator: str = "Okta Verify",
    method: str | None = "PUSH", by_admin: bool = False, outcome: str = "SUCCESS",
) -> dict[str, Any]:
    """The bundled enrollment for user number ``n``, under a fresh uuid."""
    return enrollment_event(
        user_id(n), n, published or datetime.now(UTC) - timedelta(seconds=2),
        actor=dict(ADMIN) if by_admin else None, outcome=outcome,
        factor=(authenticator, method), new_transaction=False,
    )


def site_settings(data_dir: Path, *, secret: str, **sections: Any) -> Settings:
    """Settings with the rules, a directory and the pilot campaign (files in ``data_dir``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rules = data_dir / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    directory = data_dir / "directory.yaml"
    directory.write_text(directory_yaml(range(0, 6), range(6, 9)), encoding="utf-8")
    pipeline = {"rules_file": rules, "directory_file": directory, **sections.pop("pipeline", {})}
    campaigns = sections.pop("campaigns", {CAMPAIGN: {
        "description": "Passwordless pilot", "population_group": PILOT_GROUP,
        "required_strength": ["phishing_resistant"], "deadline": "2026-12-31",
    }})
    return Settings(data_dir=data_dir, hook={"secret": secret, **sections.pop("hook", {})},
                    pipeline=pipeline, campaigns=campaigns, **sections)


def process(settings: Settings, store: SqlEventStore, uuids: list[str]) -> None:
    """Run the real pipeline over stored events: every action is tried once, and one that
    fails for good is dead-lettered (what the workflow does, without its retries)."""
    pipeline, http = build_pipeline(settings, store)
    try:
        for uuid in uuids:
            if pipeline.prepare(uuid)["status"] != "ready":
                continue
            snapshot = pipeline.enrich(uuid)
            for request in pipeline.decide(uuid, uuid, snapshot):
                result = pipeline.attempt(uuid, request, 1)
                if not result["ok"]:
                    pipeline.dead_letter(uuid, request, result["detail"], 1)
    finally:
        http.close()


def record(store: SqlEventStore, events: list[dict[str, Any]], received_at: datetime,
           org: str = "default") -> None:
    """Store events as the hook would have at ``received_at`` (one delivery)."""
    from factorflow.okta.payloads import format_utc, parse_delivery
    from factorflow.store.base import Receipt

    store.record([Receipt(delivery_id=str(uuidlib.uuid4()), hook_id=None,
                          received_at=format_utc(received_at), org=org,
                          delivery=parse_delivery(delivery(events)))])
