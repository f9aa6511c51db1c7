"""The overview: enrollments per day and by strength, by who enrolled and by factor; recent
admin enrollments; work waiting, being retried and failed.

An enrollment is a fact of kind ``enrollment`` that screening kept (status not ``filtered``)
and whose Okta outcome is a success (or not stated), counted on the day it was published.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from factorflow.actions.base import ActionStore
from factorflow.web.ui.reads.window import Window

# Counting stops here: a backlog larger than this shows as "10000+" (no scan of everything).
COUNT_CAP = 10_000
RECENT = 10
# How far back (in transient attempts) the "being retried" list looks.
RETRY_LOOKBACK = 500

ENROLLED_BY_ORDER = ("self", "admin", "api", "system", "unknown")
STRENGTH_ORDER = (
    "phishing_resistant", "device_bound_push", "otp", "sms_voice_email", "password_question",
    "unknown",
)


@dataclass(frozen=True, slots=True)
class CappedCount:
    value: int
    capped: bool  # the true count is larger than value

    def __str__(self) -> str:
        return f"{self.value}+" if self.capped else str(self.value)


@dataclass(frozen=True)
class Overview:
    window: Window
    org: str | None
    enrollments: int
    per_day: list[tuple[str, int]]
    by_strength: list[tuple[str, int]]
    by_enrolled_by: list[tuple[str, int]]
    top_factors: list[tuple[str, int]]
    recent_admin: list[dict[str, Any]]
    waiting_events: CappedCount
    pending_facts: CappedCount
    retrying: list[dict[str, Any]]
    dead_letters: dict[str, CappedCount]
    recent_dead: list[dict[str, Any]] = field(default_factory=list)


def overview(store: ActionStore, window: Window, org: str | None = None) -> Overview:
    where = ["published_at >= ?", "published_at < ?", "kind = 'enrollment'",
             "status <> 'filtered'", "(outcome IS NULL OR outcome = 'SUCCESS')"]
    params: list[Any] = [window.since, window.until]
    if org:
        where.append("org = ?")
        params.append(org)
    # One index-only scan of facts_dash_enrollments; the grouped rows are few (days x classes).
    rows = store.read(
        "SELECT substr(published_at, 1, 10), strength, enrolled_by, factor_type, COUNT(*) "
        f"FROM facts WHERE {' AND '.join(where)} "
        "GROUP BY substr(published_at, 1, 10), strength, enrolled_by, factor_type",
        tuple(params),
    )
    days: Counter[str] = Counter()
    strengths: Counter[str] = Counter()
    enrolled_by: Counter[str] = Counter()
    factors: Counter[str] = Counter()
    for day, strength, by, factor, count in rows:
        days[day] += count
        strengths[strength] += count
        enrolled_by[by] += count
        factors[factor] += count
    return Overview(
        window=window,
        org=org,
        enrollments=sum(days.values()),
        per_day=[(day, days.get(day, 0)) for day in window.day_labels()],
        by_strength=_ordered(strengths, STRENGTH_ORDER),
        by_enrolled_by=_ordered(enrolled_by, ENROLLED_BY_ORDER),
        top_factors=factors.most_common(10),
        recent_admin=recent_admin_enrollments(store, org),
        waiting_events=capped_count(store, "SELECT 1 FROM events WHERE dispatched_at IS NULL"),
        pending_facts=capped_count(store, "SELECT 1 FROM facts WHERE status = 'pending'"),
        retrying=retrying_actions(store),
        dead_letters={
            status: capped_count(store, "SELECT 1 FROM dead_letters WHERE status = ?", (status,))
            for status in ("open", "retrying")
        },
        recent_dead=recent_dead_letters(store),
    )


def _ordered(counts: Counter[str], order: tuple[str, ...]) -> list[tuple[str, int]]:
    known = [(name, counts.get(name, 0)) for name in order]
    others = sorted((name, n) for name, n in counts.items() if name not in order)
    return known + others


def capped_count(store: ActionStore, select: str, params: tuple[Any, ...] = ()) -> CappedCount:
    """How many rows ``select`` yields, counting at most COUNT_CAP + 1 of them."""
    rows = store.read(f"SELECT COUNT(*) FROM ({select} LIMIT {COUNT_CAP + 1}) AS capped", params)
    value = int(rows[0][0])
    return CappedCount(min(value, COUNT_CAP), value > COUNT_CAP)


def recent_admin_enrollments(store: ActionStore, org: str | None) -> list[dict[str, Any]]:
    """The latest enrollments an admin made for someone else (index facts_dash_enrolled_by)."""
    where = "enrolled_by = 'admin' AND kind = 'enrollment' AND status <> 'filtered'"
    params: tuple[Any, ...] = ()
    if org:
        where += " AND org = ?"
        params = (org,)
    rows = store.read(
        "SELECT uuid, published_at, received_at, org, user_id, user_login, factor_type, "
        f"strength, fact FROM facts WHERE {where} ORDER BY enrolled_by DESC, received_at DESC "
        f"LIMIT {RECENT}",
        params,
    )
    found = []
    for uuid, published_at, received_at, row_org, user_id, login, factor, strength, fact in rows:
        actor = (orjson.loads(fact).get("actor") or {}) if fact else {}
        found.append({
            "uuid": uuid, "published_at": published_at, "received_at": received_at,
            "org": row_org, "user": login or user_id, "factor_type": factor,
            "strength": strength, "actor": actor.get("login") or actor.get("id"),
        })
    return found


def retrying_actions(store: ActionStore) -> list[dict[str, Any]]:
    """Actions whose latest attempt failed in a way a retry may fix and that have no result
    yet: the worker is retrying them (looks at the latest RETRY_LOOKBACK such attempts)."""
    rows = store.read(
        "SELECT t.idempotency_key, t.event_uuid, t.attempt, t.at, t.detail FROM ("
        "SELECT id, idempotency_key, event_uuid, attempt, at, detail FROM action_attempts "
        f"WHERE result = 'transient' ORDER BY result DESC, id DESC LIMIT {RETRY_LOOKBACK}"
        ") AS t WHERE NOT EXISTS (SELECT 1 FROM action_results r "
        "WHERE r.idempotency_key = t.idempotency_key) ORDER BY t.id DESC",
    )
    seen: set[str] = set()
    found = []
    for key, uuid, attempt, at, detail in rows:
        if key in seen:
            continue
        seen.add(key)
        found.append({"idempotency_key": key, "event_uuid": uuid, "attempt": attempt,
                      "at": at, "detail": detail})
    return found[:RECENT]


def recent_dead_letters(store: ActionStore, limit: int = RECENT) -> list[dict[str, Any]]:
    rows = store.read(
        "SELECT id, created_at, kind, rule_id, action_id, event_uuid, reason FROM dead_letters "
        "WHERE status = 'open' ORDER BY status DESC, id DESC LIMIT ?",
        (limit,),
    )
    keys = ("id", "created_at", "kind", "rule_id", "action_id", "event_uuid", "reason")
    return [dict(zip(keys, row, strict=True)) for row in rows]
