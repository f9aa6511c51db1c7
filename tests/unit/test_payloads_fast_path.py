"""The hot path's delivery parse (simdjson, decision 17) against the reference (orjson).

``parse_delivery`` tries :func:`parse_common_delivery` first and falls back to
:func:`parse_any_delivery`. What is checked: the fast path is taken for Okta's own deliveries
(else it would speed nothing up); whenever it answers, it answers what the reference answers;
every body it declines (repeated keys, a byte order mark, integers beyond 64 bits, events to
quarantine, deep nesting, no envelope) gets the reference's answer, refusals included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.conftest import CORPUS
from tests.unit.test_payloads import _EVENT_LIKE, _JSON_VALUES, envelope, make_event

from factorflow.errors import RejectedDelivery
from factorflow.okta.payloads import (
    ParsedDelivery,
    parse_any_delivery,
    parse_common_delivery,
    parse_delivery,
)

EXAMPLE = Path(__file__).parents[2] / "src/factorflow/examples/delivery-mfa-activate.json"


def _corpus_events() -> list[dict[str, Any]]:
    lines = (CORPUS / "okta-events.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _corpus_deliveries() -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / "okta-deliveries").glob("*.json"))]


def _reference(body: bytes) -> ParsedDelivery | tuple[int, str, str]:
    try:
        return parse_any_delivery(body)
    except RejectedDelivery as refused:
        return refused.status, refused.code, refused.message


def _answer(body: bytes) -> ParsedDelivery | tuple[int, str, str]:
    try:
        return parse_delivery(body)
    except RejectedDelivery as refused:
        return refused.status, refused.code, refused.message


def test_the_fast_path_takes_okta_deliveries_and_answers_like_the_reference() -> None:
    bodies = [EXAMPLE.read_bytes(), *_corpus_deliveries()]
    bodies += [orjson.dumps(envelope([event])) for event in _corpus_events()]
    taken = 0
    for body in bodies:
        fast = parse_common_delivery(body)
        reference = parse_any_delivery(body)
        if reference.quarantined:
            assert fast is None
            continue
        assert fast == reference  # raw included, byte for byte
        taken += 1
    # Every corpus event in Okta's format is stored, so nearly every body takes the fast path.
    assert taken >= len(bodies) - 3, (taken, len(bodies))


def test_a_pretty_printed_delivery_takes_the_fast_path_with_compact_raw_json() -> None:
    document = orjson.loads(EXAMPLE.read_bytes())
    body = json.dumps(document, indent=2, ensure_ascii=True).encode()
    fast = parse_common_delivery(body)
    assert fast is not None
    assert fast == parse_any_delivery(body)
    assert b"\n" not in fast.events[0].raw


# Bodies the fast path must decline; the reference's answer is what counts.
_EVENT = orjson.dumps(make_event()).decode()
_PLAIN = orjson.dumps(envelope([make_event()])).decode()
_TRICKY = {
    "envelope eventType twice": _PLAIN.replace(
        '{"eventType":"com.okta.event_hook"',
        '{"eventType":"com.okta.event_hook","eventType":"something.else"', 1),
    "envelope eventType twice, the hook's last": _PLAIN.replace(
        '{"eventType":"com.okta.event_hook"',
        '{"eventType":"something.else","eventType":"com.okta.event_hook"', 1),
    "eventId twice": _PLAIN.replace('"eventId":', '"eventId":"first","eventId":', 1),
    "eventTime twice": _PLAIN.replace('"eventTime":', '"eventTime":"x","eventTime":', 1),
    "source twice": _PLAIN.replace(
        '"source":', '"source":"https://a.okta.com/api/v1/eventHooks/who1","source":', 1),
    "data twice": _PLAIN.replace('"data":', '"data":{"events":[]},"data":', 1),
    "events twice": _PLAIN.replace('{"events":', '{"events":[],"events":', 1),
    "uuid twice": _PLAIN.replace('"uuid":', '"uuid":"first-uuid","uuid":', 1),
    "event eventType twice": _PLAIN.replace(
        '"eventType":"user.mfa', '"eventType":"user.session.start","eventType":"user.mfa', 1),
    "published twice": _PLAIN.replace(
        '"published":', '"published":"2020-01-01T00:00:00.000Z","published":', 1),
    "uuid twice, spaced": _PLAIN.replace('"uuid":', '"uuid" : "first-uuid" , "uuid" :', 1),
    "a nested uuid": _PLAIN.replace('"actor":{', '"actor":{"uuid":"nested",', 1),
    "uuid as a value elsewhere": _PLAIN.replace('"actor":{', '"actor":{"name":"uuid",', 1),
    "byte order mark": "\ufeff" + _PLAIN,
    "integer beyond 64 bits": _PLAIN.replace(
        '"actor":{', '"actor":{"n":123456789012345678901234,', 1),
    "negative integer beyond 64 bits": _PLAIN.replace(
        '"actor":{', '"actor":{"n":-9223372036854775809,', 1),
    "number too large for a double": _PLAIN.replace('"actor":{', '"actor":{"n":1e999,', 1),
    "nested 300 deep": _PLAIN.replace(
        '"actor":{', '"actor":{"n":' + "[" * 300 + "]" * 300 + ",", 1),
    "nested 1100 deep": _PLAIN.replace(
        '"actor":{', '"actor":{"n":' + "[" * 1100 + "]" * 1100 + ",", 1),
    "lone surrogate": _PLAIN.replace('"actor":{', '"actor":{"n":"\\ud800",', 1),
    "trailing garbage": _PLAIN + "x",
    "trailing comma": _PLAIN[:-1] + ",}",
    "no envelope": _EVENT,
    "a string": '"com.okta.event_hook"',
    "events not an array": _PLAIN.replace('{"events":[', '{"events":{"0":', 1)[:-3] + "}}}",
    "an event to quarantine": orjson.dumps(envelope([make_event(), "not an event"])).decode(),
    "an event without uuid": orjson.dumps(envelope([{"eventType": "x"}])).decode(),
    "a blank uuid": orjson.dumps(envelope([make_event(uuid=" ")])).decode(),
    "a SIEM timestamp": orjson.dumps(
        envelope([make_event(published="2022-06-22 18:18:29")])).decode(),
    "uuid a number": orjson.dumps(envelope([make_event(uuid=12)])).decode(),
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(_TRICKY))
def test_bodies_the_fast_path_declines_get_the_reference_answer(name: str) -> None:
    body = _TRICKY[name].encode()
    fast = parse_common_delivery(body)
    reference = _reference(body)
    assert fast is None or fast == reference
    assert _answer(body) == reference


def test_invalid_utf8_is_declined_and_refused_by_the_reference() -> None:
    text = _PLAIN.replace('"actor":{', '"actor":{"n":"\udcff",', 1)
    body = text.encode("utf-8", "surrogateescape")
    assert parse_common_delivery(body) is None
    answer = _answer(body)
    assert isinstance(answer, tuple) and answer[:2] == (400, "invalid_json")


def test_a_repeated_uuid_is_read_as_the_reference_reads_it() -> None:
    body = _TRICKY["uuid twice"].encode()
    parsed = parse_delivery(body)
    assert [event.uuid for event in parsed.events] == [make_event()["uuid"]]  # the last one
    assert orjson.loads(parsed.events[0].raw)["uuid"] == make_event()["uuid"]


def _same(fast: ParsedDelivery, reference: ParsedDelivery) -> None:
    """Equal, except that raw JSON may write a number another way (``1e-05``)."""
    assert (fast.delivery_id, fast.hook_id, fast.event_time, fast.quarantined) == (
        reference.delivery_id, reference.hook_id, reference.event_time, reference.quarantined)
    assert len(fast.events) == len(reference.events)
    for ours, theirs in zip(fast.events, reference.events, strict=True):
        assert (ours.uuid, ours.event_type, ours.published, ours.published_at) == (
            theirs.uuid, theirs.event_type, theirs.published, theirs.published_at)
        assert orjson.loads(ours.raw) == orjson.loads(theirs.raw)
        assert list(orjson.loads(ours.raw)) == list(orjson.loads(theirs.raw))  # key order


@hypothesis_settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    events=st.lists(_JSON_VALUES | _EVENT_LIKE | st.builds(make_event), max_size=5),
    pretty=st.booleans(),
)
def test_any_delivery_gets_the_reference_answer(events: list[Any], pretty: bool) -> None:
    document = envelope(events)
    body = (json.dumps(document, indent=1).encode() if pretty else orjson.dumps(document))
    fast = parse_common_delivery(body)
    reference = parse_any_delivery(body)
    if fast is not None:
        _same(fast, reference)
    if not reference.quarantined and all(isinstance(e, dict) for e in events):
        answer = parse_delivery(body)
        _same(answer, reference)
