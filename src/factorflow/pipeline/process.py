"""The pipeline's steps for one stored event: prepare (normalise + screen), enrich, decide, act.

Each method is one unit of durable work: the workflow engine runs it as a step and records its
result, so after a crash it is either re-run as a whole or not at all. Facts are rebuilt from the
stored raw event (``to_fact`` is deterministic), so nothing but small JSON crosses the step
boundaries; a stored event never changes, so the steps of one event share one rebuilt fact
through a small in-memory cache instead of each reading and normalising the event again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from factorflow.domain.actions import (
    ActionOutcome,
    ActionRequest,
    Enrichment,
    OutcomeStatus,
)
from factorflow.domain.facts import Fact
from factorflow.errors import FactorflowError, PermanentActionError, TransientActionError
from factorflow.okta.payloads import format_utc
from factorflow.okta.translate import to_fact
from factorflow.pipeline.ports import (
    ActionLedger,
    Decide,
    Enricher,
    EventSource,
    FactLedger,
    Handler,
)
from factorflow.pipeline.screening import ScreenPolicy, screen, twin_family

log = logging.getLogger(__name__)

READY = "ready"
FILTERED = "filtered"
MISSING = "missing"
# Facts kept in memory: enough for every event in flight on a busy worker.
FACT_CACHE_SIZE = 1024


class EventMissing(FactorflowError):
    """A workflow was started for a uuid that is not in the store."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    transient: bool
    status: str
    detail: str
    reference: str | None = None
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "transient": self.transient, "status": self.status,
                "detail": self.detail, "reference": self.reference,
                "retry_after": self.retry_after}


class Pipeline:
    def __init__(
        self,
        *,
        events: EventSource,
        facts: FactLedger,
        actions: ActionLedger,
        policy: ScreenPolicy,
        decide: Decide,
        enricher: Enricher,
        handlers: Mapping[str, Handler],
        deciders_by_org: Mapping[str, Decide] | None = None,
        enrichers_by_org: Mapping[str, Enricher] | None = None,
    ) -> None:
        # Several orgs: each has its own rules and directory; ``decide``/``enricher`` serve
        # any org not named here.
        self.deciders_by_org = dict(deciders_by_org or {})
        self.enrichers_by_org = dict(enrichers_by_org or {})
        self.events = events
        self.facts = facts
        self.actions = actions
        self.policy = policy
        self.decide_with = decide
        self.enricher = enricher
        self.handlers = handlers
        self._facts: OrderedDict[str, Fact] = OrderedDict()
        self._facts_lock = threading.Lock()

    def fact_of(self, uuid: str) -> Fact:
        """The fact of a stored event (cached: each of an event's steps needs it, and a stored
        event never changes)."""
        with self._facts_lock:
            fact = self._facts.get(uuid)
            if fact is not None:
                self._facts.move_to_end(uuid)
                return fact
        fact = self.fact_from(self.events, uuid)
        with self._facts_lock:
            self._facts[uuid] = fact
            if len(self._facts) > FACT_CACHE_SIZE:
                self._facts.popitem(last=False)
        return fact

    @staticmethod
    def fact_from(events: EventSource, uuid: str) -> Fact:
        found = events.event_json(uuid)
        if found is None:
            raise EventMissing(f"event {uuid} is not stored")
        event, org, received_at = found
        return to_fact(event, org=org, received_at=received_at)

    # -- steps -----------------------------------------------------------------------------

    def prepare(self, uuid: str) -> dict[str, Any]:
        """Normalise and screen; the fact is saved with its status either way."""
        try:
            fact = self.fact_of(uuid)
        except EventMissing as exc:
            return {"status": MISSING, "reason": str(exc)}
        reason = screen(fact, self.policy)
        if reason is None:
            reason = self._twin_reason(fact)
        status = READY if reason is None else FILTERED
        self.facts.save_fact(fact, "pending" if status == READY else FILTERED, reason)
        log.info("pipeline.filtered" if reason else "pipeline.prepared", extra={"fields": {
            "event_uuid": uuid, "org": fact.org, "kind": fact.kind.value,
            "factor": fact.factor.type, "enrolled_by": fact.enrolled_by.value,
            "user_id": fact.user.id if fact.user else None, "reason": reason,
        }})
        if reason is not None:
            self.facts.record_decision(uuid, "screen", FILTERED, reason, {}, {"filtered": reason})
        return {"status": status, "reason": reason}

    def _twin_reason(self, fact: Fact) -> str | None:
        family = twin_family(fact)
        if family is None or fact.user is None or fact.user.id is None:
            return None
        owner = self.facts.claim_twin(fact.user.id, fact.published, family, fact.uuid)
        if owner == fact.uuid:
            return None
        return f"twin of {owner}: one {family} enrollment reported as SMS and voice"

    def enrich(self, uuid: str) -> dict[str, Any]:
        """The snapshot the decision will use; raises TransientActionError to be retried."""
        fact = self.fact_of(uuid)
        enricher = self.enrichers_by_org.get(fact.org, self.enricher)
        enrichment = enricher.lookup(fact.user)
        return enrichment_to_dict(enrichment)

    def decide(self, uuid: str, run_id: str, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
        """Evaluate the rules, apply suppression windows, record the decision; return the
        action requests to carry out."""
        fact = self.fact_of(uuid)
        enrichment = enrichment_from_dict(snapshot)
        decide = self.deciders_by_org.get(fact.org, self.decide_with)
        recent = []
        if fact.user is not None and fact.user.id and fact.published_at:
            until = fact.published_at
            since = shift_hours(until, -decide.lookback_hours)
            recent = self.facts.recent_events(fact.user.id, since, until, exclude=uuid)
        plan = decide(fact, enrichment, recent)
        suppressed: dict[str, str] = {}
        for window in plan.suppressions:
            holder = self.facts.suppress(
                window.rule_id, window.key, fact.published_at or fact.received_at or "",
                window.window_hours, uuid,
            )
            if holder is not None:
                suppressed[window.rule_id] = holder
        to_run = []
        for request in plan.actions:
            holder = suppressed.get(request.rule_id)
            if holder is None:
                to_run.append(request_to_dict(request))
                continue
            self.actions.record_result(request, uuid, ActionOutcome(
                OutcomeStatus.SUPPRESSED,
                f"suppressed: rule {request.rule_id} already acted for {holder} in its window",
                attempts=0,
            ))
        for request, error in plan.failed:
            self.dead_letter(uuid, request_to_dict(request), error, 0)
        record = {**plan.record, "suppressed": suppressed}
        self.facts.record_decision(uuid, run_id, "decided", None, snapshot, record)
        self.facts.save_fact(fact, "decided", None)
        log.info("pipeline.decided", extra={"fields": {
            "event_uuid": uuid, "run_id": run_id, "org": fact.org,
            "matched": record.get("matched_rules"), "actions": len(to_run),
            "suppressed": sorted(suppressed), "failed": len(plan.failed),
        }})
        return to_run

    def attempt(self, uuid: str, request_data: dict[str, Any], attempt: int) -> dict[str, Any]:
        """One try of one action; never raises for the action's own failures."""
        request = request_from_dict(request_data)
        previous = self.actions.result_of(request.idempotency_key)
        if previous is not None and previous.status in (
            OutcomeStatus.DONE, OutcomeStatus.ALREADY_DONE
        ):
            return AttemptResult(True, False, OutcomeStatus.ALREADY_DONE.value,
                                 f"already done: {previous.detail}", previous.reference).to_dict()
        handler = self.handlers.get(request.kind)
        if handler is None:
            result = AttemptResult(False, False, "permanent",
                                   f"no handler is configured for action kind {request.kind!r}")
        else:
            result = self._perform(handler, request, uuid)
        label = "ok" if result.ok else ("transient" if result.transient else "permanent")
        self.actions.record_attempt(request, uuid, attempt, label, result.detail)
        log.log(logging.INFO if result.ok else logging.WARNING,
                "action.done" if result.ok else "action.failed", extra={"fields": {
                    "event_uuid": uuid, "kind": request.kind, "rule_id": request.rule_id,
                    "action_id": request.action_id, "attempt": attempt, "result": label,
                    "status": result.status, "detail": result.detail[:300],
                }})
        if result.ok:
            self.actions.record_result(request, uuid, ActionOutcome(
                OutcomeStatus(result.status), result.detail, result.reference, attempt
            ))
        return result.to_dict()

    def _perform(self, handler: Handler, request: ActionRequest, uuid: str) -> AttemptResult:
        try:
            outcome = handler.perform(request, self.fact_of(uuid))
        except TransientActionError as exc:
            return AttemptResult(False, True, "transient", str(exc), retry_after=exc.retry_after)
        except PermanentActionError as exc:
            return AttemptResult(False, False, "permanent", str(exc))
        except Exception as exc:  # a handler bug: retried, then dead-lettered with its type
            log.exception("action.crashed", extra={"fields": {
                "event_uuid": uuid, "kind": request.kind, "rule_id": request.rule_id,
            }})
            return AttemptResult(False, True, "transient", f"unexpected {type(exc).__name__}")
        return AttemptResult(True, False, outcome.status.value, outcome.detail, outcome.reference)

    def dead_letter(
        self, uuid: str, request_data: dict[str, Any], reason: str, attempts: int
    ) -> int:
        request = request_from_dict(request_data)
        log.warning("action.dead_lettered", extra={"fields": {
            "event_uuid": uuid, "kind": request.kind, "rule_id": request.rule_id,
            "action_id": request.action_id, "attempts": attempts, "reason": reason[:300],
        }})
        self.actions.record_result(request, uuid, ActionOutcome(
            OutcomeStatus.DEAD, reason, attempts=attempts
        ))
        return self.actions.dead_letter(request, uuid, reason, attempts)


def request_to_dict(request: ActionRequest) -> dict[str, Any]:
    return {"rule_id": request.rule_id, "action_id": request.action_id, "kind": request.kind,
            "params": dict(request.params), "idempotency_key": request.idempotency_key}


def request_from_dict(data: Mapping[str, Any]) -> ActionRequest:
    return ActionRequest(rule_id=data["rule_id"], action_id=data["action_id"], kind=data["kind"],
                         params=dict(data["params"]), idempotency_key=data["idempotency_key"])


def enrichment_to_dict(enrichment: Enrichment) -> dict[str, Any]:
    return {"source": enrichment.source, "found": enrichment.found,
            "profile": dict(enrichment.profile), "groups": [dict(g) for g in enrichment.groups],
            "factors": [dict(f) for f in enrichment.factors], "fetched_at": enrichment.fetched_at}


def enrichment_from_dict(data: Mapping[str, Any]) -> Enrichment:
    return Enrichment(
        source=str(data.get("source", "none")), found=bool(data.get("found", False)),
        profile=dict(data.get("profile", {})),
        groups=tuple(dict(g) for g in data.get("groups", ())),
        factors=tuple(dict(f) for f in data.get("factors", ())),
        fetched_at=data.get("fetched_at"),
    )


def shift_hours(timestamp: str, hours: float) -> str:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return format_utc(moment + timedelta(hours=hours))
