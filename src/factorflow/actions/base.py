"""What every action handler is, and the little they share.

A handler performs one :class:`ActionRequest` for one :class:`Fact`. It must be idempotent by
``request.idempotency_key``: the same request performed twice (a crash between the effect and
its record, a retry, a replay) leaves one effect, and the second call answers
``OutcomeStatus.ALREADY_DONE``. It raises :class:`TransientActionError` when a retry may help and
:class:`PermanentActionError` when it will not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError, StoreUnavailable, TransientActionError
from factorflow.store.sql import Cursor

Clock = Callable[[], datetime]  # returns an aware datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


class ActionStore(Protocol):
    """The part of :class:`factorflow.store.sql.SqlEventStore` the actions use."""

    def write(self) -> AbstractContextManager[Cursor]:
        """One write transaction (``?`` placeholders), committed on exit."""
        ...

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]: ...


class ActionHandler(Protocol):
    kind: str

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        """Carry out ``request`` once; see the module docstring for the contract."""
        ...


class OwnRowHandler:
    """A handler whose effect is one row in factorflow's own store, made by an insert that does
    nothing when the request's row is already there."""

    def __init__(self, store: ActionStore, clock: Clock = utc_now) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def outcome(inserted: bool, detail: str, reference: str) -> ActionOutcome:
        """DONE when this request's insert made the row, ALREADY_DONE when it was there."""
        status = OutcomeStatus.DONE if inserted else OutcomeStatus.ALREADY_DONE
        return ActionOutcome(status, detail, reference=reference)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the same data always gives the same text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def required_text(request: ActionRequest, name: str, *, max_length: int = 200) -> str:
    """A non-empty string parameter, or PermanentActionError naming the rule and the param."""
    value = request.params.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PermanentActionError(
            f"rule {request.rule_id} action {request.action_id}: {request.kind} needs "
            f"params.{name} (a non-empty string)"
        )
    text = value.strip()
    if len(text) > max_length:
        raise PermanentActionError(
            f"rule {request.rule_id} action {request.action_id}: params.{name} is longer than "
            f"{max_length} characters"
        )
    return text


def where(request: ActionRequest) -> str:
    """``rule R action A`` for messages."""
    return f"rule {request.rule_id} action {request.action_id}"


@contextlib.contextmanager
def store_errors_are_transient(request: ActionRequest) -> Iterator[None]:
    """A store that cannot commit now may commit later: StoreUnavailable -> transient."""
    try:
        yield
    except StoreUnavailable as exc:
        raise TransientActionError(f"{where(request)}: {exc}") from exc
