"""The audit log, newest first (keyset on ``seq``), and its chain verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from factorflow.actions.audit import AuditRow, AuditVerification, verify_audit
from factorflow.actions.base import ActionStore
from factorflow.okta.payloads import format_utc
from factorflow.web.ui.reads.keyset import keyset_page
from factorflow.web.ui.reads.window import FigureCache

PAGE_SIZE = 50
_COLUMNS = "seq, at, kind, summary, actor, event_uuid, idempotency_key, details, prev_hash, hash"


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRow]
    older: int | None  # continue below this seq
    newer: int | None  # the previous page: above this seq


def audit_page(
    store: ActionStore, *, before_seq: int | None = None, after_seq: int | None = None,
    limit: int = PAGE_SIZE,
) -> AuditPage:
    rows, older, newer = keyset_page(
        store, "audit_log", _COLUMNS, "seq", lambda row: AuditRow(int(row[0]), *row[1:]),
        lambda row: row.seq, before=before_seq, after=after_seq, limit=limit,
    )
    return AuditPage(rows, older, newer)


@dataclass(frozen=True)
class CheckedChain:
    result: AuditVerification
    checked_at: str


def checked_chain(store: ActionStore, cache: FigureCache, *, fresh: bool = False) -> CheckedChain:
    """The chain's verification: recomputed at most once per cache period (it hashes every
    row), or now with ``fresh``."""
    def verify() -> CheckedChain:
        return CheckedChain(verify_audit(store), format_utc(datetime.now(UTC)))

    return cache.get("audit-chain", verify, fresh=fresh)
