"""The delivery-gap roll-ups (factorflow.store.delivery_rollup) against the events themselves, on
SQLite and PostgreSQL: a history of hook deliveries, recovered events, confirmations, failed
deliveries and late hook copies over ten days in two orgs; the rolled-up figures must equal the
figures read from every event, before and after the reconciler and the hook change events
that were already rolled up; percentiles stay within a bucket of the exact nearest rank; a
second roller waits for the lease, a slow one that lost it stops, and a store that cannot be
written to still answers right."""

from __future__ import annotations

import logging
import math
import random
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from tests.ui.seed import enrollment, record

from factorflow.errors import StoreUnavailable
from factorflow.okta.payloads import format_utc
from factorflow.store import delivery_rollup
from factorflow.store.delivery_gap import PERCENTILES, OrgGap, delivery_gap
from factorflow.store.delivery_rollup import (
    BUCKETS_PER_DOUBLING,
    DAILY,
    HOURLY,
    SETTLE,
    Coverage,
    Segment,
    Tally,
    bucket_bounds,
    bucket_of,
    coverage,
    floor_hour,
    plan,
    refresh,
)
from factorflow.store.factory import open_store
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import DELIVERY_FAILURE_TYPE, SystemLogLedger

WIDTH = 2 ** (1 / BUCKETS_PER_DOUBLING)  # a bucket's upper bound over its lower bound
FILTER = 'eventType sw "user.mfa.factor"'


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlEventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'factorflow.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    yield opened
    opened.close()


@dataclass
class History:
    now: datetime
    hooked: dict[str, list[dict[str, Any]]]  # org -> events the hook brought first
    delays: dict[str, list[float]]  # org -> their delays, as stored
    recovered: list[dict[str, Any]]  # recovered from the System Log (org "default")
    late: list[dict[str, Any]]  # of those, the ones whose hook copy came later


def _at(clock: datetime) -> Any:
    return lambda: clock


@pytest.fixture
def history(store: SqlEventStore) -> History:
    """Ten days of events, every one stored before anything is rolled up."""
    now = datetime.now(UTC)
    rng = random.Random(20)
    hooked: dict[str, list[dict[str, Any]]] = {"default": [], "emea": []}
    delays: dict[str, list[float]] = {"default": [], "emea": []}
    start = now - timedelta(days=10)
    for n in range(160):
        received = start + timedelta(seconds=rng.uniform(0, 10 * 86_400 - 600))
        # Some delays repeat exactly, some share a bucket, a few are late or negative: within
        # a second (clocks a little apart) or a second and more early (a clock behind Okta's).
        delay = rng.choice([0.25, 1.5, 2.0, 2.0, 2.05, 3.0, 7.5, rng.uniform(0.1, 40),
                            rng.uniform(60, 4000), -0.4, -1.0, -75.0, rng.uniform(-30, -1)])
        published = received - timedelta(seconds=delay)
        org = rng.choice(["default", "default", "emea"])
        event = enrollment(n % 9, published=published)
        record(store, [event], received, org=org)
        hooked[org].append(event)
        delays[org].append(delivery_rollup.hook_delay(event["published"], format_utc(received))
                           or 0.0)
    # The reconciler, two days ago: confirms some hook events, recovers others.
    polled = now - timedelta(days=2, hours=3, minutes=17)
    recovered = [enrollment(20 + n, published=polled - timedelta(minutes=n + 1))
                 for n in range(12)]
    failure = enrollment(40, published=polled - timedelta(minutes=30))
    failure["eventType"] = DELIVERY_FAILURE_TYPE
    SystemLogLedger(store, clock=_at(polled)).record_page(
        "default", [*hooked["default"][:25], *recovered, failure], next_url=None,
        filter=FILTER)
    # The hook copies of some recovered events come an hour later.
    late = recovered[:5]
    record(store, late, polled + timedelta(hours=1))
    return History(now, hooked, delays, recovered, late)


def gaps(store: SqlEventStore, now: datetime, *, rolled: bool, days: float = 30,
         since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    found = delivery_gap(store, since=since or now - timedelta(days=days), until=until or now,
                         orgs=["default", "emea"], now=now, rolled=rolled)
    return {gap.org: gap.to_dict() for gap in found}


def tally_of(store: SqlEventStore, now: datetime, org: str, days: float = 30) -> Tally:
    return delivery_rollup.tallies(store, now - timedelta(days=days), now)[org]


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * p / 100), 1) - 1]


def check_against_events(store: SqlEventStore, now: datetime,
                         **window: Any) -> dict[str, Any]:
    rolled = gaps(store, now, rolled=True, **window)
    assert rolled == gaps(store, now, rolled=False, **window)
    return rolled


# -- the figures -------------------------------------------------------------------------------


def test_rolled_up_figures_equal_the_figures_of_every_event(
    store: SqlEventStore, history: History
) -> None:
    now = history.now
    figures = check_against_events(store, now)
    state = coverage(store)
    # Rolled up: from the first event's hour to the last hour that ended SETTLE ago.
    first = min(row[0] for row in store.read("SELECT received_at FROM events"))
    assert state.rolled_from == floor_hour(datetime.fromisoformat(first.replace("Z", "+00:00")))
    assert state.rolled_until == floor_hour(datetime.now(UTC) - SETTLE)
    assert state.lease_owner is None
    days = store.read("SELECT COUNT(DISTINCT period) FROM delivery_gap_periods WHERE span = ?",
                      (DAILY,))[0][0]
    assert days >= 8  # every whole day covered has its day row
    default, emea = figures["default"], figures["emea"]
    hooked = len(history.hooked["default"])
    assert (default["events"], default["by_hook"], default["recovered"]) == (
        hooked + 12, hooked + 5, 12)
    assert (default["recovered_never_hooked"], default["confirmed"],
            default["delivery_failures"]) == (7, 25 + 12, 1)
    assert (emea["events"], emea["by_hook"], emea["confirmed"]) == (
        len(history.hooked["emea"]), len(history.hooked["emea"]), 0)
    # Delays: the hook-first events' own, and the late copies' (one hour after the poll).
    late = [row[0] for row in store.read(
        "SELECT hook_delay_seconds FROM system_log_confirmations WHERE recovered = 1 "
        "AND hook_delay_seconds IS NOT NULL")]
    assert len(late) == 5 and all(3600 < d < 3600 + 360 for d in late)
    for org, extra in (("default", late), ("emea", [])):
        delays = history.delays[org] + extra
        assert figures[org]["delays"] == len(delays)
        assert figures[org]["max_delay_seconds"] == max(delays)
        for p in (1, 5, *PERCENTILES):  # p1 and p5 fall among the early ones
            exact = nearest_rank(delays, p)
            shown = tally_of(store, now, org).percentile(p)
            if p in PERCENTILES:
                assert figures[org]["delay_seconds"][f"p{p}"] == shown
            assert shown is not None
            # at most a bucket above: a bucket nearer zero for early delays
            bound = exact * WIDTH if exact > 0.001 else exact / WIDTH if exact < -0.001 else 0.001
            assert exact <= shown <= bound, (org, p)
            assert shown in delays  # always a delay that was measured
        # Early: stored a second or more before Okta published them (-1.0 s exactly counts).
        early = [d for d in delays if d <= -1.0]
        assert figures[org]["early_events"] == len(early) > 0, org
        behind = figures[org]["clock_behind_seconds"]
        assert -min(delays) / WIDTH <= behind <= -min(delays), org
        assert -behind in delays


def test_a_roll_up_that_was_days_behind_catches_up(
    store: SqlEventStore, history: History
) -> None:
    now = history.now
    assert refresh(store, back_to=now - timedelta(days=30), now=now - timedelta(days=3))
    behind = coverage(store)
    assert behind.rolled_until == floor_hour(now - timedelta(days=3) - SETTLE)
    check_against_events(store, now)  # catches up, a day of hours per transaction
    assert coverage(store).rolled_until == floor_hour(datetime.now(UTC) - SETTLE)
    assert coverage(store).rolled_from == behind.rolled_from


def test_windows_with_ragged_edges_and_short_windows(
    store: SqlEventStore, history: History
) -> None:
    now = history.now
    check_against_events(store, now)  # rolls everything up
    for since, until in (
        (now - timedelta(days=6, minutes=13), now - timedelta(days=1, hours=2, minutes=41)),
        (now - timedelta(hours=50, seconds=7), now),
        (now - timedelta(minutes=20), now),  # only what is not rolled up yet
        (now - timedelta(days=3, hours=2, minutes=5), now - timedelta(days=3, hours=2)),
        (now + timedelta(hours=1), now + timedelta(hours=2)),  # the future: nothing
    ):
        check_against_events(store, now, since=since, until=until)
    nothing = gaps(store, now, rolled=True, since=now + timedelta(hours=1),
                   until=now + timedelta(hours=2))
    assert nothing["default"]["events"] == 0 and nothing["default"]["delay_seconds"] == {}


def test_changes_to_rolled_up_hours_are_seen(store: SqlEventStore, history: History) -> None:
    now = history.now
    before = check_against_events(store, now)
    # Now, after the roll-up: the reconciler confirms old hook events of emea, the hook
    # brings two more late copies, and new events arrive.
    SystemLogLedger(store).record_page("emea", history.hooked["emea"][:9], next_url=None,
                                       filter=FILTER)
    record(store, history.recovered[5:7], datetime.now(UTC))
    fresh = [enrollment(50 + n) for n in range(3)]
    record(store, fresh, datetime.now(UTC))
    changed = delivery_rollup.changed_hours(store, coverage(store))
    assert changed  # the hours of the confirmed and the late-copied events
    after = check_against_events(store, now + timedelta(minutes=1),
                                 until=datetime.now(UTC) + timedelta(seconds=1))
    assert after["emea"]["confirmed"] == before["emea"]["confirmed"] + 9
    assert after["default"]["recovered_never_hooked"] == 7 - 2
    assert after["default"]["by_hook"] == before["default"]["by_hook"] + 2 + 3
    assert after["default"]["delays"] == before["default"]["delays"] + 2 + 3
    # Once the changes have settled, a roll-up writes them into the rows.
    later = datetime.now(UTC) + SETTLE + timedelta(hours=1)
    assert refresh(store, now=later)
    state = coverage(store)
    assert delivery_rollup.changed_hours(store, state) == set()
    assert state.rolled_until == floor_hour(later - SETTLE)
    check_against_events(store, datetime.now(UTC), until=datetime.now(UTC)
                         + timedelta(seconds=1))


def _top_seq(store: SqlEventStore) -> int:
    return int(store.read("SELECT MAX(seq) FROM events")[0][0])


def test_events_stored_into_hours_already_rolled_up_are_found_by_their_seq(
    store: SqlEventStore, history: History
) -> None:
    """A receiver whose clock is more than five minutes behind stamps its events into hours the
    roll-up has already covered: no time says they are new, their seq does."""
    now = history.now
    check_against_events(store, now)  # rolls up; the first mark is the highest seq
    state = coverage(store)
    first_mark = _top_seq(store)
    assert (state.seq_checked, state.seq_mark) == (None, first_mark)
    assert delivery_rollup.late_hours(store, state) == set()
    # Stamped three hours ago (a covered hour), stored now; and one in the unsettled hour.
    stamped = floor_hour(now) - timedelta(hours=3) + timedelta(minutes=17)
    record(store, [enrollment(60, published=stamped - timedelta(seconds=2))], stamped)
    record(store, [enrollment(61)], datetime.now(UTC))
    assert delivery_rollup.late_hours(store, coverage(store)) == {floor_hour(stamped)}
    # Read before any roll-up runs again: the late hour comes from the events themselves.
    window = (now - timedelta(days=30), datetime.now(UTC) + timedelta(seconds=1))
    before = {org: tally.counts() for org, tally in
              delivery_rollup.tallies(store, *window).items()}
    assert before == {org: tally.counts() for org, tally in
                      delivery_rollup.tallies(store, *window, rolled=False).items()}
    # The next roll-up writes it into the hour's rows; the hour is then settled again.
    assert refresh(store, now=now + timedelta(hours=1))
    state = coverage(store)
    assert delivery_rollup.late_hours(store, state) == set()
    # The check moved up to the first mark (an hour old by the roller's clock), the mark to
    # the highest seq.
    assert (state.seq_checked, state.seq_mark) == (first_mark, _top_seq(store))
    check_against_events(store, now + timedelta(hours=1),
                         until=datetime.now(UTC) + timedelta(seconds=1))


@pytest.mark.postgres
def test_an_event_whose_commit_came_after_the_mark_is_still_found(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL hands out seqs before commit: a transaction that took its seq before the
    roll-up's mark and commits after it is below the mark. The check stays at the previous
    mark, so the event is still a candidate."""
    import psycopg

    store = open_store(pg_url)
    try:
        now = datetime.now(UTC)
        for n in range(6):
            record(store, [enrollment(n)], now - timedelta(hours=6 - n))
        assert refresh(store, back_to=now - timedelta(days=1), now=now)
        first = coverage(store).seq_mark
        assert coverage(store).covers(floor_hour(now) - timedelta(hours=2))
        stamped = floor_hour(now) - timedelta(hours=2) + timedelta(minutes=5)
        held = psycopg.connect(pg_url)
        try:
            held.execute(
                "INSERT INTO events (uuid, event_type, published, published_at, received_at, "
                "org, provenance, content_hash, raw) VALUES (%s, %s, %s, %s, %s, 'default', "
                "'hook', '', '{}')",
                (str(uuidlib.uuid4()), "user.mfa.factor.activate", format_utc(stamped),
                 format_utc(stamped), format_utc(stamped)))  # not committed yet
            record(store, [enrollment(7)], datetime.now(UTC))  # a later seq, committed
            assert refresh(store, now=now + timedelta(hours=1))  # the mark passes the held one
            state = coverage(store)
            assert state.seq_checked == first and state.seq_mark == _top_seq(store)
            held.commit()
        finally:
            held.close()
        assert delivery_rollup.late_hours(store, coverage(store)) == {floor_hour(stamped)}
        assert refresh(store, now=now + timedelta(hours=2))
        assert delivery_rollup.late_hours(store, coverage(store)) == set()
        check_against_events(store, now + timedelta(hours=2),
                             until=datetime.now(UTC) + timedelta(seconds=1))
    finally:
        store.close()


# -- one roller at a time --------------------------------------------------------------------


def _lease(store: SqlEventStore, owner: str | None, until: datetime | None) -> None:
    with store.write() as cur:
        cur.execute("UPDATE delivery_gap_rollup SET lease_owner = ?, lease_until = ? "
                    "WHERE id = 1", (owner, format_utc(until) if until else None))


def test_a_held_lease_is_waited_for_and_an_expired_one_taken(
    store: SqlEventStore, history: History
) -> None:
    now = history.now
    _lease(store, "another-host:1:abcd", datetime.now(UTC) + timedelta(minutes=1))
    assert refresh(store, back_to=now - timedelta(days=30)) is False
    assert coverage(store).empty
    check_against_events(store, now)  # read from the events meanwhile
    assert coverage(store).lease_owner == "another-host:1:abcd"
    _lease(store, "another-host:1:abcd", datetime.now(UTC) - timedelta(seconds=1))
    assert refresh(store, back_to=now - timedelta(days=30)) is True
    state = coverage(store)
    assert not state.empty and state.lease_owner is None


def test_a_roller_that_lost_its_lease_stops(
    store: SqlEventStore, history: History, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = history.now
    real = delivery_rollup._by_hour
    calls = []

    def slow(rows: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # while it works back over the days, another takes over
            _lease(store, "thief:2:beef", datetime.now(UTC) + timedelta(minutes=5))
        return real(rows)

    monkeypatch.setattr(delivery_rollup, "_by_hour", slow)
    with caplog.at_level(logging.INFO, logger="factorflow.store.delivery_rollup"):
        assert refresh(store, back_to=now - timedelta(days=30)) is False
    assert any(r.message == "delivery_gap.rollup_taken_over" for r in caplog.records)
    state = coverage(store)
    assert state.lease_owner == "thief:2:beef"  # not released by the loser
    assert state.rolled_from is not None and state.rolled_from > now - timedelta(days=9)
    monkeypatch.setattr(delivery_rollup, "_by_hour", real)
    _lease(store, None, None)
    check_against_events(store, now)


class ReadOnly:
    """The store for a database user that may only read."""

    def __init__(self, store: SqlEventStore) -> None:
        self.store = store
        self.dialect = store.dialect

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.store.read(sql, params)

    def write(self) -> Any:
        raise StoreUnavailable("sqlite write failed: OperationalError")


def test_a_store_that_cannot_be_written_still_answers_right(
    store: SqlEventStore, history: History, caplog: pytest.LogCaptureFixture
) -> None:
    now = history.now
    reference = gaps(store, now, rolled=False)
    with caplog.at_level(logging.WARNING, logger="factorflow.store.delivery_gap"):
        found = delivery_gap(
            ReadOnly(store), since=now - timedelta(days=30),  # type: ignore[arg-type]
            until=now, orgs=["default", "emea"], now=now)
    assert {gap.org: gap.to_dict() for gap in found} == reference
    assert [r.message for r in caplog.records] == ["delivery_gap.rollup_failed"]
    assert coverage(store).empty


# -- pieces ----------------------------------------------------------------------------------


def test_percentiles_by_bucket() -> None:
    tally = Tally()
    for delay in (1.0, 2.0, 3.0, 4.0):
        tally.add_delay(delay)
    assert [tally.percentile(p) for p in (50, 90, 99)] == [2.0, 4.0, 4.0]
    tally.add_delay(2.01)  # shares 2.0's bucket: the bucket answers with its largest
    assert bucket_of(2.0) == bucket_of(2.01) != bucket_of(2.1)
    assert tally.percentile(50) == 2.01 and tally.delays == 5 and tally.max_delay == 4.0
    assert Tally().percentile(50) is None and Tally().max_delay is None
    assert bucket_of(-0.0009) == bucket_of(0.0) == bucket_of(0.0009) < bucket_of(0.002)
    # Negative delays (received before published) have buckets of their own, mirrored below
    # the lowest: the earlier, the lower.
    assert bucket_of(-75.0) < bucket_of(-3.0) < bucket_of(-1.0) < bucket_of(-0.9) \
        < bucket_of(-0.002) < bucket_of(0.0)
    assert bucket_of(-2.0) == bucket_of(-2.01) != bucket_of(-2.1)
    for delay in (-75.0, -3.0, -2.0, -1.0, -0.9, -0.002, 0.0, 0.002, 1.0, 2.0, 75.0):
        low, high = bucket_bounds(bucket_of(delay))
        assert low <= delay <= high and low < high, delay


def test_early_delays_are_counted_and_bound_the_clock() -> None:
    tally = Tally()
    for delay in (5.0, 2.0, 0.3, -0.5, -0.999):  # none a second early
        tally.add_delay(delay)
    assert tally.early() == (0, None)
    for delay in (-1.0, -3.0, -62.0, -63.0):
        tally.add_delay(delay)
    count, behind = tally.early()
    assert count == 4
    assert behind is not None and 62.0 / WIDTH <= behind <= 63.0  # within a bucket, never over
    assert tally.percentile(1) == -62.0  # the earliest bucket answers with its largest
    # ranks: -63 -62 -3 -1 -0.999 -0.5 0.3 2 5
    assert tally.percentile(50) == -0.999 and tally.percentile(60) == -0.5
    assert tally.percentile(90) == tally.max_delay == 5.0
    # Each bucket is one sixteenth of a doubling wide.
    assert bucket_of(1.0) == 0 and bucket_of(2.0) == BUCKETS_PER_DOUBLING
    assert bucket_of(WIDTH * 1.0001) == 1


def test_plan_reads_whole_days_whole_hours_and_the_rest_from_events() -> None:
    day = datetime(2026, 3, 10, tzinfo=UTC)
    state = Coverage(day - timedelta(days=5), day + timedelta(hours=15), "x")
    start = day - timedelta(days=2, hours=3, minutes=10)
    end = day + timedelta(hours=16, minutes=30)
    changed = {day - timedelta(hours=20)}
    segments = plan(start, end, state, changed)
    assert segments == [
        Segment("raw", start, day - timedelta(days=2, hours=3)),
        Segment(HOURLY, day - timedelta(days=2, hours=3), day - timedelta(days=2)),
        Segment(DAILY, day - timedelta(days=2), day - timedelta(days=1)),
        # the day with a changed hour: its other hours from hour rows
        Segment(HOURLY, day - timedelta(days=1), day - timedelta(hours=20)),
        Segment("raw", day - timedelta(hours=20), day - timedelta(hours=19)),
        Segment(HOURLY, day - timedelta(hours=19), day + timedelta(hours=15)),
        Segment("raw", day + timedelta(hours=15), end),
    ]
    # The segments tile the window exactly.
    assert all(a.end == b.start for a, b in pairwise(segments))
    whole = plan(day - timedelta(days=4), day, state, set())
    assert whole == [Segment(DAILY, day - timedelta(days=4), day)]
    assert plan(start, end, Coverage(None, None, None), set()) == [Segment("raw", start, end)]
    assert plan(end, start, state, set()) == []


def test_org_gap_keeps_its_shape() -> None:
    gap = OrgGap("x")
    assert gap.to_dict()["delay_seconds"] == {} and gap.hook_share is None
    assert (gap.to_dict()["early_events"], gap.to_dict()["clock_behind_seconds"]) == (0, None)
