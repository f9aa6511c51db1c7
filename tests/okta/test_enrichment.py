"""Enrichment from the Okta API (OktaEnrichment) against the Okta simulator on a real port.

What Okta was asked is read from the simulator's own record of the requests it answered; waits
run on the simulator's manual clock (the client's sleep advances it), and the cache's TTL on an
injected clock, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from factorflow.bootstrap import build_app, build_enricher, build_pipeline
from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person
from factorflow.enrichment.directory import DirectoryEnrichment
from factorflow.enrichment.okta import OktaEnrichment
from factorflow.errors import ConfigError, TransientActionError
from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.simulator import PRIVILEGED_GROUP
from factorflow.store.factory import open_store
from tests.acceptance.serverproc import free_port
from tests.conftest import SECRET, make_settings
from tests.okta.support import ACTIVATE, SimulatedOkta, delivery, simulated_okta

USER = "/api/v1/users/{id}"
GROUPS = "/api/v1/users/{id}/groups"
FACTORS = "/api/v1/users/{id}/factors"
ENROLLMENTS = "/api/v1/users/{id}/authenticator-enrollments"
LOOKUP_BUCKETS = (USER, GROUPS, FACTORS, ENROLLMENTS)


class Ticks:
    """A clock for the cache's TTL that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def person(user: Any) -> Person:
    return Person(id=user.id, login=user.login, display_name=user.display_name, type="User")


def counts(okta: SimulatedOkta) -> dict[str, int]:
    return {bucket: len(okta.requests(bucket)) for bucket in LOOKUP_BUCKETS}


@pytest.fixture
def okta() -> Any:
    with simulated_okta(users=30, seed=5, enrollments=20, latency_seconds=0.02) as simulated:
        yield simulated


def test_a_lookup_reads_profile_groups_factors_and_enrollments(okta: SimulatedOkta) -> None:
    user = okta.active_users()[3]
    found = OktaEnrichment(okta.client()).lookup(person(user))
    assert found.source == "okta" and found.found
    assert found.profile["login"] == user.login
    assert found.profile["department"] == user.profile["department"]
    assert {g["name"] for g in found.groups} == {okta.org.groups[g].name for g in user.group_ids}
    assert {g["id"] for g in found.groups} == set(user.group_ids)
    factors = [f for f in found.factors if f["kind"] == "factor"]
    enrollments = [f for f in found.factors if f["kind"] == "authenticator"]
    assert {f["id"] for f in factors} == {f["id"] for f in user.factors}
    assert {f["factorType"] for f in factors} == {f["factorType"] for f in user.factors}
    assert {e["id"] for e in enrollments} == {e["id"] for e in user.enrollments}
    assert "password" in {e["type"] for e in enrollments}
    assert found.fetched_at is not None and found.fetched_at.endswith("Z")
    assert counts(okta) == dict.fromkeys(LOOKUP_BUCKETS, 1)


def test_a_burst_from_many_threads_costs_one_lookup_per_user(okta: SimulatedOkta) -> None:
    users = okta.active_users()[:5]
    enricher = OktaEnrichment(okta.client(max_concurrency=20), ttl_seconds=300)
    threads_per_user = 8
    start = threading.Barrier(len(users) * threads_per_user)
    results: list[tuple[str, Enrichment]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def look(user: Any) -> None:
        start.wait()
        try:
            found = enricher.lookup(person(user))
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append((user.id, found))

    threads = [threading.Thread(target=look, args=(user,)) for user in users
               for _ in range(threads_per_user)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(results) == len(users) * threads_per_user
    # One request per endpoint per user, however many threads asked at once.
    assert counts(okta) == dict.fromkeys(LOOKUP_BUCKETS, len(users))
    assert enricher.lookups == len(users)
    for user_id, found in results:
        assert found.found and set(g["id"] for g in found.groups) == set(
            okta.org.users[user_id].group_ids)
    # Later events of the same users within the TTL: no request at all.
    for user in users:
        enricher.lookup(person(user))
    assert counts(okta) == dict.fromkeys(LOOKUP_BUCKETS, len(users))


def test_the_snapshot_is_reused_for_the_ttl_then_fetched_again(okta: SimulatedOkta) -> None:
    ticks = Ticks()
    user = okta.active_users()[4]
    enricher = OktaEnrichment(okta.client(), ttl_seconds=60, clock=ticks)
    first = enricher.lookup(person(user))
    privileged = okta.org.group_named(PRIVILEGED_GROUP)
    okta.org.users[user.id].group_ids.append(privileged.id)
    ticks.now += 59
    assert enricher.lookup(person(user)) == first
    assert counts(okta)[USER] == 1
    ticks.now += 2
    again = enricher.lookup(person(user))
    assert counts(okta) == dict.fromkeys(LOOKUP_BUCKETS, 2)
    assert PRIVILEGED_GROUP in again.group_names()
    assert PRIVILEGED_GROUP not in first.group_names()
    # By login (an event without a user id) is its own cache entry.
    by_login = enricher.lookup(Person(id=None, login=user.login.upper(), display_name=None,
                                      type=None))
    assert by_login.found and by_login.profile["login"] == user.login
    assert counts(okta)[USER] == 3


def test_unknown_users_and_events_without_a_user(okta: SimulatedOkta) -> None:
    ticks = Ticks()
    enricher = OktaEnrichment(okta.client(), clock=ticks)
    nobody = Person(id="00uNoSuchUser000001", login=None, display_name=None, type="User")
    found = enricher.lookup(nobody)
    assert (found.source, found.found, dict(found.profile), found.groups) == (
        "okta", False, {}, ())
    assert enricher.lookup(nobody) == found
    assert counts(okta)[USER] == 1  # the answer "unknown" is cached too
    assert counts(okta)[GROUPS] == 0
    assert enricher.lookup(None) == Enrichment(source="okta", found=False)
    assert enricher.lookup(Person(None, None, None, None)).found is False
    assert counts(okta)[USER] == 1


def test_a_rate_limit_is_waited_out_within_the_budget(okta: SimulatedOkta) -> None:
    users = okta.active_users()[:2]
    okta.sim.set_rate_limit(USER, 1)
    # Another worker process took the bucket's last request: this client does not know yet.
    assert okta.client().get_user(users[0].id) is not None
    enricher = OktaEnrichment(okta.client(max_wait_seconds=120))
    found = enricher.lookup(person(users[1]))  # 429 first, then after the reset: found
    assert found.found and found.profile["login"] == users[1].login
    assert okta.sim.statuses(USER) == [200, 429, 200]
    assert len(okta.clock.sleeps) == 1 and okta.clock.sleeps[0] > 1  # on the manual clock
    # Its own view of the bucket is now empty: the next lookup waits before asking.
    assert enricher.lookup(person(users[0])).found
    assert okta.sim.statuses(USER) == [200, 429, 200, 200]
    assert len(okta.clock.sleeps) == 2


def test_a_rate_limit_past_the_budget_is_transient_and_never_decided_on(
    okta: SimulatedOkta,
) -> None:
    users = okta.active_users()[:2]
    okta.sim.set_rate_limit(USER, 1)
    assert okta.client().get_user(users[0].id) is not None  # another process emptied it
    enricher = OktaEnrichment(okta.client(max_wait_seconds=5))
    with pytest.raises(TransientActionError, match="rate limit") as limited:
        enricher.lookup(person(users[1]))
    assert limited.value.retry_after is not None and limited.value.retry_after > 5
    assert okta.sim.statuses(USER) == [200, 429]
    assert okta.clock.sleeps == []  # the wait would have been too long: none at all
    # The failure is not cached: once Okta answers again, the same user is looked up.
    okta.sim.set_rate_limit(USER, 100)
    okta.clock.advance(61)
    assert enricher.lookup(person(users[1])).found
    assert okta.sim.statuses(USER) == [200, 429, 200]


def test_fallbacks_when_okta_cannot_answer(okta: SimulatedOkta, tmp_path: Path) -> None:
    user = okta.active_users()[2]
    directory_file = tmp_path / "people.yaml"
    directory_file.write_text(
        f"users:\n  - id: {user.id}\n    profile: {{costCenter: CC-7}}\n"
        "    groups: [From The Directory]\n", encoding="utf-8")
    directory = DirectoryEnrichment.from_file(directory_file)
    okta.sim.inject_failures(USER, [503, 503, 503])
    waiting = OktaEnrichment(okta.client(), fallback="wait", directory=directory)
    with pytest.raises(TransientActionError, match="503"):
        waiting.lookup(person(user))
    fallback = OktaEnrichment(okta.client(), fallback="directory", directory=directory)
    found = fallback.lookup(person(user))
    assert (found.source, found.found) == ("directory-fallback", True)
    assert found.profile == {"costCenter": "CC-7"}
    assert found.group_names() == {"From The Directory"}
    blind = OktaEnrichment(okta.client(), fallback="none")
    assert blind.lookup(person(user)) == Enrichment(source="okta-unavailable", found=False)
    assert okta.sim.statuses(USER) == [503, 503, 503]
    with pytest.raises(ConfigError, match="needs a directory file"):
        OktaEnrichment(okta.client(), fallback="directory")


def test_unreachable_okta_is_transient(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    client = OktaClient(OktaApiSettings(org_url=f"http://127.0.0.1:{port}", api_token="t",
                                        connect_timeout_seconds=2))
    try:
        enricher = OktaEnrichment(client)
        with pytest.raises(TransientActionError, match="failed: ConnectError"):
            enricher.lookup(Person("00u1", None, None, None))
        assert enricher.lookups == 1
        with pytest.raises(TransientActionError):
            enricher.lookup(Person("00u1", None, None, None))
        assert enricher.lookups == 2  # a failure is not kept: the next event asks again
    finally:
        client.close()


def test_refused_credentials_make_the_workflow_wait(okta: SimulatedOkta) -> None:
    enricher = OktaEnrichment(okta.client(api_token="not-the-token"))
    with pytest.raises(TransientActionError, match=r"refused.*401") as refused:
        enricher.lookup(person(okta.active_users()[0]))
    assert "E0000011" in str(refused.value)
    assert okta.sim.statuses(USER) == [401]


def test_okta_first_and_the_directory_fills_in(okta: SimulatedOkta, tmp_path: Path) -> None:
    user = okta.active_users()[5]
    only_in_directory = "00uOnlyInTheDirectory"
    directory_file = tmp_path / "people.csv"
    directory_file.write_text(
        "id,login,department,costCenter,groups\n"
        f"{user.id},,Directory Department,CC-42,Everyone;Badge Holders\n"
        f"{only_in_directory},ghost@example.com,Nowhere,CC-1,\n", encoding="utf-8")
    enricher = build_enricher(directory_file, okta.client())
    assert isinstance(enricher, OktaEnrichment)
    found = enricher.lookup(person(user))
    assert found.source == "okta+directory"
    assert found.profile["department"] == user.profile["department"]  # Okta wins
    assert found.profile["costCenter"] == "CC-42"  # only the directory has it
    names = [g.get("name") for g in found.groups]
    assert names.count("Everyone") == 1  # in both: once
    assert "Badge Holders" in names
    assert {okta.org.groups[g].name for g in user.group_ids} <= set(names)
    ghost = enricher.lookup(Person(only_in_directory, "ghost@example.com", None, None))
    assert (ghost.source, ghost.found, ghost.profile["costCenter"]) == ("directory", True, "CC-1")


def test_enrichment_can_be_turned_off_for_an_org(okta: SimulatedOkta, tmp_path: Path) -> None:
    off = OktaClient(okta.settings(enrich=False))
    try:
        assert type(build_enricher(None, off)).__name__ == "NoEnrichment"
    finally:
        off.close()
    assert okta.sim.requests == []


def test_the_snapshot_is_stored_with_the_decision(okta: SimulatedOkta, tmp_path: Path) -> None:
    """The pipeline's own steps (no workflow engine): the decision records what Okta said,
    and the rules decided on it (a group only Okta knows)."""
    event = next(e for e in okta.org.events([ACTIVATE])
                 if okta.org.users[e["target"][0]["id"]].status == "ACTIVE")
    user = okta.org.users[event["target"][0]["id"]]
    privileged = okta.org.group_named(PRIVILEGED_GROUP)
    if privileged.id not in user.group_ids:
        user.group_ids.append(privileged.id)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nmatch: all\nrules:\n  - id: privileged\n    when:\n"
        f"      groups: {{any: [{PRIVILEGED_GROUP}]}}\n    actions:\n"
        "      - {id: audit, kind: audit}\n", encoding="utf-8")
    settings = make_settings(tmp_path, pipeline={"rules_file": rules},
                             okta={"org_url": okta.base_url, "api_token": okta.sim.config
                                   .api_tokens[0]},
                             workflows={"enabled": False})
    store = open_store(settings.store_url())
    try:
        with TestClient(build_app(settings, store)) as client:
            answer = client.post("/hooks/okta", content=delivery([event]),
                                 headers={"Authorization": SECRET,
                                          "Content-Type": "application/json"})
            assert answer.status_code == 204
        pipeline, shared = build_pipeline(settings, store)
        try:
            assert pipeline.prepare(event["uuid"])["status"] == "ready"
            snapshot = pipeline.enrich(event["uuid"])
            requests = pipeline.decide(event["uuid"], "run-1", snapshot)
        finally:
            shared.close()
        assert [r["kind"] for r in requests] == ["audit"]
        rows = store.read("SELECT enrichment, decision FROM decisions WHERE event_uuid = ?",
                          (event["uuid"],))
        assert len(rows) == 1
        enrichment, decision = (orjson.loads(text) for text in rows[0])
        assert enrichment["source"] == "okta" and enrichment["found"] is True
        assert enrichment["profile"]["login"] == user.login
        assert {g["id"] for g in enrichment["groups"]} == set(user.group_ids)
        assert {f["id"] for f in enrichment["factors"] if f["kind"] == "factor"} == {
            f["id"] for f in user.factors}
        assert decision["matched_rules"] == ["privileged"]
        assert len(okta.requests(USER)) == 1
    finally:
        store.close()
