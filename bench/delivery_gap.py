"""Delivery-gap benchmark: the dashboard's delivery page figures at a million stored events, read
from the hourly and daily roll-ups, against the query they replaced, in the same run.

A fresh store (SQLite by default, or ``--store-url``) is filled with ``--events`` hook events
spread evenly over ``--days`` days (the bundled sample event as raw JSON, a fact per event with
its delay, the System Log's confirmation of most of them, and 1 % recovered from the System Log,
half of those with a late hook copy). Then, for each period (1, 7, 30, 90, 365 days, as the
page offers):

* ``before``: the two queries the figures used to come from (every event of the period joined
  with its confirmation, then every delay of the period ranked with window functions);
* ``after``: ``factorflow.store.delivery_gap.delivery_gap`` as the page calls it, roll-ups up
  to date (the one-time roll-up of the whole store is measured and printed apart).

Then the 30-day read once more with the late-event check (events stored into hours already
rolled up, found by their seq) not moved for a day, so that every event of the last day is
looked at again, against the same read with the check up to date.

Each is run ``--repeat`` times (median). Checks (a failed one aborts the run): both give the
same counts for every period, and each percentile of ``after`` is within one bucket
(2 ** (1/16)) above ``before``'s exact one.

    python bench/delivery_gap.py                   # 1,000,000 events, about ten minutes
    python bench/delivery_gap.py --events 100000   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from factorflow.okta.payloads import format_utc
from factorflow.store.delivery_gap import PERCENTILES, delivery_gap
from factorflow.store.delivery_rollup import refresh
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore

PERIODS = (1, 7, 30, 90, 365)
LATE_CHECK_PERIOD = 30  # the period read again with a stale late-event check
ROWS = 500  # rows per INSERT
SAMPLE = orjson.loads(resources.files("factorflow").joinpath(
    "examples/delivery-mfa-activate.json").read_bytes())["data"]["events"][0]


def fill(store: SqlEventStore, events: int, days: int, now: datetime) -> None:
    start = now - timedelta(days=days)
    step = days * 86_400 / events
    raw = orjson.dumps(SAMPLE).decode()
    fact = orjson.dumps({"sample": SAMPLE["outcome"], "padding": "x" * 1200}).decode()
    done = 0
    while done < events:
        chunk = range(done, min(done + ROWS * 20, events))
        event_rows, fact_rows, confirmations = [], [], []
        for n in chunk:
            uuid = str(uuidlib.UUID(int=n + 1))
            received = start + timedelta(seconds=n * step)
            delay = 0.2 + (n * 7919 % 4000) / 100 + (600 if n % 97 == 0 else 0)
            published = format_utc(received - timedelta(seconds=delay))
            recovered = n % 100 == 42
            late_copy = recovered and n % 200 == 42
            provenance = "both" if late_copy else "log" if recovered else "hook"
            event_rows.append((uuid, "user.mfa.factor.activate", published, published,
                               format_utc(received), "default", provenance, raw))
            fact_rows.append((uuid, "default", "enrollment", "okta_verify_push", "device_bound",
                              "self", published, format_utc(received), round(delay, 3), fact,
                              format_utc(received)))
            if recovered or n % 10 < 6:
                confirmations.append((uuid, "default", format_utc(received + timedelta(
                    minutes=3)), 1 if recovered else 0,
                    format_utc(received + timedelta(minutes=30)) if late_copy else None,
                    round(delay + 1800, 3) if late_copy else None))
        with store.write() as cur:
            _insert(cur, "events (uuid, event_type, published, published_at, received_at, org, "
                    "provenance, content_hash, raw)", "(?, ?, ?, ?, ?, ?, ?, '', ?)", event_rows)
            _insert(cur, "facts (uuid, org, kind, factor_type, strength, enrolled_by, "
                    "published_at, received_at, delay_seconds, status, fact, updated_at)",
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, 'done', ?, ?)", fact_rows)
            _insert(cur, "system_log_confirmations (event_uuid, org, confirmed_at, recovered, "
                    "hook_received_at, hook_delay_seconds)", "(?, ?, ?, ?, ?, ?)",
                    confirmations)
        done = chunk.stop
        print(f"\r  filled {done:,} / {events:,} events", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _insert(cur: Any, target: str, marks: str, rows: list[tuple[Any, ...]]) -> None:
    for at in range(0, len(rows), ROWS):
        chunk = rows[at:at + ROWS]
        cur.execute(f"INSERT INTO {target} VALUES " + ", ".join([marks] * len(chunk)),  # noqa: S608
                    tuple(value for row in chunk for value in row))


def before(store: SqlEventStore, since: datetime, until: datetime) -> dict[str, Any]:
    """The figures as the previous release computed them (its two queries, verbatim)."""
    span = (format_utc(since), format_utc(until))
    ((_org, events, by_hook, recovered, never, confirmed),) = store.read(
        "SELECT e.org, COUNT(*), "
        "SUM(CASE WHEN e.provenance IN ('hook', 'both') THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN c.recovered = 1 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN e.provenance = 'log' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN c.event_uuid IS NOT NULL THEN 1 ELSE 0 END) "
        "FROM events e LEFT JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND e.event_type <> ? GROUP BY e.org",
        (*span, "event_hook.delivery"),
    )
    picks = ", ".join(f"MIN(CASE WHEN rn * 100 >= n * {p} THEN delay END)" for p in PERCENTILES)
    ((_org, count, *values),) = store.read(
        f"SELECT org, MAX(n), {picks}, MAX(delay) FROM ("  # noqa: S608
        "SELECT org, delay, ROW_NUMBER() OVER (PARTITION BY org ORDER BY delay) AS rn, "
        "COUNT(*) OVER (PARTITION BY org) AS n FROM ("
        "SELECT e.org AS org, f.delay_seconds AS delay FROM events e "
        "JOIN facts f ON f.uuid = e.uuid "
        "LEFT JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND e.provenance IN ('hook', 'both') "
        "AND (c.recovered IS NULL OR c.recovered = 0) AND f.delay_seconds IS NOT NULL "
        "UNION ALL "
        "SELECT e.org AS org, c.hook_delay_seconds AS delay FROM events e "
        "JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
        "WHERE e.received_at >= ? AND e.received_at < ? AND c.recovered = 1 "
        "AND c.hook_delay_seconds IS NOT NULL"
        ") AS delays) AS ranked GROUP BY org",
        (*span, *span),
    )
    return {"counts": (events, by_hook, recovered, never, confirmed), "delays": count,
            "percentiles": {p: float(v) for p, v in zip(PERCENTILES, values[:-1], strict=True)},
            "max": float(values[-1])}


def after(store: SqlEventStore, since: datetime, until: datetime) -> dict[str, Any]:
    (gap,) = delivery_gap(store, since=since, until=until, orgs=["default"])
    return {"counts": (gap.events, gap.by_hook, gap.recovered, gap.recovered_never_hooked,
                       gap.confirmed), "delays": gap.delays,
            "percentiles": dict(gap.delay_percentiles), "max": gap.max_delay}


def timed(call: Callable[[], dict[str, Any]], repeat: int) -> tuple[float, dict[str, Any]]:
    times, result = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def check(period: int, old: dict[str, Any], new: dict[str, Any]) -> None:
    problems = []
    if tuple(old["counts"]) != tuple(new["counts"]) or old["delays"] != new["delays"]:
        problems.append(f"counts differ: {old['counts']} {old['delays']} vs "
                        f"{new['counts']} {new['delays']}")
    for p in PERCENTILES:
        exact, shown = old["percentiles"][p], new["percentiles"][p]
        if not exact <= shown <= exact * 2 ** (1 / 16) + 1e-9:
            problems.append(f"p{p}: {shown} is not within a bucket of {exact}")
    if abs(old["max"] - new["max"]) > 1e-6:
        problems.append(f"max: {new['max']} != {old['max']}")
    if problems:
        raise SystemExit(f"CHECK FAILED for {period} days: " + "; ".join(problems))


def _stale_check(store: SqlEventStore, now: datetime, repeat: int,
                 fresh: dict[str, Any]) -> tuple[float, int]:
    """The LATE_CHECK_PERIOD read when the late-event check has not moved for a day: every event
    of the last day is above ``seq_checked`` (its hours each cost a count). Same figures."""
    low = store.read("SELECT MIN(seq), COUNT(*) FROM events WHERE received_at >= ?",
                     (format_utc(now - timedelta(days=1)),))[0]
    with store.write() as cur:
        cur.execute("UPDATE delivery_gap_rollup SET seq_checked = ?, seq_mark = ?, "
                    "seq_mark_at = ? WHERE id = 1",
                    (int(low[0]) - 1, int(low[0]) - 1, format_utc(datetime.now(UTC))))
    since = datetime.combine((now - timedelta(days=LATE_CHECK_PERIOD - 1)).date(),
                             datetime.min.time(), UTC)
    took, result = timed(lambda: after(store, since, datetime.now(UTC)), repeat)
    if result != fresh:
        raise SystemExit(f"CHECK FAILED: a stale late-event check changed the figures: "
                         f"{result} != {fresh}")
    return took, int(low[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365, help="spread the events over")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store-url", default=None,
                        help="an empty database (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ff-bench-gap-") as workdir:
        url = args.store_url or f"sqlite:///{Path(workdir) / 'factorflow.db'}"
        store = open_store(url)
        try:
            now = datetime.now(UTC)
            print(f"filling {url.partition(':')[0]} with {args.events:,} events over "
                  f"{args.days} days", file=sys.stderr)
            fill(store, args.events, args.days, now)
            started = time.perf_counter()
            refresh(store, back_to=now - timedelta(days=max(PERIODS)))
            first = time.perf_counter() - started
            print(f"\none-time roll-up of the whole store: {first:.1f} s\n")
            print(f"{'period':>8} {'events':>9}  {'before':>9} {'after':>9} {'ratio':>8}")
            for period in PERIODS:
                since = datetime.combine((now - timedelta(days=period - 1)).date(),
                                         datetime.min.time(), UTC)
                until = datetime.now(UTC)
                old_s, old = timed(functools.partial(before, store, since, until), args.repeat)
                new_s, new = timed(functools.partial(after, store, since, until), args.repeat)
                check(period, old, new)
                print(f"{period:>6} d {old['counts'][0]:>9,}  {old_s * 1000:>7.1f}ms "
                      f"{new_s * 1000:>7.1f}ms {old_s / new_s:>7.1f}x")
                if period == LATE_CHECK_PERIOD:
                    fresh_s, fresh = new_s, new
            stale_s, count = _stale_check(store, now, args.repeat, fresh)
            print(f"\n{LATE_CHECK_PERIOD}-day read with the last day's {count:,} events to check "
                  f"again for late ones (no reader for a day): {stale_s * 1000:.1f}ms against "
                  f"{fresh_s * 1000:.1f}ms ({stale_s / fresh_s:.1f}x)")
        finally:
            store.close()
    print("\nchecks: counts equal, percentiles within one bucket of the exact ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
