"""Okta's side of an event hook, played against a receiver URL.

First the one-time verification ``GET`` (header ``x-okta-verification-challenge``, the receiver
must echo it as ``{"verification": ...}``), then the events in batched ``POST`` deliveries with
Okta's envelope (``eventType: com.okta.event_hook``, ``eventId``, ``eventTime``, ``source``,
``data.events[]``) and the configured auth header. As Okta does: a 3 s timeout, at most one retry
and only after a timeout, a connection error or a 5xx, never after a 4xx.

And as Okta may, on request: drop deliveries (those events are never sent; they stay in the
System Log, where only a reconciliation poller finds them), send deliveries twice, out of order
and late. Hook copies carry the quirks seen in real hook payloads: ``client.ipChain`` next to
``request.ipChain`` and an ``insertionTimestamp`` key, so they are not byte-identical to the
System Log's copy of the same event.
"""

from __future__ import annotations

import copy
import random
import secrets
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from factorflow.errors import FactorflowError
from factorflow.okta.simulator.constants import DEFAULT_HOOK_EVENT_TYPES
from factorflow.okta.simulator.events import okta_time

OKTA_TIMEOUT_SECONDS = 3.0

class SendFailed(FactorflowError):
    """The receiver failed the verification; Okta would not deliver to it."""


@dataclass(frozen=True)
class SendOptions:
    batch_size: int = 10
    drop: float = 0.0  # share of deliveries never sent
    duplicate: float = 0.0  # share of deliveries sent a second time, later
    reorder: bool = False  # shuffle deliveries and the events inside each
    max_delay_seconds: float = 0.0  # a random pause of up to this before each delivery
    seed: int = 0
    hook_quirks: bool = True  # client.ipChain and insertionTimestamp, as hook payloads have

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for name in ("drop", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_delay_seconds < 0:
            raise ValueError("max_delay_seconds must not be negative")


@dataclass(frozen=True)
class DeliveryOutcome:
    event_id: str
    uuids: tuple[str, ...]
    copy: int  # 1 for the first sending, 2 for a duplicate
    attempts: int
    status: int | None  # the last answer's status; None if there was no answer
    result: str | None  # the receiver's factorflow-result header, if any
    acknowledged: bool


@dataclass
class SendSummary:
    deliveries: int = 0  # planned (before drops and duplicates)
    sent: int = 0  # POSTed (duplicates included, retries not)
    acknowledged: int = 0
    failed: int = 0
    dropped: int = 0
    duplicated: int = 0
    retried: int = 0
    events: int = 0
    dropped_uuids: list[str] = field(default_factory=list)
    outcomes: list[DeliveryOutcome] = field(default_factory=list)

    @property
    def acknowledged_uuids(self) -> set[str]:
        return {u for o in self.outcomes if o.acknowledged for u in o.uuids}

    def receiver_counts(self) -> dict[str, int]:
        """The receiver's own ``factorflow-result`` counts, summed (new, duplicate, ...)."""
        totals: dict[str, int] = {}
        for outcome in self.outcomes:
            for part in (outcome.result or "").split():
                name, _, value = part.partition("=")
                if value.isdigit():
                    totals[name] = totals.get(name, 0) + int(value)
        return totals

    def lines(self) -> list[str]:
        lines = [
            f"events: {self.events} in {self.deliveries} deliveries",
            f"sent: {self.sent}  acknowledged: {self.acknowledged}  failed: {self.failed}  "
            f"retried: {self.retried}",
            f"dropped: {self.dropped} deliveries ({len(self.dropped_uuids)} events, still in "
            f"the System Log)  duplicated: {self.duplicated}",
        ]
        counts = self.receiver_counts()
        if counts:
            lines.append("receiver: " + "  ".join(f"{k}={v}" for k, v in counts.items()))
        return lines


class HookSender:
    def __init__(
        self,
        url: str,
        *,
        secret: str,
        auth_header: str = "Authorization",
        org_url: str = "https://example.okta.com",
        hook_id: str = "whoSimulatedHook0001",
        headers: dict[str, str] | None = None,
        timeout_seconds: float = OKTA_TIMEOUT_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.source = f"{org_url.rstrip('/')}/api/v1/eventHooks/{hook_id}"
        self._headers = {
            "Accept": "application/json", "Content-Type": "application/json",
            **(headers or {}), auth_header: secret,
        }
        self._timeout = timeout_seconds
        self._sleep = sleep
        self._clock = clock
        self._rounds = 0

    def verify(self) -> None:
        """The one-time verification request (retried once after a timeout or error)."""
        challenge = secrets.token_urlsafe(24)
        headers = {**self._headers, "x-okta-verification-challenge": challenge}
        headers.pop("Content-Type")
        problem = "no answer"
        with httpx.Client(timeout=self._timeout) as client:
            for _attempt in range(2):
                try:
                    answer = client.get(self.url, headers=headers)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}"
                    continue
                if answer.status_code != 200:
                    raise SendFailed(f"verification answered {answer.status_code}: "
                                     f"{answer.text[:200]}")
                try:
                    echoed = orjson.loads(answer.content).get("verification")
                except (orjson.JSONDecodeError, AttributeError):
                    echoed = None
                if echoed != challenge:
                    raise SendFailed("verification answer did not echo the challenge")
                return
        raise SendFailed(f"verification request failed twice: {problem}")

    def send(self, events: Iterable[dict[str, Any]],
             options: SendOptions | None = None) -> SendSummary:
        """Deliver ``events`` (ordered by ``published`` and batched); see :class:`SendOptions`."""
        options = options or SendOptions()
        self._rounds += 1
        rng = random.Random(f"hook-sender:{options.seed}:{self._rounds}")
        ordered = sorted(events, key=lambda e: str(e.get("published", "")))
        batches = [ordered[i:i + options.batch_size]
                   for i in range(0, len(ordered), options.batch_size)]
        summary = SendSummary(deliveries=len(batches), events=len(ordered))
        plan: list[tuple[int, bytes, str, tuple[str, ...]]] = []
        duplicates: list[tuple[int, bytes, str, tuple[str, ...]]] = []
        for batch in batches:
            uuids = tuple(str(e.get("uuid")) for e in batch)
            if rng.random() < options.drop:
                summary.dropped += 1
                summary.dropped_uuids.extend(uuids)
                continue
            hook_events = [self._hook_copy(e, options.hook_quirks) for e in batch]
            if options.reorder:
                rng.shuffle(hook_events)
            # the same batch gets the same delivery id (a redelivery), another batch another
            event_id = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL,
                                         f"{self.source}#{options.seed}#{','.join(uuids)}"))
            body = self._envelope(event_id, hook_events)
            plan.append((1, body, event_id, uuids))
            if rng.random() < options.duplicate:
                duplicates.append(plan[-1])
        for original in duplicates:
            # a second copy later on: somewhere behind the original
            summary.duplicated += 1
            after = plan.index(original) + 1
            plan.insert(rng.randint(after, len(plan)), (2, *original[1:]))
        if options.reorder:
            rng.shuffle(plan)
        with httpx.Client(timeout=self._timeout) as client:
            for number, body, event_id, uuids in plan:
                if options.max_delay_seconds:
                    self._sleep(rng.uniform(0, options.max_delay_seconds))
                outcome = self._deliver(client, body, event_id, uuids, number)
                summary.sent += 1
                summary.retried += outcome.attempts - 1
                summary.acknowledged += outcome.acknowledged
                summary.failed += not outcome.acknowledged
                summary.outcomes.append(outcome)
        return summary

    def _deliver(self, client: httpx.Client, body: bytes, event_id: str,
                 uuids: tuple[str, ...], number: int) -> DeliveryOutcome:
        status: int | None = None
        result: str | None = None
        attempts = 0
        for _attempt in range(2):
            attempts += 1
            try:
                answer = client.post(self.url, content=body, headers=self._headers)
            except httpx.HTTPError:
                status = None
                continue  # a timeout or a connection error: Okta retries once
            status, result = answer.status_code, answer.headers.get("factorflow-result")
            if answer.status_code < 500:
                break  # 2xx done, 3xx/4xx never retried
        acknowledged = status is not None and 200 <= status < 300
        return DeliveryOutcome(event_id, uuids, number, attempts, status, result, acknowledged)

    def _envelope(self, event_id: str, events: list[dict[str, Any]]) -> bytes:
        return orjson.dumps({
            "eventType": "com.okta.event_hook",
            "eventTypeVersion": "1.0",
            "cloudEventsVersion": "0.1",
            "source": self.source,
            "eventId": event_id,
            "data": {"events": events},
            "eventTime": okta_time(self._clock()),
            "contentType": "application/json",
        })

    @staticmethod
    def _hook_copy(event: dict[str, Any], quirks: bool) -> dict[str, Any]:
        copied = copy.deepcopy(event)
        if quirks:
            chain = (copied.get("request") or {}).get("ipChain")
            if isinstance(copied.get("client"), dict) and chain is not None:
                copied["client"]["ipChain"] = copy.deepcopy(chain)
            copied["insertionTimestamp"] = None
        return copied


def subscribed(events: Iterable[dict[str, Any]],
               event_types: Iterable[str] = DEFAULT_HOOK_EVENT_TYPES) -> list[dict[str, Any]]:
    """The events a hook subscribed to ``event_types`` would deliver."""
    wanted = set(event_types)
    return [e for e in events if e.get("eventType") in wanted]
