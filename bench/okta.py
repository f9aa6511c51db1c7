"""Okta integration benchmark: System Log catch-up and enrichment calls, against the simulator.

1. **Catch-up.** The simulated org's System Log holds N subscribed events (100,000; 10,000 with
   ``--quick``). First a bare httpx loop fetches every page (``limit=1000``, following the
   ``next`` links to the empty page, the same query the reconciler makes) and stores nothing:
   the simulator's raw page-serving rate. Then the reconciler reads the same pages into a fresh
   store (SQLite by default, ``--store-url`` for another), in the same run. Reported: time,
   requests, events per second of both, and their ratio; afterwards the store must hold each
   event exactly once with a confirmation row, or the run fails.
2. **Enrichment.** A burst of E events (10,000; 1,000 with ``--quick``) by U users (2,000; 200)
   is looked up from 16 threads (the worker's step threads) through one ``OktaEnrichment``.
   Reported: Okta calls per event (a lookup without the cache costs 4), lookups per user, time.

The simulator runs in this process (uvicorn in a thread), on a manual clock and with rate limits
raised out of the way: the figures are factorflow's own cost, not Okta's limits (see
bench/README.md for what the limits mean in practice).

    python bench/okta.py            # about two minutes
    python bench/okta.py --quick    # about fifteen seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import sys
import tempfile
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from factorflow.domain.facts import Person
from factorflow.enrichment.okta import OktaEnrichment
from factorflow.okta.api import OktaApiSettings, OktaClient
from factorflow.okta.reconcile import Reconciler, log_filter
from factorflow.okta.simulator import (
    ManualClock,
    OktaSimulator,
    SimulatorConfig,
    ThreadedServer,
    generate_org,
)
from factorflow.okta.simulator.events import okta_time
from factorflow.store.factory import open_store
from factorflow.store.system_log import SystemLogLedger

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TOKEN = "bench-okta-token-51f0"
EVENT_TYPES = ("user.mfa.factor.activate", "user.mfa.factor.deactivate")
PAGE = 1000
THREADS = 16
NO_LIMIT = 10_000_000
LOOKUP_BUCKETS = ("/api/v1/users/{id}", "/api/v1/users/{id}/groups",
                  "/api/v1/users/{id}/factors", "/api/v1/users/{id}/authenticator-enrollments")


def build_log(events: int, seed: int) -> tuple[Any, ManualClock]:
    """An org whose System Log holds ``events`` subscribed events, half a second apart: real
    enrollment events, then copies of them under fresh uuids."""
    clock = ManualClock(start=time.time())
    org = generate_org(users=200, seed=seed, clock=clock, engine="classic")
    org.generate_enrollments(min(events, 2000), seed=seed)
    base = org.events(EVENT_TYPES)
    rng = random.Random(seed)
    start = clock.time() - events * 0.5
    made = []
    for index in range(events):
        event = copy.deepcopy(base[index % len(base)])
        event["uuid"] = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        event["published"] = okta_time(start + index * 0.5)
        made.append(event)
    org.log = type(org.log)()  # only the copies, in published order
    org.log.append(made)
    return org, clock


def bare_pages(base_url: str, since: str) -> tuple[int, int, float]:
    """Fetch every page of the query with plain httpx; (requests, events, seconds)."""
    params = {"since": since, "filter": log_filter(EVENT_TYPES), "limit": str(PAGE)}
    requests = events = 0
    started = time.perf_counter()
    with httpx.Client(headers={"Authorization": f"SSWS {TOKEN}"}, timeout=60) as http:
        answer = http.get(f"{base_url}/api/v1/logs", params=params)
        while True:
            requests += 1
            answer.raise_for_status()
            page = answer.json()
            events += len(page)
            next_url = answer.links.get("next", {}).get("url")
            if not page or next_url is None:
                break
            answer = http.get(next_url)
    return requests, events, time.perf_counter() - started


def catch_up(events: int, store_url: str | None) -> dict[str, Any]:
    org, clock = build_log(events, seed=7)
    simulator = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,)), clock)
    simulator.set_rate_limit("/api/v1/logs", NO_LIMIT)
    since = datetime.fromtimestamp(clock.time(), UTC) - timedelta(seconds=events * 0.5 + 60)
    with tempfile.TemporaryDirectory() as scratch, ThreadedServer(simulator.app) as server:
        bare_requests, bare_events, bare_seconds = bare_pages(
            server.base_url, okta_time(since.timestamp()))
        assert bare_events == events, f"the bare loop saw {bare_events} events"
        store = open_store(store_url or f"sqlite:///{Path(scratch) / 'factorflow.db'}")
        client = OktaClient(OktaApiSettings(org_url=server.base_url, api_token=TOKEN),
                            clock=clock.time, sleep=clock.sleep)
        try:
            ledger = SystemLogLedger(store)
            reconciler = Reconciler("bench", client, ledger, event_types=EVENT_TYPES,
                                    page_size=PAGE)
            simulator.reset_stats()
            started = time.perf_counter()
            run = reconciler.run(since=since)
            seconds = time.perf_counter() - started
            requests = len(simulator.requests)
            assert run.error is None, run.error
            stored = store.read("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM events")[0]
            confirmed = store.read("SELECT COUNT(*) FROM system_log_confirmations")[0][0]
            if tuple(stored) != (events, events) or confirmed != events or run.recovered != events:
                raise SystemExit(f"store check failed: {tuple(stored)} events, {confirmed} "
                                 f"confirmations, {run.recovered} recovered of {events}")
            simulator.reset_stats()
            again = reconciler.run()  # caught up: one empty page from the cursor
            assert again.read == 0 and again.pages == 1
        finally:
            client.close()
            store.close()
    return {
        "events": events, "page_size": PAGE, "store": (store_url or "sqlite").split(":")[0],
        "bare": {"requests": bare_requests, "seconds": round(bare_seconds, 3),
                 "events_per_second": round(events / bare_seconds)},
        "reconciler": {"requests": requests, "pages": run.pages, "seconds": round(seconds, 3),
                       "events_per_second": round(events / seconds)},
        "ratio": round(bare_seconds / seconds, 3),
    }


def enrichment(events: int, users: int) -> dict[str, Any]:
    clock = ManualClock(start=time.time())
    org = generate_org(users=users, seed=3, clock=clock, engine="classic")
    simulator = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,)), clock)
    for bucket in LOOKUP_BUCKETS:
        simulator.set_rate_limit(bucket, NO_LIMIT)
    people = list(org.users.values())
    rng = random.Random(5)
    burst = [rng.choice(people) for _ in range(events)]
    with ThreadedServer(simulator.app) as server:
        client = OktaClient(OktaApiSettings(org_url=server.base_url, api_token=TOKEN,
                                            max_concurrency=THREADS),
                            clock=clock.time, sleep=clock.sleep)
        try:
            enricher = OktaEnrichment(client, ttl_seconds=300)
            started = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                found = list(pool.map(
                    lambda u: enricher.lookup(Person(u.id, u.login, None, "User")), burst))
            seconds = time.perf_counter() - started
        finally:
            client.close()
    calls = len(simulator.requests)
    distinct = len({u.id for u in burst})
    assert all(item.found for item in found)
    assert calls == 4 * distinct, f"{calls} calls for {distinct} users"
    return {
        "events": events, "users": users, "distinct_users_in_burst": distinct,
        "threads": THREADS, "okta_calls": calls, "lookups": enricher.lookups,
        "calls_per_event": round(calls / events, 3), "calls_per_event_uncached": 4.0,
        "seconds": round(seconds, 3), "events_per_second": round(events / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 15 s)")
    parser.add_argument("--store-url", default=None,
                        help="an empty store to catch up into (default: a fresh SQLite file)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args()
    log_events, burst, users = (10_000, 1_000, 200) if args.quick else (100_000, 10_000, 2_000)
    started = time.perf_counter()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick, "python": sys.version.split()[0], "machine": platform.machine(),
        "catch_up": catch_up(log_events, args.store_url),
        "enrichment": enrichment(burst, users),
    }
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    up, enrich = result["catch_up"], result["enrichment"]
    print(f"System Log catch-up: {up['events']:,} events in pages of {PAGE}")
    print(f"  bare page loop   {up['bare']['requests']:>5} requests  "
          f"{up['bare']['seconds']:>7.2f} s  {up['bare']['events_per_second']:>8,} events/s")
    print(f"  reconciler       {up['reconciler']['requests']:>5} requests  "
          f"{up['reconciler']['seconds']:>7.2f} s  "
          f"{up['reconciler']['events_per_second']:>8,} events/s  "
          f"({up['ratio']:.0%} of the bare rate, store: {up['store']})")
    print(f"Enrichment: {enrich['events']:,} events by {enrich['distinct_users_in_burst']:,} "
          f"users, {THREADS} threads")
    print(f"  {enrich['okta_calls']:,} Okta calls = {enrich['calls_per_event']} per event "
          f"(4 without the cache), {enrich['seconds']:.2f} s, "
          f"{enrich['events_per_second']:,} events/s")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"okta-{stamp}{'-quick' if args.quick else ''}.json"
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"result: {output} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
