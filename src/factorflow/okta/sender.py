"""Plays Okta's part against a receiver: the verification GET, then one delivery POST."""

from __future__ import annotations

import secrets
import uuid as uuidlib
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson

from factorflow.errors import FactorflowError
from factorflow.secrets_source import HookCredentials

OKTA_TIMEOUT_SECONDS = 3.0


class SendFailed(FactorflowError):
    pass


def send_sample(
    url: str, credentials: HookCredentials, sample: bytes, *, fresh_ids: bool = True
) -> Iterator[str]:
    """Yield a line per step; raise SendFailed on the first step that did not work."""
    auth = {credentials.header: credentials.accepted[0].decode()}
    body = _fresh(sample) if fresh_ids else sample
    with httpx.Client(timeout=OKTA_TIMEOUT_SECONDS) as client:
        challenge = secrets.token_urlsafe(16)
        try:
            answer = client.get(url, headers={**auth, "X-Okta-Verification-Challenge": challenge})
        except httpx.HTTPError as exc:
            raise SendFailed(f"verification GET {url} failed: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise SendFailed(f"verification GET answered {answer.status_code}: {answer.text[:200]}")
        try:
            echoed = answer.json().get("verification")
        except ValueError:
            echoed = None
        if echoed != challenge:
            raise SendFailed("verification GET did not echo the challenge")
        yield f"verification: OK ({url} echoed the challenge)"
        try:
            posted = client.post(
                url, content=body,
                headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise SendFailed(f"delivery POST failed: {type(exc).__name__}") from None
        if posted.status_code not in (200, 204):
            raise SendFailed(f"delivery POST answered {posted.status_code}: {posted.text[:200]}")
        event = orjson.loads(body)["data"]["events"][0]
        result = posted.headers.get("factorflow-result", "no result header")
        yield (f"delivery: {posted.status_code} ({result}) "
               f"for {event['eventType']} {event['uuid']}")


def _fresh(sample: bytes) -> bytes:
    """The sample with new ids and a current time, so each run stores a new event."""
    document = orjson.loads(sample)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    document["eventId"] = str(uuidlib.uuid4())
    document["eventTime"] = now
    for event in document["data"]["events"]:
        event["uuid"] = str(uuidlib.uuid1())
        event["published"] = now
    return orjson.dumps(document)
