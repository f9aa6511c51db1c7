"""Keyset pages over a table's integer key, newest first: one page, and where the pages next
to it start."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from factorflow.actions.base import ActionStore

T = TypeVar("T")


def keyset_page(
    store: ActionStore, table: str, columns: str, key: str, make: Callable[[Any], T],
    key_of: Callable[[T], int], *, conditions: Sequence[str] = (), params: Sequence[Any] = (),
    before: int | None = None, after: int | None = None, limit: int,
) -> tuple[list[T], int | None, int | None]:
    """The rows matching ``conditions`` (``?`` placeholders, ``params``), made into items:
    with ``before``, the page of keys below it; with ``after`` (and no ``before``), the page
    just above it; with neither, the newest. Newest first, and with them the key to continue
    below (an older page) and the key to go back above (a newer page), None where there is no
    such page."""
    where = list(conditions)
    values = list(params)
    ascending = after is not None and before is None
    if before is not None:
        where.append(f"{key} < ?")
        values.append(before)
    elif after is not None:
        where.append(f"{key} > ?")
        values.append(after)
    order = "ASC" if ascending else "DESC"
    found = store.read(
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where) or '1 = 1'} "
        f"ORDER BY {key} {order} LIMIT ?",
        (*values, limit + 1),
    )
    items = [make(row) for row in found]
    more = len(items) > limit
    items = items[:limit]
    if ascending:
        items.reverse()
        return (items, key_of(items[-1]) if items else None,
                key_of(items[0]) if more and items else None)
    return (items, key_of(items[-1]) if more and items else None,
            key_of(items[0]) if before is not None and items else None)
