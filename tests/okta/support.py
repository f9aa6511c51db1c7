"""The Okta simulator served on a free port for the Okta integration tests, and hook copies of
its System Log events (with the quirks real hook payloads have)."""

from __future__ import annotations

import copy
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.simulator import (
    ManualClock,
    OAuthApp,
    OktaSimulator,
    SimOrg,
    SimulatorConfig,
    ThreadedServer,
    generate_org,
)
from factorflow.okta.simulator.events import okta_time
from tests.conftest import WATCHED_SECRETS

TOKEN = "00simulatedOktaToken-9b2e41c7"
WATCHED_SECRETS.add(TOKEN)  # the suite-wide watch fails the run if a log line shows it
ACTIVATE = "user.mfa.factor.activate"
MFA_TYPES = (
    "user.mfa.factor.activate", "user.mfa.factor.deactivate", "user.mfa.factor.reset_all",
    "user.mfa.factor.suspend", "user.mfa.factor.unsuspend", "user.mfa.factor.update",
)


@dataclass
class SimulatedOkta:
    org: SimOrg
    sim: OktaSimulator
    base_url: str
    clock: ManualClock
    clients: list[OktaClient] = field(default_factory=list)

    def settings(self, **extra: Any) -> OktaApiSettings:
        if "client_id" not in extra:
            extra.setdefault("api_token", TOKEN)
        return OktaApiSettings(org_url=self.base_url, **extra)

    def client(self, **extra: Any) -> OktaClient:
        """A client on the simulator's clock: its waits advance the simulated time."""
        client = OktaClient(self.settings(**extra), clock=self.clock.time, sleep=self.clock.sleep)
        self.clients.append(client)
        return client

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def active_users(self) -> list[Any]:
        return [u for u in self.org.users.values() if u.status == "ACTIVE"]

    def requests(self, bucket: str | None = None) -> list[Any]:
        return [r for r in self.sim.requests if bucket is None or r.bucket == bucket]


@contextmanager
def simulated_okta(
    *, users: int = 30, seed: int = 3, enrollments: int = 0, start: float | None = None,
    engine: str = "classic", oauth_apps: Iterable[OAuthApp] = (), **config: Any,
) -> Iterator[SimulatedOkta]:
    clock = ManualClock(start) if start is not None else ManualClock()
    org = generate_org(users=users, seed=seed, clock=clock, engine=engine)  # type: ignore[arg-type]
    if enrollments:
        org.generate_enrollments(enrollments, seed=seed)
    sim = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,), oauth_apps=tuple(oauth_apps),
                                             **config), clock)
    with ThreadedServer(sim.app) as server:
        okta = SimulatedOkta(org, sim, server.base_url, clock)
        try:
            yield okta
        finally:
            for client in okta.clients:
                client.close()


def hook_copy(event: dict[str, Any]) -> dict[str, Any]:
    """What an event hook delivers for a System Log event: ``client.ipChain`` next to
    ``request.ipChain`` and an ``insertionTimestamp`` key (see the simulator's sender)."""
    copied = copy.deepcopy(event)
    chain = (copied.get("request") or {}).get("ipChain")
    if isinstance(copied.get("client"), dict) and chain is not None:
        copied["client"]["ipChain"] = copy.deepcopy(chain)
    copied["insertionTimestamp"] = None
    return copied


def delivery(events: Iterable[dict[str, Any]], *, quirks: bool = True) -> bytes:
    """An event hook delivery (Okta's envelope) of ``events``."""
    items = [hook_copy(e) if quirks else e for e in events]
    return orjson.dumps({
        "eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1", "contentType": "application/json",
        "source": "https://example.okta.com/api/v1/eventHooks/whoTestHook00000001",
        "eventId": str(uuidlib.uuid4()), "eventTime": okta_time(0),
        "data": {"events": items},
    })


def delivery_failure(org: SimOrg, failed: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """An ``event_hook.delivery`` event as Okta logs a failed delivery, appended to the org's
    System Log (the simulator does not write these by itself)."""
    moment = org.clock.time()
    event = {
        "actor": {"id": "whoTestHook00000001", "type": "EventHook", "alternateId": "unknown",
                  "displayName": "factorflow", "detailEntry": None},
        "client": None, "device": None, "authenticationContext": None,
        "displayMessage": "Event hook delivery", "eventType": "event_hook.delivery",
        "outcome": {"result": "FAILURE", "reason": "Read timed out"},
        "published": okta_time(moment), "securityContext": None, "severity": "WARN",
        "debugContext": {"debugData": {"eventIds": ",".join(str(e["uuid"]) for e in failed)}},
        "legacyEventType": None, "transaction": {"type": "JOB", "id": "hookJob", "detail": {}},
        "uuid": str(uuidlib.uuid4()), "version": "0", "request": {"ipChain": []},
        "target": [{"id": "whoTestHook00000001", "type": "EventHook",
                    "alternateId": "unknown", "displayName": "factorflow", "detailEntry": None}],
    }
    org.log.append([event])
    return event
