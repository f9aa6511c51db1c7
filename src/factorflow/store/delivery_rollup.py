"""The delivery-gap figures rolled up per org and hour and per org and UTC day, so that a period's
figures are read from a few small rows instead of every event stored in it.

**What an event counts for.** Each stored event adds to its org's figures of the hour it was
received in (``events.received_at``): ``events``, ``by_hook`` (provenance ``hook`` or ``both``),
``recovered`` (its System Log copy came first), ``never_hooked`` (provenance ``log``),
``confirmed`` (a ``system_log_confirmations`` row); an ``event_hook.delivery`` event counts
only as a ``failure``. Its hook delay is ``received_at - published_at`` (rounded to the
millisecond, as the fact's ``delay_seconds``) when the hook brought it first, or
``hook_delay_seconds`` of its confirmation when a hook copy followed a recovered one.

**Delays as a histogram.** Bucket ``b`` holds the delays ``d`` with ``floor(16 * log2(d)) = b``
(each bucket about 4.4 % wide; everything within 2**-10 s of zero, about 1 ms, shares the lowest
bucket), with their number and the largest. Negative delays (an event stored before Okta
published it: this host's clock is behind Okta's) have buckets of their own below the lowest,
mirrored (``NEGATIVE_BASE - floor(16 * log2(-d))``), so that a skewed clock shows in the
percentiles and in :meth:`Tally.early` instead of hiding among the 1-ms delays. A percentile is
found by rank (nearest rank, as before) among the buckets and answered with the largest delay of
its bucket: never below the exact nearest-rank value and at most one bucket (4.4 %) above it;
exact when the bucket holds one distinct value. (Hours rolled up before negative buckets
existed keep their negative delays in the lowest bucket.)

**What is rolled up.** ``delivery_gap_rollup`` says which hours the rows cover,
``[rolled_from, rolled_until)``, and ``changes_seen``: every change stamped before it (an event
received, a confirmation's ``confirmed_at``, a late hook copy's ``hook_received_at``) is in the
rows. A roll-up (:func:`refresh`) extends the covered hours up to the last full hour that ended
at least :data:`SETTLE` ago (a change is committed within that time of its stamp), recomputes
the covered hours that confirmations or late hook copies changed since ``changes_seen``, and
on request extends the coverage back over older hours; a day of hours per transaction, so a
first roll-up of a large store never holds the write lock for long. Day rows are the sums of their
24 hour rows, kept for days wholly covered. One process rolls up at a time (a lease in the
state row, renewed by every write and checked by it); others go on reading.

**Late events.** An event can be stored into an hour after it was rolled up: stamped by a
receiver whose clock is more than :data:`SETTLE` behind, or committed that late. No time
tells, so the events table's own sequence does: :func:`late_hours` looks at the events stored
above ``seq_checked`` and recomputes the covered hours among theirs whose event count differs
from their rows'. Each roll-up that runs at least :data:`SETTLE` after the last takes a mark
(the highest seq, read before anything else) and moves the check up to the previous mark, so
a PostgreSQL transaction that took its seq before a mark and commits within :data:`SETTLE` is
still seen (one in flight at the very first mark is not).

**Reading** (:func:`tallies`) never depends on a roll-up having run: hours outside the
coverage, the partial hours at a window's edges and covered hours changed since
``changes_seen`` or found late are computed from the events themselves; the rest comes from
day rows where a whole unchanged day lies in the window, else from hour rows.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from factorflow.okta.payloads import EARLY_SECONDS, format_utc, seconds_between
from factorflow.store.log_copies import BOTH, DELIVERY_FAILURE_TYPE, HOOK, LOG

if TYPE_CHECKING:
    from factorflow.store.sql import Cursor, SqlEventStore

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SETTLE = timedelta(minutes=5)  # an event or a change is committed within this of its stamp
LEASE = timedelta(minutes=2)  # renewed by every write of the roll-up
BUCKETS_PER_DOUBLING = 16
SMALLEST = 2.0 ** -10  # delays up to this (about 1 ms) share the lowest bucket
LOWEST_BUCKET = -10 * BUCKETS_PER_DOUBLING - 1
# Negative delays of magnitude m > SMALLEST: bucket NEGATIVE_BASE - floor(16 * log2(m)), from
# LOWEST_BUCKET - 1 (just over 1 ms early) downwards (the earliest lowest).
NEGATIVE_BASE = 2 * LOWEST_BUCKET
# Delays of -EARLY_SECONDS (1 s, a bucket boundary: exact) or less: this bucket and those below.
EARLY_BUCKET = NEGATIVE_BASE - math.floor(math.log2(EARLY_SECONDS) * BUCKETS_PER_DOUBLING)
ROWS_PER_STATEMENT = 200
COUNTS = ("events", "by_hook", "recovered", "never_hooked", "confirmed", "failures")
HOURLY, DAILY = "h", "d"

_EVENTS = (
    "SELECT e.org, e.received_at, e.event_type, e.provenance, e.published_at, c.recovered, "
    "CASE WHEN c.event_uuid IS NULL THEN 0 ELSE 1 END, c.hook_delay_seconds "
    "FROM events e LEFT JOIN system_log_confirmations c ON c.event_uuid = e.uuid "
    "WHERE e.received_at >= ? AND e.received_at < ?"
)
_STATE = ("SELECT rolled_from, rolled_until, changes_seen, lease_owner, lease_until, "
          "seq_checked, seq_mark, seq_mark_at FROM delivery_gap_rollup WHERE id = 1")
# The hours of covered events stored after the seq last checked: candidates for events stored
# into an hour after it was rolled up. The received_at terms are written so that no index on
# it is used: the seq range (the primary key, the newest events) is the narrow one.
_LATE_CANDIDATES = (
    "SELECT DISTINCT substr(received_at, 1, 13) FROM events "
    "WHERE seq > ? AND (received_at || '') >= ? AND (received_at || '') < ?"
)
_HOUR_COUNT = "SELECT COUNT(*) FROM events WHERE received_at >= ? AND received_at < ?"
_ROLLED_COUNT = ("SELECT COALESCE(SUM(events + failures), 0) FROM delivery_gap_periods "
                 "WHERE span = ? AND period = ?")
# Events whose figures changed after they were stored: a hook event the System Log confirmed,
# a recovered event whose hook copy came later.
_CONFIRMED_SINCE = (
    "SELECT c.confirmed_at, e.received_at FROM system_log_confirmations c "
    "JOIN events e ON e.uuid = c.event_uuid WHERE c.confirmed_at >= ? AND c.recovered = 0"
)
_HOOKED_SINCE = (
    "SELECT c.hook_received_at, e.received_at FROM system_log_confirmations c "
    "JOIN events e ON e.uuid = c.event_uuid WHERE c.hook_received_at >= ?"
)


class LostLease(Exception):
    """Another process took over the roll-up (this one was too slow)."""


# -- figures ---------------------------------------------------------------------------------


def bucket_of(delay: float) -> int:
    if delay < -SMALLEST:
        return NEGATIVE_BASE - math.floor(math.log2(-delay) * BUCKETS_PER_DOUBLING)
    if delay <= SMALLEST:
        return LOWEST_BUCKET
    return math.floor(math.log2(delay) * BUCKETS_PER_DOUBLING)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """(lower, upper) bound of a bucket's delays, float rounding at the edges aside: a positive
    bucket holds [lower, upper), a negative one (lower, upper], the lowest [lower, upper]."""
    if bucket < LOWEST_BUCKET:
        exponent = NEGATIVE_BASE - bucket  # floor(16 * log2(-delay))
        return (-(2.0 ** ((exponent + 1) / BUCKETS_PER_DOUBLING)),
                -(2.0 ** (exponent / BUCKETS_PER_DOUBLING)))
    if bucket == LOWEST_BUCKET:
        return -SMALLEST, SMALLEST
    return 2.0 ** (bucket / BUCKETS_PER_DOUBLING), 2.0 ** ((bucket + 1) / BUCKETS_PER_DOUBLING)


@dataclass
class Tally:
    """One org's figures over some span: counts, and the delays as a histogram
    (bucket -> (how many, the largest))."""

    events: int = 0
    by_hook: int = 0
    recovered: int = 0
    never_hooked: int = 0
    confirmed: int = 0
    failures: int = 0
    buckets: dict[int, tuple[int, float]] = field(default_factory=dict)

    def counts(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in COUNTS)

    def add_counts(self, counts: Sequence[Any]) -> None:
        for name, value in zip(COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + int(value or 0))

    def add_delays(self, bucket: int, count: int, largest: float) -> None:
        held = self.buckets.get(bucket)
        if held is None:
            self.buckets[bucket] = (count, largest)
        else:
            self.buckets[bucket] = (held[0] + count, max(held[1], largest))

    def add_delay(self, delay: float) -> None:
        self.add_delays(bucket_of(delay), 1, delay)

    def merge(self, other: Tally) -> None:
        self.add_counts(other.counts())
        for bucket, (count, largest) in other.buckets.items():
            self.add_delays(bucket, count, largest)

    @property
    def delays(self) -> int:
        return sum(count for count, _ in self.buckets.values())

    @property
    def max_delay(self) -> float | None:
        return max((largest for _, largest in self.buckets.values()), default=None)

    def early(self) -> tuple[int, float | None]:
        """Events stored at least :data:`EARLY_SECONDS` before Okta published them (a negative
        delay: this host's clock is behind Okta's), and how far behind that makes the clock at
        least: the largest delay of the earliest bucket, as a positive number of seconds
        (within one bucket, 4.4 %, of the earliest delay). (0, None) when there are none."""
        early = [(bucket, count, largest) for bucket, (count, largest) in self.buckets.items()
                 if bucket <= EARLY_BUCKET]
        if not early:
            return 0, None
        earliest = min(early)
        return sum(count for _, count, _ in early), -earliest[2]

    def percentile(self, p: int) -> float | None:
        """Nearest rank: the delay of rank ceil(n * p / 100) (at least 1), answered with the
        largest delay of the bucket that rank falls in."""
        total = self.delays
        if total == 0:
            return None
        rank = max(-(-total * p // 100), 1)
        seen = 0
        for bucket in sorted(self.buckets):
            count, largest = self.buckets[bucket]
            seen += count
            if seen >= rank:
                return largest
        return None  # pragma: no cover - the ranks add up to total


def hook_delay(published_at: str | None, received_at: str | None) -> float | None:
    """Seconds from published to received, to the millisecond (as a fact's delay_seconds)."""
    return seconds_between(published_at, received_at, digits=3)


def _add_event(tally: Tally, row: Sequence[Any]) -> None:
    _org, received_at, event_type, provenance, published_at, recovered, confirmed, later = row
    if event_type == DELIVERY_FAILURE_TYPE:
        tally.failures += 1
        return
    hooked = provenance in (HOOK, BOTH)
    was_recovered = recovered == 1
    tally.events += 1
    tally.by_hook += hooked
    tally.recovered += was_recovered
    tally.never_hooked += provenance == LOG
    tally.confirmed += int(confirmed or 0)
    if was_recovered:
        delay = float(later) if later is not None else None
    else:
        delay = hook_delay(published_at, received_at) if hooked else None
    if delay is not None:
        tally.add_delay(delay)


def _event_rows(store: SqlEventStore, start: datetime, end: datetime) -> list[Any]:
    return store.read(_EVENTS, (format_utc(start), format_utc(end)))


def _by_org(rows: Iterable[Sequence[Any]]) -> dict[str, Tally]:
    found: dict[str, Tally] = {}
    for row in rows:
        _add_event(found.setdefault(str(row[0]), Tally()), row)
    return found


def _by_hour(rows: Iterable[Sequence[Any]]) -> dict[datetime, dict[str, Tally]]:
    found: dict[datetime, dict[str, Tally]] = {}
    for row in rows:
        hour = _parse(str(row[1])).replace(minute=0, second=0, microsecond=0)
        _add_event(found.setdefault(hour, {}).setdefault(str(row[0]), Tally()), row)
    return found


# -- time ------------------------------------------------------------------------------------


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def floor_day(moment: datetime) -> datetime:
    return floor_hour(moment).replace(hour=0)


def ceil_day(moment: datetime) -> datetime:
    floor = floor_day(moment)
    return floor if floor == moment else floor + DAY


def hour_key(hour: datetime) -> str:
    return format_utc(hour)[:13]


def day_key(day: datetime) -> str:
    return format_utc(day)[:10]


def _hours(start: datetime, end: datetime) -> Iterator[datetime]:
    hour = start
    while hour < end:
        yield hour
        hour += HOUR


def _runs(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours as [start, end) runs of consecutive hours."""
    runs: list[tuple[datetime, datetime]] = []
    for hour in sorted(set(hours)):
        if runs and runs[-1][1] == hour:
            runs[-1] = (runs[-1][0], hour + HOUR)
        else:
            runs.append((hour, hour + HOUR))
    return runs


# -- the state of the roll-up ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coverage:
    rolled_from: datetime | None
    rolled_until: datetime | None
    changes_seen: str | None
    lease_owner: str | None = None
    lease_until: str | None = None
    # Late events (see late_hours): stored events above seq_checked are looked at again;
    # seq_mark is the highest seq when the roller last took a mark, at seq_mark_at.
    seq_checked: int | None = None
    seq_mark: int | None = None
    seq_mark_at: str | None = None

    @property
    def empty(self) -> bool:
        return (self.rolled_from is None or self.rolled_until is None
                or self.rolled_from >= self.rolled_until)

    def covers(self, hour: datetime) -> bool:
        return (self.rolled_from is not None and self.rolled_until is not None
                and self.rolled_from <= hour < self.rolled_until)


def coverage(store: SqlEventStore) -> Coverage:
    rows = store.read(_STATE)
    if not rows:
        return Coverage(None, None, None)
    rolled_from, rolled_until, seen, owner, until, checked, mark, mark_at = rows[0]
    return Coverage(_parse(rolled_from) if rolled_from else None,
                    _parse(rolled_until) if rolled_until else None, seen, owner, until,
                    int(checked) if checked is not None else None,
                    int(mark) if mark is not None else None, mark_at)


def changed_hours(store: SqlEventStore, state: Coverage,
                  until: datetime | None = None) -> set[datetime]:
    """Covered hours whose events changed at or after ``changes_seen`` (and before ``until``,
    if given), and those that gained events after they were rolled up (:func:`late_hours`)."""
    if state.empty or state.changes_seen is None:
        return set()
    bound = format_utc(until) if until is not None else None
    hours = set()
    for query in (_CONFIRMED_SINCE, _HOOKED_SINCE):
        for stamp, received_at in store.read(query, (state.changes_seen,)):
            if received_at and (bound is None or str(stamp) < bound):
                hours.add(floor_hour(_parse(str(received_at))))
    return {hour for hour in hours if state.covers(hour)} | late_hours(store, state)


def late_hours(store: SqlEventStore, state: Coverage) -> set[datetime]:
    """Covered hours whose stored events no longer match their rolled-up rows: an event stored
    into the hour after it was rolled up, because the clock that stamped it was more than
    :data:`SETTLE` behind the roller's or its commit came that late.

    Found without trusting any clock: the hours of the events stored above ``seq_checked``
    (the events table's own sequence; ``seq_mark`` until a first check is set) are the
    candidates, and a candidate is late when its count of events differs from the count its
    rows were made from. A candidate whose events were all rolled up (the usual case: events of
    the last hour rolled) costs one count."""
    checked = state.seq_checked if state.seq_checked is not None else state.seq_mark
    if state.empty or checked is None:
        return set()
    assert state.rolled_from is not None and state.rolled_until is not None
    late = set()
    for (key,) in store.read(_LATE_CANDIDATES, (checked, format_utc(state.rolled_from),
                                                format_utc(state.rolled_until))):
        hour = _parse(f"{key}:00:00Z")
        stored = store.read(_HOUR_COUNT, (format_utc(hour), format_utc(hour + HOUR)))[0][0]
        rolled = store.read(_ROLLED_COUNT, (HOURLY, hour_key(hour)))[0][0]
        if int(stored) != int(rolled):
            late.add(hour)
    return late


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str  # "raw" (from the events), HOURLY or DAILY (from the rolled-up rows)
    start: datetime
    end: datetime


def plan(start: datetime, end: datetime, state: Coverage,
         changed: set[datetime]) -> list[Segment]:
    """Where each part of [start, end) is read from."""
    if end <= start:
        return []
    if state.empty or state.rolled_from is None or state.rolled_until is None:
        return [Segment("raw", start, end)]
    low, high = max(start, state.rolled_from), min(end, state.rolled_until)
    if low >= high:
        return [Segment("raw", start, end)]
    segments: list[Segment] = []
    if start < low:
        segments.append(Segment("raw", start, low))
    first, last = ceil_hour(low), floor_hour(high)
    if first >= last:  # no whole hour
        segments.append(Segment("raw", low, high))
    else:
        if low < first:
            segments.append(Segment("raw", low, first))
        segments.extend(_whole_hours(first, last, changed))
        if last < high:
            segments.append(Segment("raw", last, high))
    if high < end:
        segments.append(Segment("raw", high, end))
    return _coalesce(sorted(segments, key=lambda s: s.start))


def _whole_hours(first: datetime, last: datetime, changed: set[datetime]) -> list[Segment]:
    """[first, last) in whole hours: unchanged whole days from day rows, changed hours from the
    events, the other hours from hour rows."""
    changed_days = {floor_day(hour) for hour in changed}
    segments: list[Segment] = []

    def hourly(a: datetime, b: datetime) -> None:
        for hour in _hours(a, b):
            kind = "raw" if hour in changed else HOURLY
            segments.append(Segment(kind, hour, hour + HOUR))

    day_first, day_last = ceil_day(first), floor_day(last)
    if day_first >= day_last:
        hourly(first, last)
        return segments
    hourly(first, day_first)
    day = day_first
    while day < day_last:
        if day in changed_days:
            hourly(day, day + DAY)
        else:
            segments.append(Segment(DAILY, day, day + DAY))
        day += DAY
    hourly(day_last, last)
    return segments


def _coalesce(segments: list[Segment]) -> list[Segment]:
    joined: list[Segment] = []
    for segment in segments:
        if joined and joined[-1].kind == segment.kind and joined[-1].end == segment.start:
            joined[-1] = Segment(segment.kind, joined[-1].start, segment.end)
        else:
            joined.append(segment)
    return joined


def _key(kind: str, moment: datetime) -> str:
    return hour_key(moment) if kind == HOURLY else day_key(moment)


def _rolled(store: SqlEventStore, segment: Segment, into: dict[str, Tally]) -> None:
    span = (segment.kind, _key(segment.kind, segment.start), _key(segment.kind, segment.end))
    for org, *counts in store.read(
        "SELECT org, SUM(events), SUM(by_hook), SUM(recovered), SUM(never_hooked), "
        "SUM(confirmed), SUM(failures) FROM delivery_gap_periods "
        "WHERE span = ? AND period >= ? AND period < ? GROUP BY org", span,
    ):
        into.setdefault(str(org), Tally()).add_counts(counts)
    for org, bucket, count, largest in store.read(
        "SELECT org, bucket, SUM(delays), MAX(max_delay) FROM delivery_delay_buckets "
        "WHERE span = ? AND period >= ? AND period < ? GROUP BY org, bucket", span,
    ):
        into.setdefault(str(org), Tally()).add_delays(int(bucket), int(count), float(largest))


def tallies(store: SqlEventStore, start: datetime, end: datetime, *,
            rolled: bool = True) -> dict[str, Tally]:
    """Each org's figures for the events received in [start, end). ``rolled=False`` reads
    every event (the reference the roll-up must agree with)."""
    if rolled:
        state = coverage(store)
        segments = plan(start, end, state, changed_hours(store, state))
    else:
        segments = [Segment("raw", start, end)] if start < end else []
    found: dict[str, Tally] = {}
    for segment in segments:
        if segment.kind == "raw":
            for org, tally in _by_org(_event_rows(store, segment.start, segment.end)).items():
                found.setdefault(org, Tally()).merge(tally)
        else:
            _rolled(store, segment, found)
    return found


# -- rolling up ------------------------------------------------------------------------------


def refresh(store: SqlEventStore, *, back_to: datetime | None = None,
            now: datetime | None = None) -> bool:
    """Bring the roll-up up to date (and back to ``back_to``, if given); False if there was
    nothing to do or another process is rolling up. Database errors propagate. ``now`` (for
    tests) moves the settled horizon; the lease always runs on the wall clock."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    settled = moment - SETTLE
    target = floor_hour(settled)
    state = coverage(store)
    first = _first_received(store)
    if not _work_to_do(state, changed_hours(store, state, settled), target,
                       _wanted_from(back_to, first, target)):
        return False
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    if not _take_lease(store, owner):
        return False
    try:
        # Before anything is read: every event at or below it is in what this roll-up reads.
        top = _top_seq(store)
        state = coverage(store)
        if state.rolled_until is None or state.rolled_from is None:
            state = Coverage(target, target, format_utc(settled))
            _write(store, owner, state, {}, ())
        _roll_forward(store, owner, state, target, settled, _next_marks(state, top, moment))
        wanted_from = _wanted_from(back_to, first, target)
        if wanted_from is not None:
            _roll_back(store, owner, wanted_from)
    except LostLease:
        log.info("delivery_gap.rollup_taken_over", extra={"fields": {"owner": owner}})
        return False
    finally:
        _release(store, owner)
    return True


def _work_to_do(state: Coverage, changed: set[datetime], target: datetime,
                wanted_from: datetime | None) -> bool:
    if state.rolled_from is None or state.rolled_until is None:
        return True
    if state.rolled_until < target or changed:
        return True
    return wanted_from is not None and wanted_from < state.rolled_from


def _wanted_from(back_to: datetime | None, first: datetime | None,
                 target: datetime) -> datetime | None:
    """How far back the coverage should reach: ``back_to``'s hour, but not before the first
    stored event's hour (a window that starts earlier reads the empty rest from the events),
    and never past the settled horizon."""
    if back_to is None:
        return None
    if first is None:
        return target
    return min(max(floor_hour(back_to), floor_hour(first)), target)


def _top_seq(store: SqlEventStore) -> int:
    rows = store.read("SELECT MAX(seq) FROM events")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _next_marks(state: Coverage, top: int,
                moment: datetime) -> tuple[int | None, int, str] | None:
    """(seq_checked, seq_mark, seq_mark_at) after this roll-up, or None to keep them: a new
    mark once the last is SETTLE old (the first at once), the check moved up to the old mark
    (None before the first). Until a transaction that took its seq before a mark has had
    SETTLE to commit, events above the previous mark stay candidates."""
    if state.seq_mark_at is not None and _parse(state.seq_mark_at) > moment - SETTLE:
        return None
    return state.seq_mark, top, format_utc(moment)


def _first_received(store: SqlEventStore) -> datetime | None:
    rows = store.read("SELECT MIN(received_at) FROM events")
    return _parse(str(rows[0][0])) if rows and rows[0][0] else None


def _take_lease(store: SqlEventStore, owner: str) -> bool:
    now = datetime.now(UTC)
    with store.write() as cur:
        cur.execute(
            "UPDATE delivery_gap_rollup SET lease_owner = ?, lease_until = ? WHERE id = 1 "
            "AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < ?)",
            (owner, format_utc(now + LEASE), format_utc(now)),
        )
        return cur.rowcount == 1


def _release(store: SqlEventStore, owner: str) -> None:
    try:
        with store.write() as cur:
            cur.execute("UPDATE delivery_gap_rollup SET lease_owner = NULL, lease_until = NULL "
                        "WHERE id = 1 AND lease_owner = ?", (owner,))
    except Exception as exc:  # the lease runs out by itself
        log.warning("delivery_gap.rollup_release_failed",
                    extra={"fields": {"error": type(exc).__name__}})


def _roll_forward(store: SqlEventStore, owner: str, state: Coverage, target: datetime,
                  settled: datetime, marks: tuple[int | None, int, str] | None) -> None:
    """Recompute the changed hours and roll up the hours up to ``target``, a day of hours per
    transaction; ``changes_seen`` and the seq marks move with the last one."""
    assert state.rolled_from is not None and state.rolled_until is not None
    changed = changed_hours(store, state, settled)
    new = list(_hours(state.rolled_until, max(target, state.rolled_until)))
    chunks = [new[at:at + 24] for at in range(0, len(new), 24)] or [[]]
    for index, chunk in enumerate(chunks):
        hours = set(chunk) | (changed if index == 0 else set())
        figures: dict[datetime, dict[str, Tally]] = {}
        for start, end in _runs(hours):
            figures.update(_by_hour(_event_rows(store, start, end)))
        until = chunk[-1] + HOUR if chunk else state.rolled_until
        seen = state.changes_seen
        last = index == len(chunks) - 1
        if last:
            seen = max(format_utc(settled), state.changes_seen or "")
        _write(store, owner, Coverage(state.rolled_from, until, seen), figures, hours,
               marks if last else None)


def _roll_back(store: SqlEventStore, owner: str, wanted_from: datetime) -> None:
    """Extend the coverage back to ``wanted_from``, a day per transaction, newest first."""
    while True:
        state = coverage(store)
        if state.lease_owner != owner:
            raise LostLease
        assert state.rolled_from is not None and state.rolled_until is not None
        if state.rolled_from <= wanted_from:
            return
        start = max(wanted_from, floor_day(state.rolled_from - HOUR))
        figures = _by_hour(_event_rows(store, start, state.rolled_from))
        hours = set(_hours(start, state.rolled_from))
        _write(store, owner, Coverage(start, state.rolled_until, state.changes_seen), figures,
               hours)


def _write(store: SqlEventStore, owner: str, state: Coverage,
           figures: dict[datetime, dict[str, Tally]], hours: Iterable[datetime],
           marks: tuple[int | None, int, str] | None = None) -> None:
    """Replace the rows of ``hours`` with ``figures``, recompute the day rows of their days
    (kept for days wholly covered by ``state``) and set the state (and the seq ``marks``, if
    given), in one transaction that holds the lease."""
    assert state.rolled_from is not None and state.rolled_until is not None
    hours = sorted(set(hours))
    with store.write() as cur:
        cur.execute(
            "UPDATE delivery_gap_rollup SET rolled_from = ?, rolled_until = ?, changes_seen = ?, "
            "lease_until = ? WHERE id = 1 AND lease_owner = ?",
            (format_utc(state.rolled_from), format_utc(state.rolled_until), state.changes_seen,
             format_utc(datetime.now(UTC) + LEASE), owner),
        )
        if cur.rowcount != 1:
            raise LostLease
        if marks is not None:
            cur.execute("UPDATE delivery_gap_rollup SET seq_checked = ?, seq_mark = ?, "
                        "seq_mark_at = ? WHERE id = 1", marks)
        for start, end in _runs(hours):
            _delete(cur, HOURLY, hour_key(start), hour_key(end))
        _insert(cur, HOURLY, {hour_key(h): figures.get(h, {}) for h in hours})
        for day in sorted({floor_day(hour) for hour in hours}):
            _delete(cur, DAILY, day_key(day), day_key(day + DAY))
            if state.rolled_from <= day and day + DAY <= state.rolled_until:
                _sum_day(cur, day)


def _delete(cur: Cursor, span: str, first: str, end: str) -> None:
    for table in ("delivery_gap_periods", "delivery_delay_buckets"):
        cur.execute(f"DELETE FROM {table} WHERE span = ? AND period >= ? "
                    "AND period < ?", (span, first, end))


def _insert(cur: Cursor, span: str, periods: dict[str, dict[str, Tally]]) -> None:
    counts = [(span, period, org, *tally.counts())
              for period, orgs in periods.items() for org, tally in orgs.items()]
    delays = [(span, period, org, bucket, count, largest)
              for period, orgs in periods.items() for org, tally in orgs.items()
              for bucket, (count, largest) in tally.buckets.items()]
    _insert_rows(cur, "delivery_gap_periods (span, period, org, events, by_hook, recovered, "
                 "never_hooked, confirmed, failures)", counts)
    _insert_rows(cur, "delivery_delay_buckets (span, period, org, bucket, delays, max_delay)",
                 delays)


def _insert_rows(cur: Cursor, target: str, rows: list[tuple[Any, ...]]) -> None:
    for at in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[at:at + ROWS_PER_STATEMENT]
        marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
        cur.execute(f"INSERT INTO {target} VALUES "
                    + ", ".join([marks] * len(chunk)),
                    tuple(value for row in chunk for value in row))


def _sum_day(cur: Cursor, day: datetime) -> None:
    span = (DAILY, day_key(day), HOURLY, hour_key(day), hour_key(day + DAY))
    cur.execute(
        "INSERT INTO delivery_gap_periods (span, period, org, events, by_hook, recovered, "
        "never_hooked, confirmed, failures) SELECT ?, ?, org, SUM(events), SUM(by_hook), "
        "SUM(recovered), SUM(never_hooked), SUM(confirmed), SUM(failures) "
        "FROM delivery_gap_periods WHERE span = ? AND period >= ? AND period < ? GROUP BY org",
        span,
    )
    cur.execute(
        "INSERT INTO delivery_delay_buckets (span, period, org, bucket, delays, max_delay) "
        "SELECT ?, ?, org, bucket, SUM(delays), MAX(max_delay) FROM delivery_delay_buckets "
        "WHERE span = ? AND period >= ? AND period < ? GROUP BY org, bucket",
        span,
    )
