"""The audit log, newest first (keyset on ``seq``), and its chain verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from factorflow.actions.audit import AuditRow, AuditVerification, verify_audit
from factorflow.actions.base import ActionStore
from factorflow.okta.payloads import format_utc
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
    where: list[str] = []
    params: list[int] = []
    ascending = after_seq is not None and before_seq is None
    if before_seq is not None:
        where.append("seq < ?")
        params.append(before_seq)
    elif after_seq is not None:
        where.append("seq > ?")
        params.append(after_seq)
    order = "ASC" if ascending else "DESC"
    found = store.read(
        f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(where) or '1 = 1'} "
        f"ORDER BY seq {order} LIMIT ?",
        (*params, limit + 1),
    )
    rows = [AuditRow(int(row[0]), *row[1:]) for row in found]
    more = len(rows) > limit
    rows = rows[:limit]
    if ascending:
        rows.reverse()
        return AuditPage(rows, rows[-1].seq if rows else None,
                         rows[0].seq if more and rows else None)
    return AuditPage(rows, rows[-1].seq if more and rows else None,
                     rows[0].seq if before_seq is not None and rows else None)


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
