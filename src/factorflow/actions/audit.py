"""The ``audit`` action and the append-only, hash-chained audit log.

Each row's ``hash`` is ``sha256(prev_hash + canonical row)``, where the canonical row is the
sorted-key JSON of its columns (``details`` as the exact stored text). Changing, inserting or
deleting a row therefore breaks the chain from that row on; ``verify_audit`` finds the first bad
row. The single ``audit_chain_head`` row holds the last seq and hash: every append locks it first
(a row lock on PostgreSQL; SQLite's write transaction is already exclusive), so appends from
several threads or processes form one chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from factorflow.actions.base import (
    ActionStore,
    Clock,
    canonical_json,
    store_errors_are_transient,
    utc_now,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError
from factorflow.okta.payloads import format_utc
from factorflow.store.sql import Cursor

GENESIS_HASH = "0" * 64
_INSERT = (
    "INSERT INTO audit_log (seq, at, kind, summary, actor, event_uuid, idempotency_key, "
    "details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PAGE_QUERY = (
    "SELECT seq, at, kind, summary, actor, event_uuid, idempotency_key, details, prev_hash, "
    "hash FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?"
)
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    at: str
    kind: str
    summary: str
    actor: str
    event_uuid: str | None
    idempotency_key: str | None
    details: str  # canonical JSON text, exactly as hashed
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "at": self.at, "kind": self.kind, "summary": self.summary,
            "actor": self.actor, "event_uuid": self.event_uuid,
            "idempotency_key": self.idempotency_key, "details": orjson.loads(self.details),
            "prev_hash": self.prev_hash, "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class AuditAppend:
    seq: int
    hash: str
    appended: bool  # False: a row with this idempotency key was already in the log


@dataclass(frozen=True, slots=True)
class AuditVerification:
    ok: bool
    rows_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


def row_hash(
    prev_hash: str, *, seq: int, at: str, kind: str, summary: str, actor: str,
    event_uuid: str | None, idempotency_key: str | None, details: str,
) -> str:
    canonical = canonical_json({
        "seq": seq, "at": at, "kind": kind, "summary": summary, "actor": actor,
        "event_uuid": event_uuid, "idempotency_key": idempotency_key, "details": details,
    })
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def record_audit(
    store: ActionStore, kind: str, summary: str, details: Mapping[str, Any], actor: str, *,
    event_uuid: str | None = None, idempotency_key: str | None = None, clock: Clock = utc_now,
) -> AuditAppend:
    """Append one row (e.g. ``record_audit(store, "dead_letter.retried", "...", {...}, "alice")``).

    With an ``idempotency_key`` the row is appended at most once; without one, every call
    appends. Raises StoreUnavailable if the database is unavailable.
    """
    text = canonical_json(dict(details))
    with store.write() as cur:
        # Lock the chain head first: a no-op UPDATE takes the row lock on PostgreSQL (other
        # appenders wait here) and is harmless inside SQLite's exclusive write transaction.
        cur.execute("UPDATE audit_chain_head SET last_seq = last_seq WHERE id = 1")
        last_seq, last_hash = cur.execute(
            "SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1"
        ).fetchone()
        if idempotency_key is not None:
            existing = _existing(cur, idempotency_key)
            if existing is not None:
                return AuditAppend(seq=existing[0], hash=existing[1], appended=False)
        seq = int(last_seq) + 1
        at = format_utc(clock())
        digest = row_hash(
            last_hash, seq=seq, at=at, kind=kind, summary=summary, actor=actor,
            event_uuid=event_uuid, idempotency_key=idempotency_key, details=text,
        )
        cur.execute(
            _INSERT,
            (seq, at, kind, summary, actor, event_uuid, idempotency_key, text, last_hash, digest),
        )
        cur.execute(
            "UPDATE audit_chain_head SET last_seq = ?, last_hash = ? WHERE id = 1",
            (seq, digest),
        )
    return AuditAppend(seq=seq, hash=digest, appended=True)


def _existing(cur: Cursor, idempotency_key: str) -> tuple[int, str] | None:
    row = cur.execute(
        "SELECT seq, hash FROM audit_log WHERE idempotency_key = ?", (idempotency_key,)
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


class AuditHandler:
    """``kind: audit``. Params: ``summary`` (optional text), ``fields`` (optional list of dotted
    fact paths such as ``user.login``; default: the whole fact)."""

    kind = "audit"

    def __init__(self, store: ActionStore, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        recorded = select_fields(request, fact)
        summary = request.params.get("summary")
        if summary is not None and not isinstance(summary, str):
            raise PermanentActionError(f"{where(request)}: params.summary must be text")
        with store_errors_are_transient(request):
            append = self._append(request, fact, summary, recorded)
        if not append.appended:
            return ActionOutcome(
                OutcomeStatus.ALREADY_DONE, f"already in the audit log as row {append.seq}",
                reference=f"audit:{append.seq}",
            )
        return ActionOutcome(
            OutcomeStatus.DONE, f"audit log row {append.seq}", reference=f"audit:{append.seq}"
        )

    def _append(
        self, request: ActionRequest, fact: Fact, summary: str | None, recorded: dict[str, Any]
    ) -> AuditAppend:
        return record_audit(
            self._store,
            kind=fact.event_type,
            summary=summary or default_summary(fact),
            details={"rule_id": request.rule_id, "action_id": request.action_id,
                     "fact": recorded},
            actor=f"rule:{request.rule_id}",
            event_uuid=fact.uuid,
            idempotency_key=request.idempotency_key,
            clock=self._clock,
        )


def default_summary(fact: Fact) -> str:
    who = (fact.user.login or fact.user.id) if fact.user else None
    return f"{fact.event_type} {who or 'unknown user'} {fact.factor.type}"


def select_fields(request: ActionRequest, fact: Fact) -> dict[str, Any]:
    """The whole fact, or only ``params.fields`` (dotted paths) of it."""
    whole = fact.to_dict()
    fields = request.params.get("fields")
    if fields is None:
        return whole
    if not isinstance(fields, list | tuple) or not all(isinstance(f, str) for f in fields):
        raise PermanentActionError(f"{where(request)}: params.fields must be a list of paths")
    chosen: dict[str, Any] = {}
    for path in fields:
        value: Any = whole
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise PermanentActionError(
                    f"{where(request)}: params.fields: {path!r} is not a field of the fact"
                )
            value = value[part]
        chosen[path] = value
    return chosen


# -- reading, verifying and exporting ------------------------------------------------------


def audit_rows(store: ActionStore, after_seq: int = 0) -> Iterator[AuditRow]:
    """Every row in seq order, read a page at a time."""
    last = after_seq
    while True:
        page = store.read(_PAGE_QUERY, (last, _PAGE))
        for row in page:
            yield AuditRow(int(row[0]), *row[1:])
        if len(page) < _PAGE:
            return
        last = int(page[-1][0])


def verify_audit(store: ActionStore) -> AuditVerification:
    """Recompute the chain; report the first row that is missing, altered or out of chain.

    Safe while others append: the head is read after the scan (a row and the head move together
    in one transaction), and rows appended meanwhile are checked up to that head.
    """
    chain = _Chain()
    chain.head_seq, chain.head_hash = _head(store)
    for row in audit_rows(store):
        if (problem := chain.check(row)) is not None:
            return chain.failed(*problem)
    chain.head_seq, chain.head_hash = _head(store)
    if chain.last_seq > chain.head_seq:
        return chain.failed(
            chain.head_seq + 1,
            f"row {chain.head_seq + 1} is not part of the chain (the chain head says the log "
            f"ends at row {chain.head_seq})",
        )
    for row in audit_rows(store, after_seq=chain.last_seq):
        if row.seq > chain.head_seq:
            break
        if (problem := chain.check(row)) is not None:
            return chain.failed(*problem)
    if chain.last_seq < chain.head_seq:
        return chain.failed(
            chain.last_seq + 1,
            f"rows {chain.last_seq + 1} to {chain.head_seq} are missing (the chain head says "
            f"the log ends at row {chain.head_seq})",
        )
    if chain.prev != chain.head_hash:
        return chain.failed(
            chain.last_seq, f"row {chain.last_seq}: its hash does not match the chain head"
        )
    return AuditVerification(True, chain.checked, None, None, chain.head_seq, chain.head_hash)


def _head(store: ActionStore) -> tuple[int, str]:
    seq, digest = store.read("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1")[0]
    return int(seq), str(digest)


class _Chain:
    """The running state of one verification."""

    def __init__(self) -> None:
        self.checked = 0
        self.last_seq = 0
        self.prev = GENESIS_HASH
        self.head_seq = 0
        self.head_hash = GENESIS_HASH

    def check(self, row: AuditRow) -> tuple[int, str] | None:
        self.checked += 1
        expected = self.last_seq + 1
        if row.seq != expected:
            return expected, f"row {expected} is missing (the next row is {row.seq})"
        if row.prev_hash != self.prev:
            return row.seq, (
                f"row {row.seq}: prev_hash does not match the hash of the row before it"
            )
        digest = row_hash(
            row.prev_hash, seq=row.seq, at=row.at, kind=row.kind, summary=row.summary,
            actor=row.actor, event_uuid=row.event_uuid, idempotency_key=row.idempotency_key,
            details=row.details,
        )
        if digest != row.hash:
            return row.seq, f"row {row.seq}: its content does not match its hash (changed)"
        self.last_seq, self.prev = row.seq, row.hash
        return None

    def failed(self, seq: int, reason: str) -> AuditVerification:
        return AuditVerification(False, self.checked, seq, reason, self.head_seq, self.head_hash)


def export_audit_jsonl(store: ActionStore, out: IO[bytes]) -> int:
    """Write every row as one JSON object per line; returns the number of rows."""
    count = 0
    for row in audit_rows(store):
        out.write(orjson.dumps(row.to_dict()) + b"\n")
        count += 1
    return count
