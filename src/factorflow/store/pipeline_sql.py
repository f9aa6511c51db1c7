"""The pipeline's ledgers (facts, decisions, action results, dead letters) in the event store's
database, for both dialects."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus, RecentEvent
from factorflow.domain.facts import Fact
from factorflow.okta.payloads import format_utc
from factorflow.pipeline.ports import AttemptRecord, DeadLetter
from factorflow.store.sql import Cursor, SqlEventStore

DEAD_LETTER_COLUMNS = (
    "id, idempotency_key, event_uuid, rule_id, action_id, kind, request, reason, attempts, "
    "created_at, status, retries, resolved_at, resolved_by"
)


def _now() -> str:
    return format_utc(datetime.now(UTC))


class SqlPipelineLedger:
    def __init__(self, store: SqlEventStore, clock: Callable[[], str] = _now) -> None:
        self.store = store
        self._now = clock
        self._local = threading.local()  # the transaction open on this thread, if any

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The ledger writes made inside, on this thread, are one store transaction: they
        commit together when the block ends, or roll back together if it raises. Nested
        blocks join the outer one. Reads inside do not see its writes before the commit."""
        if getattr(self._local, "cursor", None) is not None:
            yield
            return
        with self.store.write() as cur:
            self._local.cursor = cur
            try:
                yield
            finally:
                self._local.cursor = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        """The open transaction's cursor, or a transaction of its own."""
        cur: Cursor | None = getattr(self._local, "cursor", None)
        if cur is not None:
            yield cur
            return
        with self.store.write() as own:
            yield own

    # -- hand-off from the event store to the workflow engine ----------------------------

    def undispatched(self, limit: int = 500) -> list[str]:
        rows = self.store.read(
            "SELECT uuid FROM events WHERE dispatched_at IS NULL ORDER BY seq LIMIT ?", (limit,)
        )
        return [row[0] for row in rows]

    # (per-org workflow capacity: the relay enqueues each event under its org)
    def undispatched_with_org(self, limit: int = 500) -> list[tuple[str, str]]:
        """(uuid, org) of the events not yet handed to the workflow engine, oldest first."""
        rows = self.store.read(
            "SELECT uuid, org FROM events WHERE dispatched_at IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [(row[0], row[1]) for row in rows]

    def mark_dispatched(self, uuids: list[str]) -> None:
        if not uuids:
            return
        now = self._now()
        with self.store.write() as cur:
            for uuid in uuids:
                cur.execute(
                    "UPDATE events SET dispatched_at = ? WHERE uuid = ? AND dispatched_at IS NULL",
                    (now, uuid),
                )

    def event_json(self, uuid: str) -> tuple[dict[str, Any], str, str] | None:
        rows = self.store.read("SELECT raw, org, received_at FROM events WHERE uuid = ?", (uuid,))
        if not rows:
            return None
        raw, org, received_at = rows[0]
        return orjson.loads(raw), org, received_at

    def uuids_between(self, since: str | None, until: str | None, limit: int) -> list[str]:
        # Conditions are added only when given: PostgreSQL cannot type a bare NULL parameter.
        where, params = ["1 = 1"], []
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        if until is not None:
            where.append("received_at < ?")
            params.append(until)
        rows = self.store.read(
            f"SELECT uuid FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [row[0] for row in rows]

    # -- facts and decisions ---------------------------------------------------------------

    def save_fact(self, fact: Fact, status: str, reason: str | None) -> None:
        user_id = fact.user.id if fact.user else None
        login = fact.user.login if fact.user else None
        values = (
            fact.org, fact.kind.value, user_id, login, fact.factor.type,
            fact.factor.strength.value, fact.enrolled_by.value, fact.published_at,
            fact.received_at, fact.delay_seconds, fact.outcome, status, reason,
            orjson.dumps(fact.to_dict()).decode(), self._now(),
        )
        with self._write() as cur:
            cur.execute(
                "INSERT INTO facts (uuid, org, kind, user_id, user_login, factor_type, strength, "
                "enrolled_by, published_at, received_at, delay_seconds, outcome, status, "
                "status_reason, fact, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?) ON CONFLICT (uuid) DO UPDATE SET status = excluded.status, "
                "status_reason = excluded.status_reason, fact = excluded.fact, "
                "updated_at = excluded.updated_at",
                (fact.uuid, *values),
            )

    def claim_twin(self, user_id: str, published: str, family: str, uuid: str) -> str:
        """The uuid that owns (user, timestamp, family): this one if it was first."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO twin_claims (user_id, published, family, event_uuid) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (user_id, published, family) DO NOTHING",
                (user_id, published, family, uuid),
            )
            cur.execute(
                "SELECT event_uuid FROM twin_claims WHERE user_id = ? AND published = ? "
                "AND family = ?",
                (user_id, published, family),
            )
            owner: str = cur.fetchone()[0]
        return owner

    def recent_events(
        self, user_id: str, since: str, until: str, exclude: str
    ) -> list[RecentEvent]:
        rows = self.store.read(
            "SELECT uuid, kind, factor_type, published_at FROM facts WHERE user_id = ? "
            "AND published_at >= ? AND published_at <= ? AND uuid <> ? "
            "AND status <> 'filtered' ORDER BY published_at",
            (user_id, since, until, exclude),
        )
        return [
            RecentEvent(uuid=r[0], kind=r[1], factor_type=r[2], published_at=r[3]) for r in rows
        ]

    def record_decision(
        self, uuid: str, run_id: str, status: str, reason: str | None,
        enrichment: dict[str, Any], decision: dict[str, Any],
    ) -> None:
        with self._write() as cur:
            cur.execute(
                "INSERT INTO decisions (event_uuid, run_id, decided_at, status, reason, "
                "enrichment, decision) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (event_uuid, run_id) DO NOTHING",
                (uuid, run_id, self._now(), status, reason,
                 orjson.dumps(enrichment).decode(), orjson.dumps(decision).decode()),
            )

    def decision_snapshot(self, uuid: str, run_id: str) -> dict[str, Any] | None:
        rows = self.store.read(
            "SELECT enrichment FROM decisions WHERE event_uuid = ? AND run_id = ?", (uuid, run_id)
        )
        if not rows:
            return None
        snapshot: dict[str, Any] = orjson.loads(rows[0][0])
        return snapshot

    def decisions_of(self, uuid: str) -> list[dict[str, Any]]:
        rows = self.store.read(
            "SELECT run_id, decided_at, status, reason, enrichment, decision FROM decisions "
            "WHERE event_uuid = ? ORDER BY id",
            (uuid,),
        )
        return [
            {"run_id": r[0], "decided_at": r[1], "status": r[2], "reason": r[3],
             "enrichment": orjson.loads(r[4]), "decision": orjson.loads(r[5])}
            for r in rows
        ]

    def suppress(
        self, rule_id: str, key: str, at: str, window_hours: float, uuid: str
    ) -> str | None:
        """The uuid of the event that suppresses this one, or None (and this one now holds
        the window). A replay of the holder is never suppressed by itself."""
        with self._write() as cur:
            cur.execute(
                "SELECT last_at, event_uuid FROM suppressions WHERE rule_id = ? AND key = ?",
                (rule_id, key),
            )
            row = cur.fetchone()
            if row is not None:
                last_at, holder = row
                if holder == uuid:
                    return None
                if _within(last_at, at, window_hours):
                    return str(holder)
                cur.execute(
                    "UPDATE suppressions SET last_at = ?, event_uuid = ? "
                    "WHERE rule_id = ? AND key = ?",
                    (at, uuid, rule_id, key),
                )
                return None
            cur.execute(
                "INSERT INTO suppressions (rule_id, key, last_at, event_uuid) VALUES (?, ?, ?, ?)",
                (rule_id, key, at, uuid),
            )
            return None

    # -- actions ---------------------------------------------------------------------------

    def results_of(self, idempotency_keys: Sequence[str]) -> dict[str, ActionOutcome]:
        """The recorded outcome of each key that has one (one query for all of them)."""
        if not idempotency_keys:
            return {}
        rows = self.store.read(
            "SELECT idempotency_key, status, detail, reference, attempts FROM action_results "
            f"WHERE idempotency_key IN ({', '.join('?' for _ in idempotency_keys)})",
            tuple(idempotency_keys),
        )
        return {
            key: ActionOutcome(OutcomeStatus(status), detail, reference, attempts)
            for key, status, detail, reference, attempts in rows
        }

    def record_attempts(self, uuid: str, records: Sequence[AttemptRecord]) -> None:
        """One multi-row statement for the attempts and one for the results (each action at
        most once in ``records``), in one transaction."""
        if not records:
            return
        now = self._now()
        attempts = [
            (r.request.idempotency_key, uuid, r.attempt, now, r.result, r.detail[:2000])
            for r in records
        ]
        results = [(r.request, r.outcome) for r in records if r.outcome is not None]
        with self._write() as cur:
            cur.execute(
                "INSERT INTO action_attempts (idempotency_key, event_uuid, attempt, at, result, "
                "detail) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(attempts)),
                tuple(value for row in attempts for value in row),
            )
            if results:
                self._upsert_results(cur, uuid, results, now)

    def record_result(self, request: ActionRequest, uuid: str, outcome: ActionOutcome) -> None:
        with self._write() as cur:
            self._upsert_results(cur, uuid, [(request, outcome)], self._now())

    @staticmethod
    def _upsert_results(
        cur: Cursor, uuid: str, results: Sequence[tuple[ActionRequest, ActionOutcome]], now: str
    ) -> None:
        cur.execute(
            "INSERT INTO action_results (idempotency_key, event_uuid, rule_id, action_id, "
            "kind, status, detail, reference, attempts, updated_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(results))
            + " ON CONFLICT (idempotency_key) DO UPDATE "
            "SET status = excluded.status, detail = excluded.detail, "
            "reference = excluded.reference, attempts = excluded.attempts, "
            "updated_at = excluded.updated_at",
            tuple(
                value
                for request, outcome in results
                for value in (
                    request.idempotency_key, uuid, request.rule_id, request.action_id,
                    request.kind, outcome.status.value, outcome.detail[:2000],
                    outcome.reference, outcome.attempts, now,
                )
            ),
        )

    def results_of_event(self, uuid: str) -> list[dict[str, Any]]:
        rows = self.store.read(
            "SELECT idempotency_key, rule_id, action_id, kind, status, detail, reference, "
            "attempts, updated_at FROM action_results WHERE event_uuid = ? ORDER BY rule_id, "
            "action_id",
            (uuid,),
        )
        keys = ("idempotency_key", "rule_id", "action_id", "kind", "status", "detail",
                "reference", "attempts", "updated_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def attempts_of_event(self, uuid: str) -> list[dict[str, Any]]:
        rows = self.store.read(
            "SELECT idempotency_key, attempt, at, result, detail FROM action_attempts "
            "WHERE event_uuid = ? ORDER BY id",
            (uuid,),
        )
        keys = ("idempotency_key", "attempt", "at", "result", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def dead_letter(self, request: ActionRequest, uuid: str, reason: str, attempts: int) -> int:
        body = orjson.dumps({
            "rule_id": request.rule_id, "action_id": request.action_id, "kind": request.kind,
            "params": dict(request.params), "idempotency_key": request.idempotency_key,
        }).decode()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO dead_letters (idempotency_key, event_uuid, rule_id, action_id, kind, "
                "request, reason, attempts, created_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open') ON CONFLICT (idempotency_key) "
                "DO UPDATE SET reason = excluded.reason, attempts = excluded.attempts, "
                "status = 'open', resolved_at = NULL, resolved_by = NULL",
                (request.idempotency_key, uuid, request.rule_id, request.action_id, request.kind,
                 body, reason[:2000], attempts, self._now()),
            )
            cur.execute(
                "SELECT id FROM dead_letters WHERE idempotency_key = ?", (request.idempotency_key,)
            )
            dead_letter_id: int = cur.fetchone()[0]
        return dead_letter_id

    def dead_letters(self, status: str | None = None, limit: int = 100) -> list[DeadLetter]:
        if status is None:
            rows = self.store.read(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self.store.read(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE status = ? "
                "ORDER BY id DESC LIMIT ?",
                (status, limit),
            )
        return [dead_letter_of(row) for row in rows]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        rows = self.store.read(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (dead_letter_id,)
        )
        return dead_letter_of(rows[0]) if rows else None

    def resolve_dead_letter(self, dead_letter_id: int, status: str, by: str) -> bool:
        """Move an open dead letter to ``retrying``/``resolved``/``discarded``; False if it
        was not in a state that allows it.

        ``open`` undoes a ``retrying`` whose workflow could not be enqueued: the letter is
        open again as it was, and that retry is not counted (the next one takes its workflow
        id, which the workflow engine de-duplicates should the failed enqueue have reached
        it after all)."""
        # status -> (the states it may come from, what it adds to the retry count)
        allowed, retries = {"retrying": (("open",), 1), "discarded": (("open",), 0),
                            "resolved": (("retrying",), 0), "open": (("retrying",), -1)}[status]
        reopen = status == "open"
        with self._write() as cur:
            cur.execute(
                "UPDATE dead_letters SET status = ?, resolved_at = ?, resolved_by = ?, "
                "retries = retries + ? WHERE id = ? AND status IN (" +
                ", ".join("?" for _ in allowed) + ")",
                (status, None if reopen else self._now(), None if reopen else by, retries,
                 dead_letter_id, *allowed),
            )
            return cur.rowcount == 1


def dead_letter_of(row: Any) -> DeadLetter:
    """A dead letter from a row of :data:`DEAD_LETTER_COLUMNS`."""
    return DeadLetter(
        id=row[0], idempotency_key=row[1], event_uuid=row[2], rule_id=row[3], action_id=row[4],
        kind=row[5], request=orjson.loads(row[6]), reason=row[7], attempts=row[8],
        created_at=row[9], status=row[10], retries=row[11], resolved_at=row[12],
        resolved_by=row[13],
    )


def _within(earlier: str, later: str, hours: float) -> bool:
    try:
        start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return False
    return abs(end - start) <= timedelta(hours=hours)
