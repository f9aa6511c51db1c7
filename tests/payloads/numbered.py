"""Numbered events for store tests, in hook deliveries, received as the receiver would.

Event ``n`` is a published corpus event (the corpus's events in turn) under a uuid derived from
``n`` and the test's own namespace: the same number always gives the same bytes. A delivery
body wraps events in the hook envelope; a receipt is what the receiver hands its store.
"""

from __future__ import annotations

import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

import orjson
from tests.conftest import CORPUS

from factorflow.okta.payloads import format_utc, parse_delivery
from factorflow.store.base import Receipt

TEMPLATES: list[dict[str, Any]] = [
    orjson.loads(line)
    for line in (CORPUS / "okta-events.ndjson").read_bytes().splitlines()
    if line.strip()
]


def numbered_event(namespace: uuidlib.UUID, number: int) -> dict[str, Any]:
    """A published corpus event under the uuid of ``number`` in ``namespace``."""
    template = dict(TEMPLATES[number % len(TEMPLATES)])
    template["uuid"] = str(uuidlib.uuid5(namespace, f"event-{number}"))
    return template


def delivery_body(delivery_id: str, events: list[dict[str, Any]], hook_id: str) -> bytes:
    """The hook envelope around ``events``, from the hook ``hook_id`` of example.okta.com."""
    return orjson.dumps({
        "eventType": "com.okta.event_hook",
        "eventId": delivery_id,
        "eventTime": "2024-05-01T12:00:00.000Z",
        "source": f"https://example.okta.com/api/v1/eventHooks/{hook_id}",
        "data": {"events": events},
    })


def to_receipt(body: bytes, org: str) -> Receipt:
    """The delivery as received now for ``org``."""
    delivery = parse_delivery(body)
    return Receipt(
        delivery_id=delivery.delivery_id,
        hook_id=delivery.hook_id,
        received_at=format_utc(datetime.now(UTC)),
        org=org,
        delivery=delivery,
    )
