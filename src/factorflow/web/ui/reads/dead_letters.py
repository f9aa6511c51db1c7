"""Dead letters, newest first, a page at a time (keyset on ``id``; with a status, over the
index ``(status, id)``)."""

from __future__ import annotations

from dataclasses import dataclass

from factorflow.actions.base import ActionStore
from factorflow.pipeline.ports import DeadLetter
from factorflow.store.pipeline_sql import DEAD_LETTER_COLUMNS, dead_letter_of
from factorflow.web.ui.reads.keyset import keyset_page

STATUSES = ("open", "retrying", "resolved", "discarded")
PAGE_SIZE = 50


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
    letters, older, newer = keyset_page(
        store, "dead_letters", DEAD_LETTER_COLUMNS, "id", dead_letter_of, lambda letter: letter.id,
        conditions=["status = ?"] if status is not None else [],
        params=[status] if status is not None else [],
        before=before_id, after=after_id, limit=limit,
    )
    return DeadLetterPage(letters, older, newer)


def get_dead_letter(store: ActionStore, dead_letter_id: int) -> DeadLetter | None:
    rows = store.read(f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?",
                      (dead_letter_id,))
    return dead_letter_of(rows[0]) if rows else None
