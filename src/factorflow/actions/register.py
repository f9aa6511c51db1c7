"""The ``register`` action: an entry in a named access-review / exception register.

``params.register`` names the register; every other param becomes a field of the entry (reason,
owner, expires_in_days, ...). ``idempotency_key`` is UNIQUE and the insert is
``ON CONFLICT DO NOTHING``, so one request makes at most one entry. Registers export as CSV.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import orjson

from factorflow.actions.base import (
    ActionStore,
    OwnRowHandler,
    required_text,
    store_errors_are_transient,
    where,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest
from factorflow.domain.facts import Fact
from factorflow.errors import PermanentActionError
from factorflow.okta.payloads import format_utc

FIXED_COLUMNS = (
    "id", "register", "created_at", "expires_at", "user_id", "user_login", "factor_type",
    "event_uuid", "rule_id", "idempotency_key",
)
_ENTRIES = (
    "SELECT id, register, created_at, expires_at, user_id, user_login, factor_type, event_uuid, "
    "rule_id, idempotency_key, fields FROM register_entries WHERE register = ? ORDER BY id"
)
# Spreadsheets run cells starting with these as formulas; exported text cells get a leading '.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MAX_DAYS = 36_600


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    id: int
    register: str
    created_at: str
    expires_at: str | None
    user_id: str | None
    user_login: str | None
    factor_type: str
    event_uuid: str
    rule_id: str
    idempotency_key: str
    fields: Mapping[str, Any]


class RegisterHandler(OwnRowHandler):
    """``kind: register``. Params: ``register`` (required); any others become fields.
    ``expires_in_days`` (a number) also sets the entry's ``expires_at``."""

    kind = "register"

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        register = required_text(request, "register")
        fields = {name: value for name, value in request.params.items() if name != "register"}
        clash = sorted(set(fields) & {*FIXED_COLUMNS, "fields"})
        if clash:
            raise PermanentActionError(
                f"{where(request)}: params {', '.join(clash)} are reserved register columns"
            )
        now = self._clock()
        expires_at = None
        if "expires_in_days" in fields:
            days = fields["expires_in_days"]
            if isinstance(days, str):
                days = _number(days)
            if (not isinstance(days, int | float) or isinstance(days, bool)
                    or not math.isfinite(days) or not 0 <= days <= _MAX_DAYS):
                raise PermanentActionError(
                    f"{where(request)}: params.expires_in_days must be a number of days "
                    f"from 0 to {_MAX_DAYS}"
                )
            expires_at = format_utc(now + timedelta(days=days))
        try:
            fields_json = orjson.dumps(fields).decode()
        except TypeError as exc:
            raise PermanentActionError(f"{where(request)}: params are not JSON data") from exc
        with store_errors_are_transient(request), self._store.write() as cur:
            cur.execute(
                "INSERT INTO register_entries (register, created_at, expires_at, user_id, "
                "user_login, factor_type, event_uuid, rule_id, idempotency_key, fields) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (
                    register, format_utc(now), expires_at,
                    fact.user.id if fact.user else None, fact.user.login if fact.user else None,
                    fact.factor.type, fact.uuid, request.rule_id, request.idempotency_key,
                    fields_json,
                ),
            )
            inserted = cur.rowcount == 1
            entry_id, entry_register = cur.execute(
                "SELECT id, register FROM register_entries WHERE idempotency_key = ?",
                (request.idempotency_key,),
            ).fetchone()
        detail = (f"entry {entry_id} in register {register!r}" if inserted
                  else f"already entry {entry_id} in register {entry_register!r}")
        return self.outcome(inserted, detail, reference=f"{entry_register}#{entry_id}")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def register_entries(store: ActionStore, register: str) -> list[RegisterEntry]:
    rows = store.read(_ENTRIES, (register,))
    return [
        RegisterEntry(
            id=int(row[0]), register=row[1], created_at=row[2], expires_at=row[3],
            user_id=row[4], user_login=row[5], factor_type=row[6], event_uuid=row[7],
            rule_id=row[8], idempotency_key=row[9], fields=orjson.loads(row[10]),
        )
        for row in rows
    ]


def registers(store: ActionStore) -> dict[str, int]:
    """Each register with entries, and how many."""
    rows = store.read(
        "SELECT register, COUNT(*) FROM register_entries GROUP BY register ORDER BY register"
    )
    return {str(name): int(count) for name, count in rows}


def export_register_csv(store: ActionStore, register: str, out: TextIO) -> int:
    """Write the register as CSV (fixed columns, then each field in order of first use);
    returns the number of entries."""
    entries = register_entries(store, register)
    field_names: dict[str, None] = {}
    for entry in entries:
        field_names.update(dict.fromkeys(entry.fields))
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*FIXED_COLUMNS, *field_names])
    for entry in entries:
        fixed = [getattr(entry, column) for column in FIXED_COLUMNS]
        extra = [entry.fields.get(name) for name in field_names]
        writer.writerow([_cell(value) for value in (*fixed, *extra)])
    return len(entries)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        value = orjson.dumps(value).decode()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
