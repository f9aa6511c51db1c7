"""Parsing of Okta Event Hook deliveries.

Lenient on purpose: Okta says ``debugData`` is not a contract, target order is not stable and
Classic and Identity Engine orgs describe the same enrollment differently. We therefore keep each
event's JSON exactly as received (unknown keys included) and check only what the store needs to
key and order it: ``uuid``, ``eventType`` and ``published``. An event that lacks one of them is
quarantined with a reason; its valid neighbours are stored, because Okta never redelivers a
delivery that was answered with a 4xx.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from factorflow.errors import RejectedDelivery

HOOK_ENVELOPE_TYPE = "com.okta.event_hook"
MAX_UUID_LENGTH = 200
MAX_NESTING = 254  # what orjson writes; an event nested deeper is quarantined
# Okta publishes an event before it delivers it, so an event received at least this long
# before its ``published`` time says the receiving host's clock is behind Okta's.
EARLY_SECONDS = 1.0

# Okta's wire format for timestamps: ISO 8601 with a "T" and an explicit zone. SIEM exports
# reshape it ("2022-06-22 18:18:29.015", "redacted"); those are not Okta deliveries.
_OKTA_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})$"
)
_HOOK_ID = re.compile(r"/eventHooks/([^/?#\s]+)")


@dataclass(slots=True)  # not frozen: built per event on the hot path, and frozen costs 3x
class IncomingEvent:
    """One System Log event as it arrived, with the few fields the store keys on."""

    uuid: str
    event_type: str
    published: str
    published_at: str | None  # normalised UTC, or None when Okta's value is no real date
    raw: bytes  # the event's JSON, key order and unknown keys kept

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON, to tell a redelivery from a reused uuid. Computed
        when asked: only a uuid that is already stored needs it, never the hot path."""
        return content_hash(self.raw)


@dataclass(frozen=True, slots=True)
class QuarantinedEvent:
    """An event that cannot be stored as an event, kept raw with the reason."""

    uuid: str | None
    reason_code: str
    reason: str
    raw: bytes


@dataclass(slots=True)  # not frozen: see IncomingEvent
class ParsedDelivery:
    delivery_id: str | None
    hook_id: str | None
    event_time: str | None
    events: tuple[IncomingEvent, ...]
    quarantined: tuple[QuarantinedEvent, ...]


def parse_delivery(body: bytes) -> ParsedDelivery:
    """Parse a hook POST body; raise :class:`RejectedDelivery` (400) if it is not a delivery."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RejectedDelivery(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RejectedDelivery(
            400, "not_envelope", "body is JSON but not an object: expected an Okta event hook"
        )
    envelope_type = document.get("eventType")
    if envelope_type != HOOK_ENVELOPE_TYPE:
        raise RejectedDelivery(
            400,
            "not_envelope",
            f"not an Okta event hook delivery: eventType is {_short(envelope_type)}, "
            f"expected '{HOOK_ENVELOPE_TYPE}'",
        )
    data = document.get("data")
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise RejectedDelivery(
            400, "not_envelope", "not an Okta event hook delivery: data.events must be an array"
        )
    stored, quarantined = check_events(events)
    return ParsedDelivery(
        delivery_id=_optional_str(document.get("eventId")),
        hook_id=hook_id_from_source(document.get("source")),
        event_time=_optional_str(document.get("eventTime")),
        events=tuple(stored),
        quarantined=tuple(quarantined),
    )


def check_events(
    events: Sequence[Any],
) -> tuple[list[IncomingEvent], list[QuarantinedEvent]]:
    """:func:`check_event` for each element: the events to store and those to quarantine."""
    stored: list[IncomingEvent] = []
    quarantined: list[QuarantinedEvent] = []
    for index, event in enumerate(events):
        checked = check_event(event, index)
        if isinstance(checked, IncomingEvent):
            stored.append(checked)
        else:
            quarantined.append(checked)
    return stored, quarantined


def check_event(event: Any, index: int = 0) -> IncomingEvent | QuarantinedEvent:
    """Turn one element of ``data.events`` (or one System Log record) into an event or a
    quarantine entry with the reason."""
    uuid = event.get("uuid") if isinstance(event, dict) else None
    uuid_key = uuid if isinstance(uuid, str) and uuid else None
    try:
        raw = orjson.dumps(event)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        return QuarantinedEvent(
            uuid_key, "too_deep",
            f"events[{index}] nests arrays or objects deeper than {MAX_NESTING} levels",
            _deep_raw(event),
        )
    if not isinstance(event, dict):
        return QuarantinedEvent(
            None, "not_object", f"events[{index}] is {type(event).__name__}, not an object", raw,
        )
    problem = _missing_field(event)
    if problem is not None:
        code, reason = problem
        return QuarantinedEvent(uuid_key, code, f"events[{index}]: {reason}", raw)
    published: str = event["published"]
    if not _OKTA_TIMESTAMP.fullmatch(published):
        return QuarantinedEvent(
            uuid_key,
            "bad_published",
            f"events[{index}]: published {_short(published)} is not an ISO 8601 timestamp "
            "with a time zone, as Okta sends it",
            raw,
        )
    assert uuid_key is not None  # _missing_field checked it
    return IncomingEvent(
        uuid=uuid_key,
        event_type=event["eventType"],
        published=published,
        published_at=normalise_timestamp(published),
        raw=raw,
    )


def _deep_raw(event: Any) -> bytes:
    """An event too deep for orjson, written by the standard library; past its recursion
    limit (about a thousand levels: orjson reads 1,024) it is not kept, and the entry says so."""
    try:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:
        return orjson.dumps("(not kept: nested deeper than this service can write)")


def content_hash(raw: bytes | str) -> str:
    """sha256 of an event's canonical JSON (keys sorted at every level): two copies of one
    event hash alike whatever their key order."""
    canonical = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _missing_field(event: dict[str, Any]) -> tuple[str, str] | None:
    uuid, event_type, published = event.get("uuid"), event.get("eventType"), event.get("published")
    if (  # the usual case, answered without the loop below
        type(uuid) is str and type(event_type) is str and type(published) is str
        and uuid.strip() and event_type.strip() and published.strip()
        and len(uuid) <= MAX_UUID_LENGTH
    ):
        return None
    for field in ("uuid", "eventType", "published"):
        value = event.get(field)
        if value is None:
            return f"missing_{field}", f"event has no {field}"
        if not isinstance(value, str) or not value.strip():
            return f"bad_{field}", f"{field} must be a non-empty string, got {_short(value)}"
    if len(event["uuid"]) > MAX_UUID_LENGTH:
        return "bad_uuid", f"uuid is longer than {MAX_UUID_LENGTH} characters"
    return None


def normalise_timestamp(value: str) -> str | None:
    """Okta's timestamp as UTC with microseconds, or None when it names no real instant.

    Published samples contain impossible dates ("2017-09-31"): the event is still kept, it just
    has no sortable time.
    """
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    if len(value) == 24 and value[19] == "." and value[23] == "Z":
        # Okta's own form, "2024-08-13T15:58:20.353Z", already is UTC: pad to microseconds
        # rather than format the datetime again (this runs for every received event).
        return value[:23] + "000Z"
    try:
        return format_utc(parsed)
    except OverflowError:  # "0001-01-01T00:00:00+05:00" lies before the first UTC instant
        return None


def format_utc(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``: fixed width, so the text sorts as the time does.

    isoformat rather than strftime: it is on the hook's hot path (twice per event) and takes
    half the time, and it zero-pads years before 1000, which strftime does not.
    """
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def seconds_between(
    start: str | None, end: str | None, *, digits: int | None = None
) -> float | None:
    """Seconds from one ISO 8601 timestamp to another (rounded to ``digits`` if given), or None
    when either is missing, not a date, or has no time zone (no instant to subtract)."""
    if not start or not end:
        return None
    try:
        began = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    if began.tzinfo is None or ended.tzinfo is None:
        return None
    seconds = (ended - began).total_seconds()
    return seconds if digits is None else round(seconds, digits)


def hook_id_from_source(source: Any) -> str | None:
    return _hook_id(source) if isinstance(source, str) else None


@functools.lru_cache(maxsize=256)  # a hook's deliveries all name the same source
def _hook_id(source: str) -> str | None:
    match = _HOOK_ID.search(source)
    return match.group(1) if match else None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
