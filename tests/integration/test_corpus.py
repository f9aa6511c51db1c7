"""The published Okta corpus through the real app and store: what Okta sends is stored as sent;
what a SIEM reshaped is kept aside with a reason; nothing makes the receiver fail."""

from __future__ import annotations

import contextlib
import json
import re
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient
from tests.conftest import CORPUS, SECRET, make_settings

from factorflow.bootstrap import build_app
from factorflow.store.sql import SqlEventStore

HOOK = "/hooks/okta"
AUTH = {"Authorization": SECRET, "Content-Type": "application/json"}
OKTA_EVENTS = CORPUS / "okta-events.ndjson"
COLLISIONS = CORPUS / "okta-events.uuid-collisions.ndjson"
SIEM_EVENTS = CORPUS / "siem-reshaped" / "events.ndjson"
DELIVERIES = sorted((CORPUS / "okta-deliveries").glob("*.json"))


def ndjson(path: Path) -> list[Any]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]


def delivery(events: list[Any], delivery_id: str | None = None) -> bytes:
    return orjson.dumps({
        "eventType": "com.okta.event_hook",
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": "https://example.okta.com/api/v1/eventHooks/whoCorpusHook0000001",
        "eventId": delivery_id or str(uuidlib.uuid4()),
        "eventTime": "2026-03-15T10:22:15.120Z",
        "contentType": "application/json",
        "data": {"events": events},
    })


def result_of(response: httpx.Response) -> dict[str, int]:
    header = response.headers["factorflow-result"]
    return {key: int(value) for key, value in (part.split("=") for part in header.split())}


def store_of(client: TestClient) -> SqlEventStore:
    store: SqlEventStore = client.app.store  # type: ignore[attr-defined]
    return store


def stored_object(store: SqlEventStore, uuid: str) -> Any:
    event = store.get_event(uuid)
    assert event is not None, f"{uuid} is not stored"
    return orjson.loads(event.raw)


@pytest.fixture
def fresh_app(tmp_path: Path) -> Iterator[Callable[[str], TestClient]]:
    """Each call starts another app over its own, empty store."""
    with contextlib.ExitStack() as stack:

        def start(name: str) -> TestClient:
            settings = make_settings(tmp_path / name)
            return stack.enter_context(TestClient(build_app(settings)))

        yield start


# -- Okta's own events -------------------------------------------------------------------------


def test_the_corpus_is_what_these_tests_expect() -> None:
    events = ndjson(OKTA_EVENTS)
    uuids = [event["uuid"] for event in events]
    assert len(uuids) == len(set(uuids)), "okta-events.ndjson holds one line per uuid"
    collision_uuids = {event["uuid"] for event in ndjson(COLLISIONS)}
    assert collision_uuids <= set(uuids)
    assert len(DELIVERIES) >= 2


def test_every_okta_event_in_one_delivery_is_stored_as_sent(
    fresh_app: Callable[[str], TestClient],
) -> None:
    events = ndjson(OKTA_EVENTS)
    client = fresh_app("one-batch")
    response = client.post(HOOK, content=delivery(events, "whole-corpus"), headers=AUTH)

    assert response.status_code == 204
    assert result_of(response) == {"new": len(events), "duplicate": 0, "quarantined": 0}
    store = store_of(client)
    assert store.counts() == {"events": len(events), "deliveries": 1, "quarantined": 0}
    for event in events:
        assert stored_object(store, event["uuid"]) == event
        stored = store.get_event(event["uuid"])
        assert stored is not None
        assert stored.event_type == event["eventType"]
        assert stored.published == event["published"]
        assert stored.delivery_id == "whole-corpus"
        assert stored.hook_id == "whoCorpusHook0000001"


def test_every_okta_event_delivered_alone_is_stored_as_sent(
    fresh_app: Callable[[str], TestClient],
) -> None:
    events = ndjson(OKTA_EVENTS)
    client = fresh_app("one-by-one")
    store = store_of(client)
    for number, event in enumerate(events, start=1):
        response = client.post(HOOK, content=delivery([event]), headers=AUTH)
        assert response.status_code == 204, event["uuid"]
        assert result_of(response) == {"new": 1, "duplicate": 0, "quarantined": 0}
        assert stored_object(store, event["uuid"]) == event
        assert store.counts()["events"] == number
    assert store.counts() == {"events": len(events), "deliveries": len(events),
                              "quarantined": 0}
    # all of them again: every one is a duplicate, nothing changes
    before = sorted((e.uuid, e.raw) for e in store.recent_events(1000))
    for event in events:
        again = client.post(HOOK, content=delivery([event]), headers=AUTH)
        assert result_of(again) == {"new": 0, "duplicate": 1, "quarantined": 0}
    assert sorted((e.uuid, e.raw) for e in store.recent_events(1000)) == before


def test_the_impossible_date_of_the_corpus_is_stored(
    fresh_app: Callable[[str], TestClient],
) -> None:
    (event,) = [e for e in ndjson(OKTA_EVENTS) if e["published"].startswith("2017-09-31")]
    client = fresh_app("impossible-date")
    response = client.post(HOOK, content=delivery([event]), headers=AUTH)
    assert result_of(response) == {"new": 1, "duplicate": 0, "quarantined": 0}
    assert stored_object(store_of(client), event["uuid"]) == event


@pytest.mark.parametrize("path", DELIVERIES, ids=[p.name for p in DELIVERIES])
def test_each_published_delivery_posted_verbatim_is_stored(
    fresh_app: Callable[[str], TestClient], path: Path
) -> None:
    body = path.read_bytes()
    document = json.loads(body)
    client = fresh_app(path.stem)
    response = client.post(HOOK, content=body, headers=AUTH)

    assert response.status_code == 204
    events = document["data"]["events"]
    assert result_of(response) == {"new": len(events), "duplicate": 0, "quarantined": 0}
    store = store_of(client)
    for event in events:
        assert stored_object(store, event["uuid"]) == event
    (ledger,) = store.ledger()
    assert ledger.delivery_id == document["eventId"]
    hook_id = re.search(r"/eventHooks/([^/]+)$", document["source"])
    assert hook_id is not None
    assert ledger.hook_id == hook_id.group(1)
    assert ledger.events_new == len(events)

    again = client.post(HOOK, content=body, headers=AUTH)
    assert result_of(again) == {"new": 0, "duplicate": len(events), "quarantined": 0}


def test_the_current_docs_delivery_keeps_ip_chain_under_client(
    fresh_app: Callable[[str], TestClient],
) -> None:
    (path,) = [p for p in DELIVERIES if "85b60edb" in p.name]
    client = fresh_app("ipchain")
    assert client.post(HOOK, content=path.read_bytes(), headers=AUTH).status_code == 204
    stored = stored_object(store_of(client), "f1d0b993-cc19-11ed-a688-db22c99ef6c4")
    assert stored["client"]["ipChain"][0]["ip"] == "142.126.158.61"
    assert "request" not in stored
    assert "insertionTimestamp" in stored


def test_uuid_collisions_after_the_okta_events_are_quarantined_and_originals_kept(
    fresh_app: Callable[[str], TestClient],
) -> None:
    events = ndjson(OKTA_EVENTS)
    collisions = ndjson(COLLISIONS)
    client = fresh_app("collisions")
    assert client.post(HOOK, content=delivery(events), headers=AUTH).status_code == 204
    store = store_of(client)
    before = {e.uuid: e for e in store.recent_events(1000)}

    response = client.post(HOOK, content=delivery(collisions, "colliding"), headers=AUTH)
    assert response.status_code == 204
    assert result_of(response) == {"new": 0, "duplicate": 0, "quarantined": len(collisions)}

    assert {e.uuid: e for e in store.recent_events(1000)} == before
    for original in events:
        assert stored_object(store, original["uuid"]) == original
    entries = store.quarantine(1000)
    assert len(entries) == len(collisions)
    by_uuid = {entry.uuid: entry for entry in entries}
    for collision in collisions:
        entry = by_uuid[collision["uuid"]]
        assert entry.reason_code == "uuid_conflict"
        assert "already stored with different content" in entry.reason
        assert entry.delivery_id == "colliding"
        assert orjson.loads(entry.raw) == collision


def test_the_old_docs_delivery_after_the_system_log_variant_is_a_uuid_conflict(
    fresh_app: Callable[[str], TestClient],
) -> None:
    """The 2019 docs delivery carries a different event under a uuid that the System Log
    reference also used: whichever arrives second is quarantined."""
    (path,) = [p for p in DELIVERIES if "b5a188b9" in p.name]
    system_log = next(
        e for e in ndjson(OKTA_EVENTS) if e["uuid"] == "f790999f-fe87-467a-9880-6982a583986c"
    )
    client = fresh_app("old-docs")
    assert client.post(HOOK, content=delivery([system_log]), headers=AUTH).status_code == 204
    response = client.post(HOOK, content=path.read_bytes(), headers=AUTH)
    assert result_of(response) == {"new": 0, "duplicate": 0, "quarantined": 1}
    store = store_of(client)
    assert stored_object(store, system_log["uuid"]) == system_log
    (entry,) = store.quarantine()
    assert entry.reason_code == "uuid_conflict"
    assert entry.delivery_id == "b5a188b9-5ece-4636-b041-482ffda96311"


# -- what a SIEM made of Okta events -----------------------------------------------------------


def _post_in_batches(
    client: TestClient, events: list[Any], size: int
) -> list[dict[str, int]]:
    results = []
    for start in range(0, len(events), size):
        response = client.post(HOOK, content=delivery(events[start:start + size]), headers=AUTH)
        assert response.status_code < 500, response.text
        assert response.status_code == 204, response.text
        results.append(result_of(response))
    return results


@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_siem_reshaped_events_are_quarantined_with_a_reason_never_a_failure(
    fresh_app: Callable[[str], TestClient], batch_size: int
) -> None:
    events = ndjson(SIEM_EVENTS)
    client = fresh_app(f"siem-{batch_size}")
    results = _post_in_batches(client, events, batch_size)

    store = store_of(client)
    counts = store.counts()
    assert counts["events"] + counts["quarantined"] == len(events)
    assert sum(r["new"] for r in results) == counts["events"]
    assert sum(r["quarantined"] for r in results) == counts["quarantined"]
    entries = store.quarantine(1000)
    assert len(entries) == counts["quarantined"]
    assert all(entry.reason_code and entry.reason for entry in entries)
    # None of them carries Okta's timestamp format, so none is taken for an Okta event.
    assert counts["events"] == 0
    assert {entry.reason_code for entry in entries} == {"bad_published"}
    for entry in entries:
        assert "is not an ISO 8601 timestamp with a time zone" in entry.reason
    assert sorted(orjson.dumps(orjson.loads(e.raw), option=orjson.OPT_SORT_KEYS)
                  for e in entries) == sorted(
        orjson.dumps(event, option=orjson.OPT_SORT_KEYS) for event in events
    )


def _with_okta_timestamp(event: dict[str, Any]) -> dict[str, Any]:
    """The SIEM's "2022-06-22 18:18:29.015000000" turned back into Okta's
    "2022-06-22T18:18:29.015Z" (values such as "redacted" stay as they are)."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})\.(\d{3})\d*", event["published"])
    if match is None:
        return event
    day, time, millis = match.groups()
    return {**event, "published": f"{day}T{time}.{millis}Z"}


def test_reused_siem_uuids_with_other_content_become_uuid_conflicts(
    fresh_app: Callable[[str], TestClient],
) -> None:
    """With their timestamps put back into Okta's format, the SIEM events reuse placeholder
    uuids for different events: the first of each is stored, exact copies are duplicates, every
    different event under a taken uuid is a uuid_conflict."""
    events = [_with_okta_timestamp(event) for event in ndjson(SIEM_EVENTS)]
    client = fresh_app("siem-repaired")
    results = _post_in_batches(client, events, 5)

    first_seen: dict[str, Any] = {}
    expected = {"stored": 0, "duplicate": 0, "conflict": 0, "bad": 0}
    for event in events:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", event["published"]):
            expected["bad"] += 1
        elif event["uuid"] not in first_seen:
            first_seen[event["uuid"]] = event
            expected["stored"] += 1
        elif first_seen[event["uuid"]] == event:
            expected["duplicate"] += 1
        else:
            expected["conflict"] += 1
    assert expected["conflict"] > 0 and expected["stored"] > 0

    store = store_of(client)
    counts = store.counts()
    assert counts["events"] == expected["stored"]
    assert sum(r["new"] for r in results) == expected["stored"]
    assert sum(r["duplicate"] for r in results) == expected["duplicate"]
    assert counts["events"] + counts["quarantined"] + expected["duplicate"] == len(events)
    entries = store.quarantine(1000)
    codes = [entry.reason_code for entry in entries]
    assert codes.count("uuid_conflict") == expected["conflict"]
    assert codes.count("bad_published") == expected["bad"]
    for uuid, event in first_seen.items():
        assert stored_object(store, uuid) == event
    for entry in entries:
        if entry.reason_code == "uuid_conflict":
            assert entry.uuid in first_seen
            assert orjson.loads(entry.raw) != first_seen[entry.uuid]
