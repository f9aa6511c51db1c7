"""parse_delivery / check_event: what is a delivery, what is stored, what is quarantined and why."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.conftest import CORPUS

from factorflow.errors import RejectedDelivery
from factorflow.okta.payloads import (
    HOOK_ENVELOPE_TYPE,
    MAX_UUID_LENGTH,
    IncomingEvent,
    QuarantinedEvent,
    check_event,
    hook_id_from_source,
    normalise_timestamp,
    parse_delivery,
)
from factorflow.okta.translate import to_fact

HOOK_SOURCE = "https://example.okta.com/api/v1/eventHooks/whoExampleHook0000001"


def make_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "uuid": "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10",
        "published": "2026-03-15T10:22:14.000Z",
        "eventType": "user.mfa.factor.activate",
        "version": "0",
        "actor": {"id": "00u1", "type": "User", "alternateId": "pat.lee@example.com"},
        "outcome": {"result": "SUCCESS", "reason": None},
    }
    for key, value in overrides.items():
        if value is _DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return event


_DROP = object()


def envelope(events: Any, **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "eventType": HOOK_ENVELOPE_TYPE,
        "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1",
        "source": HOOK_SOURCE,
        "eventId": "8f3c3b0a-1e7d-4c2b-9a55-2f1f6d7e0a11",
        "eventTime": "2026-03-15T10:22:15.120Z",
        "contentType": "application/json",
        "data": {"events": events},
    }
    document.update(overrides)
    return document


def body_of(document: Any) -> bytes:
    return orjson.dumps(document)


def accepted(event: Any, index: int = 0) -> IncomingEvent:
    result = check_event(event, index)
    assert isinstance(result, IncomingEvent), result
    return result


def quarantined(event: Any, index: int = 0) -> QuarantinedEvent:
    result = check_event(event, index)
    assert isinstance(result, QuarantinedEvent), result
    return result


# -- the envelope ------------------------------------------------------------------------------


def test_a_delivery_yields_its_events_with_ids_from_the_envelope() -> None:
    first, second = make_event(), make_event(uuid="second-uuid", eventType="user.session.start")
    parsed = parse_delivery(body_of(envelope([first, second])))

    assert parsed.delivery_id == "8f3c3b0a-1e7d-4c2b-9a55-2f1f6d7e0a11"
    assert parsed.hook_id == "whoExampleHook0000001"
    assert parsed.event_time == "2026-03-15T10:22:15.120Z"
    assert [e.uuid for e in parsed.events] == [first["uuid"], "second-uuid"]
    assert [e.event_type for e in parsed.events] == [
        "user.mfa.factor.activate", "user.session.start"
    ]
    assert parsed.quarantined == ()
    assert orjson.loads(parsed.events[0].raw) == first


def test_an_empty_event_list_is_a_valid_delivery() -> None:
    parsed = parse_delivery(body_of(envelope([])))
    assert parsed.events == () and parsed.quarantined == ()
    assert parsed.delivery_id == "8f3c3b0a-1e7d-4c2b-9a55-2f1f6d7e0a11"


def test_envelope_ids_that_are_missing_blank_or_not_strings_become_none() -> None:
    parsed = parse_delivery(body_of(envelope([], eventId="", eventTime=12, source=None)))
    assert (parsed.delivery_id, parsed.event_time, parsed.hook_id) == (None, None, None)
    document = envelope([])
    for key in ("eventId", "eventTime", "source"):
        del document[key]
    parsed = parse_delivery(body_of(document))
    assert (parsed.delivery_id, parsed.event_time, parsed.hook_id) == (None, None, None)


def test_unknown_envelope_keys_and_nulls_are_tolerated() -> None:
    parsed = parse_delivery(body_of(envelope(
        [make_event()], contentType=None, cloudEventsVersion=None, somethingNew={"a": [1, None]}
    )))
    assert len(parsed.events) == 1


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (HOOK_SOURCE, "whoExampleHook0000001"),
        ("https://${yourOktaDomain}/api/v1/eventHooks/whoql0HfiLGPWc8Jx0g3",
         "whoql0HfiLGPWc8Jx0g3"),
        ("https://example.okta.com/api/v1/eventHooks/who123?x=1", "who123"),
        ("https://example.okta.com/api/v1/eventHooks/who123/", "who123"),
        ("https://example.okta.com/api/v1/somethingElse/who123", None),
        ("", None),
        (None, None),
        (42, None),
        (["https://example.okta.com/api/v1/eventHooks/who123"], None),
    ],
)
def test_hook_id_comes_from_the_source_url(source: Any, expected: str | None) -> None:
    assert hook_id_from_source(source) == expected
    assert parse_delivery(body_of(envelope([], source=source))).hook_id == expected


def test_hook_ids_stay_right_as_sources_pass_the_remembered_ones() -> None:
    """The ids found are remembered per source (one search per hook, not per delivery); far
    more distinct sources than are remembered still each give their own id, again and again."""
    sources = [f"https://example.okta.com/api/v1/eventHooks/who{n:05d}" for n in range(600)]
    for _ in range(2):
        assert [hook_id_from_source(s) for s in sources] == [f"who{n:05d}" for n in range(600)]
    assert hook_id_from_source("https://example.okta.com/api/v1/other/who1") is None
    assert hook_id_from_source("https://example.okta.com/api/v1/other/who1") is None


# -- rejected as a whole (400) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message_start"),
    [
        (b"", "invalid_json", "body is not valid JSON: "),
        (b"{not json", "invalid_json", "body is not valid JSON: "),
        (b'{"eventType": "com.okta.event_hook", "data": {"events": []}', "invalid_json",
         "body is not valid JSON: "),
        (b'{"eventType": "com.okta.event_hook", "data": {"events": ["\xff\xfe"]}}',
         "invalid_json", "body is not valid JSON: "),
        (b"\xff\xfe{}", "invalid_json", "body is not valid JSON: "),
        (b"[]", "not_envelope", "body is JSON but not an object: expected an Okta event hook"),
        (b"[{}]", "not_envelope", "body is JSON but not an object"),
        (b'"com.okta.event_hook"', "not_envelope", "body is JSON but not an object"),
        (b"null", "not_envelope", "body is JSON but not an object"),
        (b"17", "not_envelope", "body is JSON but not an object"),
    ],
)
def test_bodies_that_are_no_json_object_are_rejected(
    body: bytes, code: str, message_start: str
) -> None:
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body)
    assert caught.value.status == 400
    assert caught.value.code == code
    assert caught.value.message.startswith(message_start)
    assert str(caught.value) == caught.value.message


def test_invalid_utf8_is_reported_as_invalid_json() -> None:
    body = body_of(envelope([make_event(displayMessage="caf\u00e9")])).replace(
        "caf\u00e9".encode(), b"caf\xe9"
    )
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body)
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")
    assert "UTF-8" in caught.value.message


@pytest.mark.parametrize(
    ("event_type", "shown"),
    [
        ("user.mfa.factor.activate", "'user.mfa.factor.activate'"),
        ("com.okta.event_hook.v2", "'com.okta.event_hook.v2'"),
        (None, "None"),
        (17, "17"),
        ("x" * 500, "'" + "x" * 56 + "..."),
    ],
)
def test_a_wrong_envelope_event_type_is_rejected_with_what_was_seen(
    event_type: Any, shown: str
) -> None:
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body_of(envelope([make_event()], eventType=event_type)))
    assert (caught.value.status, caught.value.code) == (400, "not_envelope")
    assert caught.value.message == (
        f"not an Okta event hook delivery: eventType is {shown}, "
        "expected 'com.okta.event_hook'"
    )


def test_a_single_event_posted_without_envelope_is_rejected() -> None:
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body_of(make_event()))
    assert caught.value.code == "not_envelope"
    assert "eventType is 'user.mfa.factor.activate'" in caught.value.message


def test_a_missing_envelope_event_type_is_rejected() -> None:
    document = envelope([make_event()])
    del document["eventType"]
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body_of(document))
    assert caught.value.message.startswith("not an Okta event hook delivery: eventType is None")


@pytest.mark.parametrize(
    "data",
    [
        _DROP, None, [], "events", {}, {"events": None}, {"events": {}},
        {"events": "[]"}, {"events": {"0": {}}}, {"Events": []},
    ],
    ids=["missing", "null", "list", "string", "empty", "events-null", "events-object",
         "events-string", "events-map", "events-wrong-case"],
)
def test_data_events_must_be_an_array(data: Any) -> None:
    document = envelope([])
    if data is _DROP:
        del document["data"]
    else:
        document["data"] = data
    with pytest.raises(RejectedDelivery) as caught:
        parse_delivery(body_of(document))
    assert caught.value.status == 400
    assert caught.value.code == "not_envelope"
    assert caught.value.message == (
        "not an Okta event hook delivery: data.events must be an array"
    )


# -- lenient parsing of events -----------------------------------------------------------------


def test_unknown_keys_are_kept_in_raw_with_their_order() -> None:
    event = {
        "zzzFirst": 1,
        "uuid": "u-1",
        "insertionTimestamp": None,
        "eventType": "user.mfa.factor.activate",
        "published": "2024-08-13T15:58:20.353Z",
        "futureField": {"nested": [1, "two", None, {"deep": True}]},
        "aaaLast": "kept",
    }
    result = accepted(event)
    assert orjson.loads(result.raw) == event
    assert list(orjson.loads(result.raw)) == list(event)


@pytest.mark.parametrize("version", ["0", 0, "1", 1.5, None])
def test_version_may_be_a_string_a_number_or_null(version: Any) -> None:
    result = accepted(make_event(version=version))
    assert orjson.loads(result.raw)["version"] == version


def test_version_may_be_missing() -> None:
    result = accepted(make_event(version=_DROP))
    assert "version" not in orjson.loads(result.raw)


def test_nulls_anywhere_outside_the_key_fields_are_accepted() -> None:
    event = make_event(
        actor=None, client=None, device=None, outcome=None, target=None, transaction=None,
        debugContext=None, legacyEventType=None, authenticationContext=None,
        securityContext=None, request=None, severity=None, displayMessage=None,
    )
    result = accepted(event)
    assert orjson.loads(result.raw) == event
    assert user_of(event) is None and factor_of(event) is None


def test_nested_nulls_and_odd_shapes_are_accepted() -> None:
    event = make_event(
        client={"zone": "None", "ipAddress": None, "geographicalContext": None},
        securityContext={"asNumber": None, "isProxy": "False"},
        debugContext={"debugData": {"behaviors": ["a", "b"], "threatSuspected": "false"}},
        target=[None, "not-a-target", {"type": "User", "alternateId": None, "id": "00u9"}],
    )
    result = accepted(event)
    assert orjson.loads(result.raw) == event
    assert user_of(event) == "00u9"


@pytest.mark.parametrize("where", ["client", "request"])
def test_ip_chain_under_client_or_request(where: str) -> None:
    chain = [{"ip": "198.51.100.23", "version": "V4", "source": None,
              "geographicalContext": {"city": "Toronto"}}]
    event = make_event(client={"ipAddress": "198.51.100.23"})
    if where == "client":
        event["client"]["ipChain"] = chain
    else:
        event["request"] = {"ipChain": chain}
    result = accepted(event)
    assert orjson.loads(result.raw)[where]["ipChain"] == chain


def test_targets_in_any_order_are_kept_as_sent_and_read_alike() -> None:
    user = {"id": "00u1", "type": "User", "alternateId": "pat.lee@example.com",
            "displayName": "Pat Lee", "detailEntry": None}
    enrollment = {"id": "pfd1", "type": "AuthenticatorEnrollment", "alternateId": "unknown",
                  "displayName": "Okta Verify", "detailEntry": {"methodTypeUsed": "PUSH"}}
    one = make_event(target=[user, enrollment], actor=None)
    other = make_event(target=[enrollment, user], actor=None)

    first, second = accepted(one), accepted(other)
    assert orjson.loads(first.raw)["target"] == [user, enrollment]
    assert orjson.loads(second.raw)["target"] == [enrollment, user]
    # A different array order is a different event as far as content goes...
    assert first.content_hash != second.content_hash
    # ...but who and which factor read the same either way.
    for event in (one, other):
        assert user_of(event) == "pat.lee@example.com"
        assert factor_of(event) == "Okta Verify (PUSH)"


def user_of(event: dict[str, Any]) -> str | None:
    return to_fact(event).user_label


def factor_of(event: dict[str, Any]) -> str | None:
    return to_fact(event).factor.label


def test_raw_is_compact_json_of_the_event() -> None:
    event = make_event(displayMessage="caf\u00e9 \u2713")
    result = accepted(event)
    assert result.raw == orjson.dumps(event)
    assert "caf\u00e9 \u2713".encode() in result.raw


# -- the fields the store keys on --------------------------------------------------------------


def test_an_accepted_event_carries_its_key_fields() -> None:
    result = accepted(make_event(published="2024-08-13T15:58:20.353Z"))
    assert result.uuid == "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"
    assert result.event_type == "user.mfa.factor.activate"
    assert result.published == "2024-08-13T15:58:20.353Z"
    assert result.published_at == "2024-08-13T15:58:20.353000Z"
    assert len(result.content_hash) == 64
    int(result.content_hash, 16)


@pytest.mark.parametrize(
    ("published", "normalised"),
    [
        ("2024-08-13T15:58:20.353Z", "2024-08-13T15:58:20.353000Z"),
        ("2024-08-13T15:58:20Z", "2024-08-13T15:58:20.000000Z"),
        ("2024-08-13T15:58:20.1Z", "2024-08-13T15:58:20.100000Z"),
        ("2024-04-02T19:17:37.621000000Z", "2024-04-02T19:17:37.621000Z"),
        ("2024-08-13T17:58:20.353+02:00", "2024-08-13T15:58:20.353000Z"),
        ("2024-08-13T17:58:20.353+0200", "2024-08-13T15:58:20.353000Z"),
        ("2024-08-13T10:28:20.353-05:30", "2024-08-13T15:58:20.353000Z"),
        ("2024-01-01T00:30:00.000+01:00", "2023-12-31T23:30:00.000000Z"),
    ],
)
def test_okta_timestamps_are_normalised_to_utc(published: str, normalised: str) -> None:
    result = accepted(make_event(published=published))
    assert result.published == published  # kept as sent
    assert result.published_at == normalised


@pytest.mark.parametrize(
    "published",
    ["2017-09-31T22:23:07.777Z", "2023-02-29T10:00:00Z", "2024-13-01T00:00:00Z",
     "2024-01-01T25:00:00Z"],
)
def test_an_impossible_calendar_date_is_kept_without_a_sortable_time(published: str) -> None:
    result = accepted(make_event(published=published))
    assert result.published == published
    assert result.published_at is None


def test_the_published_impossible_date_of_the_corpus_is_kept() -> None:
    lines = (CORPUS / "okta-events.ndjson").read_text(encoding="utf-8").splitlines()
    event = next(
        json.loads(line) for line in lines
        if json.loads(line)["uuid"] == "f790999f-fe87-467a-9880-6982a583986c"
    )
    result = accepted(event)
    assert result.published == "2017-09-31T22:23:07.777Z"
    assert result.published_at is None


def test_normalise_timestamp_names_no_instant_without_a_zone() -> None:
    assert normalise_timestamp("2024-08-13T15:58:20.353") is None
    assert normalise_timestamp("not a time") is None
    assert normalise_timestamp("2024-08-13T15:58:20.353Z") == "2024-08-13T15:58:20.353000Z"


def test_content_hash_ignores_key_order_at_every_level() -> None:
    event = make_event(
        client={"zone": "null", "geographicalContext": {"city": "Toronto", "country": "CA"}},
        target=[{"id": "00u1", "type": "User"}],
    )
    reordered = {key: event[key] for key in reversed(list(event))}
    reordered["client"] = {
        "geographicalContext": {"country": "CA", "city": "Toronto"}, "zone": "null"
    }
    reordered["target"] = [{"type": "User", "id": "00u1"}]
    assert reordered == event

    first, second = accepted(event), accepted(reordered)
    assert first.raw != second.raw  # each raw keeps its own key order
    assert first.content_hash == second.content_hash


def test_content_hash_differs_when_any_value_differs() -> None:
    event = make_event(client={"zone": "null"})
    changed = copy.deepcopy(event)
    changed["client"]["zone"] = "OFF_NETWORK"
    assert accepted(event).content_hash != accepted(changed).content_hash
    retyped = make_event(version=0)
    assert accepted(make_event(version="0")).content_hash != accepted(retyped).content_hash


# -- per-event quarantine ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "NoneType"), ("a string", "str"), (17, "int"), (1.5, "float"), (True, "bool"),
     ([{"uuid": "x"}], "list")],
)
def test_an_event_that_is_not_an_object_is_quarantined(value: Any, kind: str) -> None:
    result = quarantined(value, 3)
    assert result.uuid is None
    assert result.reason_code == "not_object"
    assert result.reason == f"events[3] is {kind}, not an object"
    assert orjson.loads(result.raw) == value


@pytest.mark.parametrize(
    ("overrides", "code", "reason", "uuid"),
    [
        ({"uuid": _DROP}, "missing_uuid", "events[2]: event has no uuid", None),
        ({"uuid": None}, "missing_uuid", "events[2]: event has no uuid", None),
        ({"uuid": ""}, "bad_uuid", "events[2]: uuid must be a non-empty string, got ''", None),
        ({"uuid": "   "}, "bad_uuid",
         "events[2]: uuid must be a non-empty string, got '   '", "   "),
        ({"uuid": 12343}, "bad_uuid",
         "events[2]: uuid must be a non-empty string, got 12343", None),
        ({"uuid": ["a"]}, "bad_uuid",
         "events[2]: uuid must be a non-empty string, got ['a']", None),
        ({"uuid": "u" * (MAX_UUID_LENGTH + 1)}, "bad_uuid",
         f"events[2]: uuid is longer than {MAX_UUID_LENGTH} characters",
         "u" * (MAX_UUID_LENGTH + 1)),
        ({"eventType": _DROP}, "missing_eventType", "events[2]: event has no eventType",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"eventType": None}, "missing_eventType", "events[2]: event has no eventType",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"eventType": "\t"}, "bad_eventType",
         "events[2]: eventType must be a non-empty string, got '\\t'",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"eventType": {"name": "x"}}, "bad_eventType",
         "events[2]: eventType must be a non-empty string, got {'name': 'x'}",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"published": _DROP}, "missing_published", "events[2]: event has no published",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"published": None}, "missing_published", "events[2]: event has no published",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"published": ""}, "bad_published",
         "events[2]: published must be a non-empty string, got ''",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
        ({"published": 1718900000}, "bad_published",
         "events[2]: published must be a non-empty string, got 1718900000",
         "5d3c9a6e-0b8f-11f1-9f3a-0b6c2e4d7a10"),
    ],
)
def test_an_event_without_its_key_fields_is_quarantined_with_the_reason(
    overrides: dict[str, Any], code: str, reason: str, uuid: str | None
) -> None:
    event = make_event(**overrides)
    result = quarantined(event, 2)
    assert result.reason_code == code
    assert result.reason == reason
    assert result.uuid == uuid
    assert orjson.loads(result.raw) == event


def test_the_first_missing_field_is_the_one_reported() -> None:
    result = quarantined({"something": "else"})
    assert (result.reason_code, result.reason) == ("missing_uuid", "events[0]: event has no uuid")
    result = quarantined({"uuid": "u-1"})
    assert result.reason_code == "missing_eventType"
    assert result.uuid == "u-1"


@pytest.mark.parametrize(
    "published",
    [
        "2022-06-22 18:18:29.015",
        "2024-04-02 19:17:37.621000000",
        "redacted",
        "2024-08-13T15:58:20.353",  # no zone
        "2024-08-13",
        "2024-08-13T15:58Z",
        "13/08/2024 15:58:20",
        "2024-08-13T15:58:20.1234567890Z",  # more than nine fraction digits
        " 2024-08-13T15:58:20.353Z",
        "2024-08-13T15:58:20.353Z\n",
    ],
)
def test_published_that_is_not_okta_iso_8601_is_quarantined(published: str) -> None:
    event = make_event(published=published)
    result = quarantined(event, 1)
    assert result.reason_code == "bad_published"
    assert result.reason == (
        f"events[1]: published {published!r} is not an ISO 8601 timestamp with a time zone, "
        "as Okta sends it"
    )
    assert result.uuid == event["uuid"]
    assert orjson.loads(result.raw) == event


def test_a_long_bad_value_is_shortened_in_the_reason() -> None:
    result = quarantined(make_event(published="x" * 1000))
    assert result.reason_code == "bad_published"
    assert "x" * 57 not in result.reason
    assert "..." in result.reason
    assert len(result.reason) < 200


def test_a_delivery_with_mixed_events_splits_them_and_keeps_indexes() -> None:
    good = make_event()
    siem = make_event(uuid="AbC-123-XyZ", published="2022-06-22 18:18:29.015")
    events = [good, "junk", siem, make_event(uuid=None), make_event(uuid="second")]
    parsed = parse_delivery(body_of(envelope(events)))

    assert [e.uuid for e in parsed.events] == [good["uuid"], "second"]
    assert [(q.reason_code, q.uuid) for q in parsed.quarantined] == [
        ("not_object", None), ("bad_published", "AbC-123-XyZ"), ("missing_uuid", None)
    ]
    assert parsed.quarantined[0].reason.startswith("events[1] ")
    assert parsed.quarantined[1].reason.startswith("events[2]: ")
    assert parsed.quarantined[2].reason.startswith("events[3]: ")


def test_every_corpus_event_in_okta_format_is_accepted() -> None:
    lines = (CORPUS / "okta-events.ndjson").read_text(encoding="utf-8").splitlines()
    assert lines
    for index, line in enumerate(lines):
        event = json.loads(line)
        result = accepted(event, index)
        assert result.uuid == event["uuid"]
        assert orjson.loads(result.raw) == event


def test_every_siem_reshaped_event_is_quarantined_with_a_reason() -> None:
    lines = (CORPUS / "siem-reshaped" / "events.ndjson").read_text(encoding="utf-8").splitlines()
    assert lines
    for index, line in enumerate(lines):
        result = quarantined(json.loads(line), index)
        assert result.reason_code == "bad_published"
        assert result.reason


# -- property: nothing JSON can crash the parser ----------------------------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
)
_OKTA_LIKE_VALUES = st.sampled_from(
    ["2024-08-13T15:58:20.353Z", "2017-09-31T22:23:07.777Z", "2022-06-22 18:18:29.015",
     "user.mfa.factor.activate", "", " ", "redacted", "u-1"]
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS | _OKTA_LIKE_VALUES,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_EVENT_LIKE = st.dictionaries(
    st.sampled_from(["uuid", "eventType", "published", "version", "target", "client"]),
    _JSON_VALUES,
    max_size=6,
)


@hypothesis_settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(value=_JSON_VALUES | _EVENT_LIKE, index=st.integers(min_value=0, max_value=10_000))
def test_any_json_value_becomes_an_event_or_a_quarantine_entry(value: Any, index: int) -> None:
    result = check_event(value, index)
    assert isinstance(result, IncomingEvent | QuarantinedEvent)
    if isinstance(result, IncomingEvent):
        assert isinstance(value, dict)
        assert result.uuid == value["uuid"] and result.uuid.strip()
        assert result.event_type == value["eventType"]
        assert result.published == value["published"]
        assert orjson.loads(result.raw) == value
    else:
        assert result.reason_code
        assert result.reason
        assert orjson.loads(result.raw) == value


@hypothesis_settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(events=st.lists(_JSON_VALUES | _EVENT_LIKE, max_size=6))
def test_any_list_of_json_values_is_split_without_loss(events: list[Any]) -> None:
    parsed = parse_delivery(body_of(envelope(events)))
    assert len(parsed.events) + len(parsed.quarantined) == len(events)


def _nested_text(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [255, 300, 900])
def test_an_event_nested_deeper_than_orjson_writes_is_quarantined_with_its_json(
    levels: int,
) -> None:
    event_text = '{"uuid":"deep-1","eventType":"x","published":"2026-03-15T10:22:14.000Z",' \
        f'"debugContext":{_nested_text(levels)}}}'
    good = make_event(uuid="shallow-1")
    body = ('{"eventType":"com.okta.event_hook","data":{"events":['
            f"{orjson.dumps(good).decode()},{event_text},{_nested_text(levels)}]}}}}").encode()
    parsed = parse_delivery(body)
    assert [event.uuid for event in parsed.events] == ["shallow-1"]
    assert [(q.uuid, q.reason_code, q.reason) for q in parsed.quarantined] == [
        ("deep-1", "too_deep", "events[1] nests arrays or objects deeper than 254 levels"),
        (None, "too_deep", "events[2] nests arrays or objects deeper than 254 levels"),
    ]
    assert json.loads(parsed.quarantined[0].raw) == json.loads(event_text)
    assert json.loads(parsed.quarantined[1].raw) == json.loads(_nested_text(levels))


def test_an_event_too_deep_even_for_the_standard_library_is_quarantined_and_says_so() -> None:
    body = ('{"eventType":"com.okta.event_hook","data":{"events":['
            f'{{"uuid":"deepest","n":{_nested_text(1015)}}}]}}}}').encode()
    (entry,) = parse_delivery(body).quarantined
    assert (entry.uuid, entry.reason_code) == ("deepest", "too_deep")
    assert orjson.loads(entry.raw) == "(not kept: nested deeper than this service can write)"


def test_a_body_nested_deeper_than_orjson_reads_is_refused_as_invalid_json() -> None:
    body = ('{"eventType":"com.okta.event_hook","data":{"events":['
            f"{_nested_text(1100)}]}}}}").encode()
    with pytest.raises(RejectedDelivery) as refused:
        parse_delivery(body)
    assert (refused.value.status, refused.value.code) == (400, "invalid_json")
