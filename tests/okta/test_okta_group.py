"""The ``okta_group`` action against the Okta simulator: membership changes, idempotency, errors,
the pipeline's record of the outcome, and the loop guard for the System Log events the change
writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from factorflow.actions.okta_group import OktaGroupHandler
from factorflow.bootstrap import build_app, build_pipeline
from factorflow.domain.actions import ActionRequest, OutcomeStatus, idempotency_key
from factorflow.domain.facts import Fact
from factorflow.errors import InvalidRules, PermanentActionError, TransientActionError
from factorflow.okta.api import OktaAuthError
from factorflow.okta.reconcile import Reconciler
from factorflow.okta.simulator import PRIVILEGED_GROUP, OAuthApp
from factorflow.okta.translate import to_fact
from factorflow.pipeline.process import request_to_dict
from factorflow.rules.loader import load_rules
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger
from tests.conftest import SECRET, make_settings
from tests.okta.support import ACTIVATE, MFA_TYPES, SimulatedOkta, delivery, simulated_okta

CLIENT_ID = "0oaFactorflowGroups1"
READ_ONLY = "0oaReadOnlyGroups001"
KID = "groups-key"
ADD = "group.user_membership.add"
REMOVE = "group.user_membership.remove"
MEMBERSHIP_BUCKET = "/api/v1/groups/{id}/users/{id}"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "okta-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.fixture
def okta(key: rsa.RSAPrivateKey) -> Iterator[SimulatedOkta]:
    apps = (OAuthApp(CLIENT_ID, {KID: key.public_key()}),
            OAuthApp(READ_ONLY, {KID: key.public_key()},
                     ("okta.users.read", "okta.groups.read", "okta.logs.read")))
    # On the wall clock's time: the pipeline's own client signs its assertions with it.
    with simulated_okta(users=20, seed=12, enrollments=15, oauth_apps=apps,
                        start=time.time()) as simulated:
        yield simulated


def service_app(okta: SimulatedOkta, key_file: Path, client_id: str = CLIENT_ID,
                scopes: tuple[str, ...] = ("okta.users.read", "okta.groups.read",
                                           "okta.groups.manage")) -> Any:
    return okta.client(client_id=client_id, private_key_file=key_file, key_id=KID,
                       scopes=scopes)


def a_fact(okta: SimulatedOkta) -> tuple[Fact, Any]:
    event = next(e for e in okta.org.events([ACTIVATE])
                 if okta.org.users[e["target"][0]["id"]].status == "ACTIVE")
    fact = to_fact(event, org="default")
    assert fact.user is not None and fact.user.id is not None
    return fact, okta.org.users[fact.user.id]


def request(group: str, operation: str, action_id: str = "group") -> ActionRequest:
    return ActionRequest("privileged", action_id, "okta_group",
                         {"group": group, "operation": operation},
                         idempotency_key("event", "privileged", action_id))


def membership_events(okta: SimulatedOkta) -> list[dict[str, Any]]:
    return okta.org.events([ADD, REMOVE])


def test_add_and_remove_are_idempotent(okta: SimulatedOkta, key_file: Path) -> None:
    fact, user = a_fact(okta)
    group = okta.org.group_named(PRIVILEGED_GROUP)
    if group.id in user.group_ids:
        user.group_ids.remove(group.id)
    handler = OktaGroupHandler({"default": service_app(okta, key_file)})
    added = handler.perform(request(PRIVILEGED_GROUP, "add"), fact)
    assert added.status == OutcomeStatus.DONE
    assert added.reference == f"{group.id}/{user.id}"
    assert added.detail == f"added user {user.id} to group {PRIVILEGED_GROUP}"
    assert group.id in user.group_ids
    again = handler.perform(request(PRIVILEGED_GROUP, "add"), fact)
    assert again.status == OutcomeStatus.ALREADY_DONE
    assert again.detail == f"user {user.id} is already a member of group {PRIVILEGED_GROUP}"
    assert [e["eventType"] for e in membership_events(okta)] == [ADD]  # no second change
    removed = handler.perform(request(group.id, "REMOVE"), fact)
    assert removed.status == OutcomeStatus.DONE and group.id not in user.group_ids
    gone = handler.perform(request(group.id, "remove"), fact)
    assert gone.status == OutcomeStatus.ALREADY_DONE
    assert gone.detail == f"user {user.id} is not a member of group {group.id}"
    changes = membership_events(okta)
    assert [e["eventType"] for e in changes] == [ADD, REMOVE]
    # The changes are logged with factorflow's service app as the actor.
    assert {(e["actor"]["id"], e["actor"]["type"]) for e in changes} == {
        (CLIENT_ID, "PublicClientApp")}
    assert {e["target"][0]["id"] for e in changes} == {user.id}
    # The group's name was looked up once; its id is remembered.
    assert len(okta.requests("/api/v1/groups")) == 1
    assert okta.sim.statuses(MEMBERSHIP_BUCKET) == [204, 204]


def test_a_user_known_only_by_login_is_looked_up(okta: SimulatedOkta, key_file: Path) -> None:
    fact, user = a_fact(okta)
    assert fact.user is not None
    by_login = Fact(**{**{f: getattr(fact, f) for f in fact.__dataclass_fields__},
                       "user": type(fact.user)(None, user.login, None, "User")})
    group = okta.org.group_named("Helpdesk")
    handler = OktaGroupHandler({"default": service_app(okta, key_file)})
    outcome = handler.perform(request(group.id, "add"), by_login)
    assert outcome.status in (OutcomeStatus.DONE, OutcomeStatus.ALREADY_DONE)
    assert group.id in user.group_ids


@pytest.mark.parametrize(("params", "message"), [
    ({"group": PRIVILEGED_GROUP, "operation": "toggle"},
     "params.operation must be add or remove, got 'toggle'"),
    ({"operation": "add"}, "okta_group needs params.group"),
    ({"group": "No Such Group", "operation": "add"}, "Okta has no group named 'No Such Group'"),
])
def test_bad_params_are_permanent(okta: SimulatedOkta, key_file: Path, params: dict[str, str],
                                  message: str) -> None:
    fact, user = a_fact(okta)
    before = list(user.group_ids)
    handler = OktaGroupHandler({"default": service_app(okta, key_file)})
    bad = ActionRequest("r", "a", "okta_group", params, "ff-key")
    with pytest.raises(PermanentActionError, match=message.replace("(", r"\(")):
        handler.perform(bad, fact)
    assert user.group_ids == before
    assert membership_events(okta) == []


def test_an_org_without_okta_settings(okta: SimulatedOkta, key_file: Path) -> None:
    fact, _ = a_fact(okta)
    handler = OktaGroupHandler({"other-org": service_app(okta, key_file)})
    with pytest.raises(PermanentActionError, match="org default has no \\[okta\\] settings"):
        handler.perform(request(PRIVILEGED_GROUP, "add"), fact)
    assert okta.sim.requests == []


def test_without_the_manage_scope_okta_refuses(okta: SimulatedOkta, key_file: Path) -> None:
    fact, user = a_fact(okta)
    group = okta.org.group_named("Contractors")
    before = group.id in user.group_ids
    client = service_app(okta, key_file, READ_ONLY,
                         ("okta.users.read", "okta.groups.read", "okta.logs.read"))
    handler = OktaGroupHandler({"default": client})
    with pytest.raises(OktaAuthError) as refused:
        handler.perform(request(group.id, "remove" if before else "add"), fact)
    assert isinstance(refused.value, PermanentActionError)  # dead-lettered, not retried
    assert refused.value.status == 403 and refused.value.error_code == "E0000006"
    assert (group.id in user.group_ids) == before
    assert membership_events(okta) == []


def test_okta_unavailable_is_transient_and_a_retry_completes(okta: SimulatedOkta,
                                                            key_file: Path) -> None:
    fact, user = a_fact(okta)
    group = okta.org.group_named("Contractors")
    if group.id in user.group_ids:
        user.group_ids.remove(group.id)
    okta.sim.inject_failures(MEMBERSHIP_BUCKET, [503])
    handler = OktaGroupHandler({"default": service_app(okta, key_file)})
    with pytest.raises(TransientActionError, match="503"):
        handler.perform(request(group.id, "add"), fact)
    assert group.id not in user.group_ids
    assert handler.perform(request(group.id, "add"), fact).status == OutcomeStatus.DONE
    assert group.id in user.group_ids
    assert okta.sim.statuses(MEMBERSHIP_BUCKET) == [503, 204]


def test_rules_must_give_group_and_operation(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nmatch: all\nrules:\n  - id: r\n    when: {kind: [enrollment]}\n"
                     "    actions:\n      - {id: g, kind: okta_group, params: {group: Helpdesk}}\n",
                     encoding="utf-8")
    with pytest.raises(InvalidRules) as invalid:
        load_rules(rules)
    assert invalid.value.problems == [
        f"{rules}: rule 'r': action 'g': params.operation: required for kind 'okta_group' "
        "(a non-empty string)"]


# -- through the pipeline, and the loop guard ----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlEventStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'factorflow.db'}")
    yield opened
    opened.close()


def test_the_outcome_is_recorded_and_the_change_does_not_loop(
    okta: SimulatedOkta, key_file: Path, store: SqlEventStore, tmp_path: Path,
) -> None:
    fact, user = a_fact(okta)
    group = okta.org.group_named(PRIVILEGED_GROUP)
    if group.id in user.group_ids:
        user.group_ids.remove(group.id)
    settings = make_settings(
        tmp_path, workflows={"enabled": False},
        pipeline={"event_types": [*MFA_TYPES, ADD, REMOVE]},
        okta={"org_url": okta.base_url, "client_id": CLIENT_ID, "private_key_file": key_file,
              "key_id": KID, "scopes": ["okta.users.read", "okta.groups.read",
                                        "okta.groups.manage", "okta.logs.read"]},
    )
    headers = {"Authorization": SECRET, "Content-Type": "application/json"}
    event = next(e for e in okta.org.events([ACTIVATE]) if e["uuid"] == fact.uuid)
    with TestClient(build_app(settings, store)) as app:
        assert app.post("/hooks/okta", content=delivery([event]), headers=headers) \
            .status_code == 204
        pipeline, shared = build_pipeline(settings, store)
        try:
            assert pipeline.prepare(fact.uuid)["status"] == "ready"
            first = request_to_dict(request(PRIVILEGED_GROUP, "add", "first"))
            second = request_to_dict(request(PRIVILEGED_GROUP, "add", "second"))
            done = pipeline.attempt(fact.uuid, first, 1)
            assert done["status"] == "done", done
            assert pipeline.attempt(fact.uuid, second, 1)["status"] == "already_done"
            results = dict(store.read(
                "SELECT action_id, status FROM action_results WHERE event_uuid = ?",
                (fact.uuid,)))
            assert results == {"first": "done", "second": "already_done"}
            # The hook subscribed to membership events delivers factorflow's own change ...
            changes = okta.org.events([ADD])
            assert len(changes) == 1 and changes[0]["actor"]["id"] == CLIENT_ID
            assert app.post("/hooks/okta", content=delivery(changes), headers=headers) \
                .status_code == 204
            # ... and screening drops it: the service app is factorflow's own actor.
            assert pipeline.prepare(changes[0]["uuid"]) == {
                "status": "filtered",
                "reason": "caused by factorflow's own service account (loop guard)"}
        finally:
            shared.close()
    # The System Log reconciler does not read membership events at all.
    run = Reconciler("default", okta.client(), SystemLogLedger(store, clock=okta.now),
                     event_types=settings.pipeline.event_types, clock=okta.now).run()
    assert run.error is None
    assert [row[0] for row in store.read("SELECT event_type FROM events WHERE event_type "
                                         "LIKE 'group.%'")] == [ADD]  # only the hook's copy


def test_an_api_token_admin_is_screened_when_listed(okta: SimulatedOkta, store: SqlEventStore,
                                                    tmp_path: Path) -> None:
    fact, user = a_fact(okta)
    group = okta.org.group_named("Helpdesk")
    token_client = okta.client()
    OktaGroupHandler({"default": token_client}).perform(
        request(group.id, "remove" if group.id in user.group_ids else "add"), fact)
    change = membership_events(okta)[-1]
    admin = okta.org.api_admin.id
    assert change["actor"]["id"] == admin
    assert change["transaction"]["detail"]["requestApiTokenId"] == okta.org.api_token_id
    settings = make_settings(tmp_path, workflows={"enabled": False},
                             pipeline={"event_types": [ADD, REMOVE], "own_actor_ids": [admin]})
    with TestClient(build_app(settings, store)) as app:
        assert app.post("/hooks/okta", content=delivery([change]),
                        headers={"Authorization": SECRET, "Content-Type": "application/json"}
                        ).status_code == 204
    pipeline, shared = build_pipeline(settings, store)
    try:
        assert pipeline.prepare(change["uuid"])["reason"] == (
            "caused by factorflow's own service account (loop guard)")
    finally:
        shared.close()
