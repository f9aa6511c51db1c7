"""Okta integration benchmark: System Log catch-up and enrichment calls, against the simulator.

1. **Catch-up.** The simulated org's System Log holds N subscribed events (100,000; 10,000 with
   ``--quick``). First a bare httpx loop fetches every page (``limit=1000``, following the
   ``next`` links to the empty page, the same query the reconciler makes) and stores nothing:
   the simulator's raw page-serving rate. Then the reconciler reads the same pages into a fresh
   store (SQLite by default, ``--store-url`` for another), in the same run. Reported: time,
   requests, events per second of both, and their ratio; afterwards the store must hold each
   event exactly once with a confirmation row, or the run fails. Memory: the resident set
   (VmRSS) of each right before its first request and after its last page, the peak (VmHWM) in
   between, the after/before ratio, the reconciler's peak against the bare loop's, and the
   growth per 1,000 events over the second half of the pages (sampled after each page): about
   zero if memory stays bounded however many events there are.
2. **Enrichment.** A burst of E events (10,000; 1,000 with ``--quick``) by U users (2,000; 200)
   is looked up from 16 threads (the worker's step threads) through one ``OktaEnrichment``.
   Reported: Okta calls per event (a lookup without the cache costs 4), lookups per user, time,
   and the resident memory of the looking-up process before and after the burst.

The simulator runs in this process (uvicorn in a thread), on a manual clock and with rate limits
raised out of the way: the figures are factorflow's own cost, not Okta's limits (see
bench/README.md for what the limits mean in practice). The bare loop, the reconciler and the
enrichment burst each run in a process of their own, spawned (not forked) for it, so that their
memory is their own work's and not the simulated org's with its generated log; the store is
checked here afterwards.

    python bench/okta.py            # about a minute
    python bench/okta.py --quick    # about ten seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import platform
import random
import sys
import tempfile
import threading
import time
import traceback
import uuid as uuidlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
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
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import PageOutcome, SystemLogLedger
from procmem import NOT_MEASURED, MemoryWatch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TOKEN = "bench-okta-token-51f0"
EVENT_TYPES = ("user.mfa.factor.activate", "user.mfa.factor.deactivate")
PAGE = 1000
THREADS = 16
NO_LIMIT = 10_000_000
LOOKUP_BUCKETS = ("/api/v1/users/{id}", "/api/v1/users/{id}/groups",
                  "/api/v1/users/{id}/factors", "/api/v1/users/{id}/authenticator-enrollments")
SAMPLE_EVERY = 100  # enrichment: events between two memory samples


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


# -- the measured processes -----------------------------------------------------------------


def in_own_process(target: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``target(*args)`` in a fresh interpreter (spawned: nothing of this process's memory,
    such as the generated log, is inherited); its result comes back through a pipe."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sending, target, args), daemon=True)
    process.start()
    sending.close()
    try:
        ok, value = receiving.recv()
    except EOFError:
        ok, value = False, "it ended without a result"
    finally:
        receiving.close()
        process.join(60)
    if not ok:
        raise SystemExit(f"{target.__name__} failed in its process "
                         f"(exit {process.exitcode}): {value}")
    result: dict[str, Any] = value
    return result


def _child(sending: Connection, target: Callable[..., dict[str, Any]],
           args: Sequence[Any]) -> None:
    try:
        outcome: tuple[bool, Any] = (True, target(*args))
    except BaseException:
        outcome = (False, traceback.format_exc())
    sending.send(outcome)
    sending.close()


def bare_pages(base_url: str, since: str,
               watch: MemoryWatch | None = None) -> tuple[int, int, float]:
    """Fetch every page of the query with plain httpx; (requests, events, seconds). ``watch``
    starts right before the first request and samples after each page."""
    params = {"since": since, "filter": log_filter(EVENT_TYPES), "limit": str(PAGE)}
    requests = events = 0
    with httpx.Client(headers={"Authorization": f"SSWS {TOKEN}"}, timeout=60) as http:
        if watch is not None:
            watch.start()
        started = time.perf_counter()
        answer = http.get(f"{base_url}/api/v1/logs", params=params)
        while True:
            requests += 1
            answer.raise_for_status()
            page = answer.json()
            events += len(page)
            if watch is not None:
                watch.sample(events)
            next_url = answer.links.get("next", {}).get("url")
            if not page or next_url is None:
                break
            answer = http.get(next_url)
        seconds = time.perf_counter() - started
    return requests, events, seconds


def bare_child(base_url: str, since: str) -> dict[str, Any]:
    watch = MemoryWatch()
    requests, events, seconds = bare_pages(base_url, since, watch)
    return {"requests": requests, "events": events, "seconds": seconds,
            "memory": watch.stop(events)}


class SampledLedger(SystemLogLedger):
    """The ledger, taking the process's resident memory after each page it stores."""

    def __init__(self, store: SqlEventStore, watch: MemoryWatch) -> None:
        super().__init__(store)
        self.watch = watch
        self.stored = 0

    def record_page(self, org: str, events: Sequence[Any], *, next_url: str | None,
                    filter: str, since: str | None = None) -> PageOutcome:
        outcome = super().record_page(org, events, next_url=next_url, filter=filter,
                                      since=since)
        self.stored += len(events)
        self.watch.sample(self.stored)
        return outcome


def reconciler_child(base_url: str, store_url: str, since: datetime,
                     now: float) -> dict[str, Any]:
    """The catch-up into ``store_url``, the client on a manual clock at the simulator's time."""
    clock = ManualClock(start=now)
    store = open_store(store_url)
    client = OktaClient(OktaApiSettings(org_url=base_url, api_token=TOKEN),
                        clock=clock.time, sleep=clock.sleep)
    watch = MemoryWatch()
    try:
        reconciler = Reconciler("bench", client, SampledLedger(store, watch),
                                event_types=EVENT_TYPES, page_size=PAGE)
        watch.start()
        started = time.perf_counter()
        run = reconciler.run(since=since)
        seconds = time.perf_counter() - started
        memory = watch.stop(run.read)
    finally:
        client.close()
        store.close()
    return {"seconds": seconds, "pages": run.pages, "read": run.read,
            "recovered": run.recovered, "error": run.error, "client_sleeps": len(clock.sleeps),
            "memory": memory}


def enrichment_child(base_url: str, now: float, burst: list[tuple[str, str]]) -> dict[str, Any]:
    """The burst's lookups from THREADS threads, each taking the next event when it is free."""
    clock = ManualClock(start=now)
    client = OktaClient(OktaApiSettings(org_url=base_url, api_token=TOKEN,
                                        max_concurrency=THREADS),
                        clock=clock.time, sleep=clock.sleep)
    watch = MemoryWatch()
    todo = iter(burst)
    taken = 0
    lock = threading.Lock()

    def work(enricher: OktaEnrichment) -> int:
        nonlocal taken
        found = 0
        while True:
            with lock:
                item = next(todo, None)
                taken += item is not None
                index = taken
            if item is None:
                return found
            found += enricher.lookup(Person(item[0], item[1], None, "User")).found
            if index % SAMPLE_EVERY == 0:
                watch.sample(index)

    try:
        enricher = OktaEnrichment(client, ttl_seconds=300)
        watch.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            found = sum(pool.map(lambda _: work(enricher), range(THREADS)))
        seconds = time.perf_counter() - started
        memory = watch.stop(len(burst))
    finally:
        client.close()
    return {"seconds": seconds, "found": found, "lookups": enricher.lookups,
            "client_sleeps": len(clock.sleeps), "memory": memory}


# -- the two parts --------------------------------------------------------------------------


def catch_up(events: int, store_url: str | None) -> dict[str, Any]:
    org, clock = build_log(events, seed=7)
    simulator = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,)), clock)
    simulator.set_rate_limit("/api/v1/logs", NO_LIMIT)
    since = datetime.fromtimestamp(clock.time(), UTC) - timedelta(seconds=events * 0.5 + 60)
    with tempfile.TemporaryDirectory() as scratch, ThreadedServer(simulator.app) as server:
        bare = in_own_process(bare_child, server.base_url, okta_time(since.timestamp()))
        assert bare["events"] == events, f"the bare loop saw {bare['events']} events"
        url = store_url or f"sqlite:///{Path(scratch) / 'factorflow.db'}"
        simulator.reset_stats()
        up = in_own_process(reconciler_child, server.base_url, url, since, clock.time())
        requests = len(simulator.requests)
        assert up["error"] is None, up["error"]
        store = open_store(url)
        client = OktaClient(OktaApiSettings(org_url=server.base_url, api_token=TOKEN),
                            clock=clock.time, sleep=clock.sleep)
        try:
            stored = store.read("SELECT COUNT(*), COUNT(DISTINCT uuid) FROM events")[0]
            confirmed = store.read("SELECT COUNT(*) FROM system_log_confirmations")[0][0]
            if tuple(stored) != (events, events) or confirmed != events \
                    or up["recovered"] != events:
                raise SystemExit(f"store check failed: {tuple(stored)} events, {confirmed} "
                                 f"confirmations, {up['recovered']} recovered of {events}")
            simulator.reset_stats()
            reconciler = Reconciler("bench", client, SystemLogLedger(store),
                                    event_types=EVENT_TYPES, page_size=PAGE)
            again = reconciler.run()  # caught up: one empty page from the cursor
            assert again.read == 0 and again.pages == 1
        finally:
            client.close()
            store.close()
    bare_memory, up_memory = bare["memory"], up["memory"]
    return {
        "events": events, "page_size": PAGE, "store": (store_url or "sqlite").split(":")[0],
        "bare": {"requests": bare["requests"], "seconds": round(bare["seconds"], 3),
                 "events_per_second": round(events / bare["seconds"]),
                 "memory": bare_memory},
        "reconciler": {"requests": requests, "pages": up["pages"],
                       "seconds": round(up["seconds"], 3),
                       "events_per_second": round(events / up["seconds"]),
                       "client_sleeps": up["client_sleeps"], "memory": up_memory},
        "ratio": round(bare["seconds"] / up["seconds"], 3),
        "memory_peak_ratio": (round(up_memory["peak_mib"] / bare_memory["peak_mib"], 3)
                              if up_memory and bare_memory else None),
    }


def enrichment(events: int, users: int) -> dict[str, Any]:
    clock = ManualClock(start=time.time())
    org = generate_org(users=users, seed=3, clock=clock, engine="classic")
    simulator = OktaSimulator(org, SimulatorConfig(api_tokens=(TOKEN,)), clock)
    for bucket in LOOKUP_BUCKETS:
        simulator.set_rate_limit(bucket, NO_LIMIT)
    people = list(org.users.values())
    rng = random.Random(5)
    burst = [(u.id, u.login) for u in (rng.choice(people) for _ in range(events))]
    with ThreadedServer(simulator.app) as server:
        looked = in_own_process(enrichment_child, server.base_url, clock.time(), burst)
    calls = len(simulator.requests)
    distinct = len({ident for ident, _ in burst})
    assert looked["found"] == events, f"{looked['found']} of {events} users found"
    assert calls == 4 * distinct, f"{calls} calls for {distinct} users"
    return {
        "events": events, "users": users, "distinct_users_in_burst": distinct,
        "threads": THREADS, "okta_calls": calls, "lookups": looked["lookups"],
        "calls_per_event": round(calls / events, 3), "calls_per_event_uncached": 4.0,
        "seconds": round(looked["seconds"], 3),
        "events_per_second": round(events / looked["seconds"]),
        "client_sleeps": looked["client_sleeps"], "memory": looked["memory"],
    }


# -- output ---------------------------------------------------------------------------------


def memory_line(name: str, memory: dict[str, Any] | None, unit: str) -> str:
    if memory is None:
        return f"    {name:<15}{NOT_MEASURED}"
    line = (f"    {name:<15}{memory['rss_before_mib']:>7.1f} -> {memory['rss_after_mib']:>6.1f}"
            f"  peak {memory['peak_mib']:>6.1f}  {memory['growth_mib']:>+6.1f} "
            f"({memory['ratio']:.2f}x)")
    per_thousand = memory["growth_kib_per_1000_second_half"]
    if per_thousand is not None:
        line += f"  {per_thousand:>+7.1f} KiB per 1,000 {unit} in the second half"
    if memory["peak_since"] != "baseline":
        line += "  (peak: since the process started)"
    return line


def render(result: dict[str, Any]) -> str:
    up, enrich = result["catch_up"], result["enrichment"]
    lines = [
        f"System Log catch-up: {up['events']:,} events in pages of {PAGE}",
        f"  bare page loop   {up['bare']['requests']:>5} requests  "
        f"{up['bare']['seconds']:>7.2f} s  {up['bare']['events_per_second']:>8,} events/s",
        f"  reconciler       {up['reconciler']['requests']:>5} requests  "
        f"{up['reconciler']['seconds']:>7.2f} s  "
        f"{up['reconciler']['events_per_second']:>8,} events/s  "
        f"({up['ratio']:.0%} of the bare rate, store: {up['store']})",
        "  memory, MiB resident, each in a process of its own (before the first request -> "
        "after the last page, peak, growth):",
        memory_line("bare page loop", up["bare"]["memory"], "events"),
        memory_line("reconciler", up["reconciler"]["memory"], "events"),
    ]
    if up["memory_peak_ratio"] is not None:
        lines.append(f"    reconciler / bare loop peak: {up['memory_peak_ratio']:.2f}x")
    lines += [
        f"Enrichment: {enrich['events']:,} events by {enrich['distinct_users_in_burst']:,} "
        f"users, {THREADS} threads",
        f"  {enrich['okta_calls']:,} Okta calls = {enrich['calls_per_event']} per event "
        f"(4 without the cache), {enrich['seconds']:.2f} s, "
        f"{enrich['events_per_second']:,} events/s",
        "  memory, MiB resident (before the burst -> after it, peak, growth):",
        memory_line("lookups", enrich["memory"], "events"),
    ]
    memory = enrich["memory"]
    if memory is not None:
        per_user = memory["growth_mib"] * 1024 / enrich["distinct_users_in_burst"]
        lines.append(f"    {per_user:.1f} KiB per distinct user looked up (the cache holds "
                     "one entry per user)")
    sleeps = up["reconciler"]["client_sleeps"] + enrich["client_sleeps"]
    if sleeps:
        lines.append(f"NOTE: the clients waited {sleeps} times for a rate limit (their manual "
                     "clock is no longer the simulator's)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 10 s)")
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
    print(render(result))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"okta-{stamp}{'-quick' if args.quick else ''}.json"
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"result: {output} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
