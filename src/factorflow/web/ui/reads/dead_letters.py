"""Dead letters, newest first, a page at a time (keyset on ``id``; with a status, over the
index ``(status, id)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from factorflow.actions.base import ActionStore
from factorflow.pipeline.ports import DeadLetter

STATUSES = ("open", "retrying", "resolved", "discarded")
PAGE_SIZE = 50
_COLUMNS = (
    "id, idempotency_key, event_uuid, rule_id, action_id, kind, request, reason, attempts, "
    "created_at, status, retries, resolved_at, resolved_by"
)


@dataclass(frozen=True)
class DeadLetterPage:
    letters: list[DeadLetter]
    older: int | None  # continue with ids below this one
    newer: int | None  # the previous page: ids above this one


def list_dead_letters(
    store: ActionStore, status: str | None, *, before_id: int | None = None,
    after_id: int | None = None, limit: int = PAGE_SIZE,
) -> DeadLetterPage:
    """``status`` None: every status. ``before_id``: the next (older) page; ``after_id``: the
    previous (newer) page; neither: the newest."""
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    ascending = after_id is not None and before_id is None
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    elif after_id is not None:
        where.append("id > ?")
        params.append(after_id)
    order = "ASC" if ascending else "DESC"
    rows = store.read(
        f"SELECT {_COLUMNS} FROM dead_letters WHERE {' AND '.join(where) or '1 = 1'} "
        f"ORDER BY id {order} LIMIT ?",
        (*params, limit + 1),
    )
    letters = [dead_letter_of(row) for row in rows]
    more = len(letters) > limit
    letters = letters[:limit]
    if ascending:
        letters.reverse()
        return DeadLetterPage(letters, letters[-1].id if letters else None,
                              letters[0].id if more and letters else None)
    return DeadLetterPage(letters, letters[-1].id if more and letters else None,
                          letters[0].id if before_id is not None and letters else None)


def get_dead_letter(store: ActionStore, dead_letter_id: int) -> DeadLetter | None:
    rows = store.read(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (dead_letter_id,))
    return dead_letter_of(rows[0]) if rows else None


def dead_letter_of(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row[0], idempotency_key=row[1], event_uuid=row[2], rule_id=row[3], action_id=row[4],
        kind=row[5], request=orjson.loads(row[6]), reason=row[7], attempts=row[8],
        created_at=row[9], status=row[10], retries=row[11], resolved_at=row[12],
        resolved_by=row[13],
    )
