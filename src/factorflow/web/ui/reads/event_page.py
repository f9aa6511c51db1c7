"""Everything known about one event: the raw payload and how it arrived, its normalised
fact, each decision (enrichment snapshot and rule trace), each action with its attempts and
result, dead letters, audit rows, copies kept in the quarantine, and the System Log
confirmation (written by the reconciler: :mod:`factorflow.store.system_log`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from factorflow.okta.translate import to_fact
from factorflow.store.sql import SqlEventStore
from factorflow.store.system_log import SystemLogLedger


@dataclass(frozen=True)
class ActionView:
    idempotency_key: str
    rule_id: str
    action_id: str
    kind: str
    status: str
    detail: str
    reference: str | None
    attempts: int
    updated_at: str
    tries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EventView:
    uuid: str
    seq: int
    event_type: str
    published: str
    received_at: str
    delivery_id: str | None
    hook_id: str | None
    org: str
    provenance: str
    dispatched_at: str | None
    raw: dict[str, Any] | Any
    fact: dict[str, Any]
    fact_status: str | None  # None: the worker has not prepared it yet
    fact_reason: str | None
    decisions: list[dict[str, Any]]
    actions: list[ActionView]
    unfinished: list[dict[str, Any]]  # attempts of actions that have no result yet
    dead_letters: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    quarantined: list[dict[str, Any]]
    confirmation: dict[str, Any]  # see confirmation()


def event_view(store: SqlEventStore, uuid: str) -> EventView | None:
    rows = store.read(
        "SELECT seq, uuid, event_type, published, received_at, delivery_id, hook_id, org, "
        "provenance, dispatched_at, raw FROM events WHERE uuid = ?",
        (uuid,),
    )
    if not rows:
        return None
    seq, uuid, event_type, published, received_at, delivery, hook, org, prov, dispatched, raw = (
        rows[0]
    )
    payload = _json(raw)
    fact_rows = store.read("SELECT status, status_reason, fact FROM facts WHERE uuid = ?", (uuid,))
    if fact_rows:
        status, reason, fact_json = fact_rows[0]
        fact = _json(fact_json)
    else:
        status, reason = None, None
        fact = to_fact(payload, org=org, received_at=received_at).to_dict() if isinstance(
            payload, dict) else {}
    actions, unfinished = _actions(store, uuid)
    return EventView(
        uuid=uuid, seq=seq, event_type=event_type, published=published, received_at=received_at,
        delivery_id=delivery, hook_id=hook, org=org, provenance=prov, dispatched_at=dispatched,
        raw=payload, fact=fact, fact_status=status, fact_reason=reason,
        decisions=_decisions(store, uuid), actions=actions, unfinished=unfinished,
        dead_letters=_dead_letters(store, uuid), audit=_audit(store, uuid),
        quarantined=_quarantined(store, uuid),
        confirmation=confirmation(store, uuid, org),
    )


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _decisions(store: SqlEventStore, uuid: str) -> list[dict[str, Any]]:
    rows = store.read(
        "SELECT run_id, decided_at, status, reason, enrichment, decision FROM decisions "
        "WHERE event_uuid = ? ORDER BY id",
        (uuid,),
    )
    return [
        {"run_id": r[0], "decided_at": r[1], "status": r[2], "reason": r[3],
         "enrichment": _json(r[4]), "decision": _json(r[5])}
        for r in rows
    ]


def _actions(store: SqlEventStore, uuid: str) -> tuple[list[ActionView], list[dict[str, Any]]]:
    tries: dict[str, list[dict[str, Any]]] = {}
    for key, attempt, at, result, detail in store.read(
        "SELECT idempotency_key, attempt, at, result, detail FROM action_attempts "
        "WHERE event_uuid = ? ORDER BY id",
        (uuid,),
    ):
        tries.setdefault(key, []).append(
            {"attempt": attempt, "at": at, "result": result, "detail": detail}
        )
    actions = [
        ActionView(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                   tries=tries.pop(row[0], []))
        for row in store.read(
            "SELECT idempotency_key, rule_id, action_id, kind, status, detail, reference, "
            "attempts, updated_at FROM action_results WHERE event_uuid = ? "
            "ORDER BY rule_id, action_id",
            (uuid,),
        )
    ]
    unfinished = [{"idempotency_key": key, "tries": found} for key, found in tries.items()]
    return actions, unfinished


def _dead_letters(store: SqlEventStore, uuid: str) -> list[dict[str, Any]]:
    rows = store.read(
        "SELECT id, rule_id, action_id, kind, reason, attempts, created_at, status, retries, "
        "resolved_at, resolved_by FROM dead_letters WHERE event_uuid = ? ORDER BY id",
        (uuid,),
    )
    keys = ("id", "rule_id", "action_id", "kind", "reason", "attempts", "created_at", "status",
            "retries", "resolved_at", "resolved_by")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _audit(store: SqlEventStore, uuid: str) -> list[dict[str, Any]]:
    rows = store.read(
        "SELECT seq, at, kind, summary, actor FROM audit_log WHERE event_uuid = ? ORDER BY seq",
        (uuid,),
    )
    return [dict(zip(("seq", "at", "kind", "summary", "actor"), row, strict=True))
            for row in rows]


def _quarantined(store: SqlEventStore, uuid: str) -> list[dict[str, Any]]:
    rows = store.read(
        "SELECT id, received_at, delivery_id, reason_code, reason FROM quarantine "
        "WHERE uuid = ? ORDER BY id",
        (uuid,),
    )
    keys = ("id", "received_at", "delivery_id", "reason_code", "reason")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def confirmation(store: SqlEventStore, uuid: str, org: str) -> dict[str, Any]:
    """Whether the System Log reconciler has found the event in the org's System Log:
    ``state`` is ``confirmed`` (with when, and whether the System Log copy came first),
    ``pending`` (the reconciler polls the org but has not seen the event yet; with its cursor)
    or ``not_running`` (nothing has polled this org's System Log)."""
    ledger = SystemLogLedger(store)
    found = ledger.confirmation(uuid)
    if found is not None and found.confirmed_at:
        return {"state": "confirmed", **found.to_dict()}
    state = ledger.state(org)
    if state is not None and state.polled_at:
        return {"state": "pending", "cursor_published": state.cursor_published,
                "polled_at": state.polled_at}
    return {"state": "not_running"}
