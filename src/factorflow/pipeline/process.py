"""The pipeline's steps for one stored event: prepare (normalise + screen), enrich, decide, act.

Each method is one unit of durable work: the workflow engine runs it as a step and records its
result, so after a crash it is either re-run as a whole or not at all. Facts are rebuilt from the
stored raw event (``to_fact`` is deterministic), so nothing but small JSON crosses the step
boundaries; a stored event never changes, so the steps of one event share one rebuilt fact
through a small in-memory cache instead of each reading and normalising the event again.

The common case takes two steps: :meth:`Pipeline.evaluate` (prepare, enrich and decide) and
:meth:`Pipeline.attempt_in_order` (the first attempt of each action, in order). The separate
steps (:meth:`prepare`, :meth:`enrich`, :meth:`decide`, :meth:`attempt`) are what the workflow
falls back to when enrichment or an action fails and has to be retried. The writes of one
decision, and the attempt and result of one action, are each one store transaction.
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
from factorflow.pipeline.clock import ClockWatch
from factorflow.pipeline.ports import (
    ActionLedger,
    AttemptRecord,
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
        self.clock_watch = ClockWatch()  # warns when events arrive before Okta published them

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

    def evaluate(self, uuid: str, run_id: str) -> dict[str, Any]:
        """Prepare, enrich and decide in one go: ``{"status": "ready", "decided": True,
        "requests": [...]}`` with the action requests to carry out; the result of
        :meth:`prepare` when the event is filtered or missing; ``{"status": "ready",
        "decided": False, "detail", "retry_after"}`` when enrichment failed transiently (nothing
        is decided: the fact waits as ``pending`` for the workflow to retry :meth:`enrich`).

        Run again for the same ``run_id`` (the step was interrupted after its commit), the
        decision keeps the enrichment it was recorded with rather than looking the user up
        again, so what is acted on is what the decision record says."""
        fact = self._admitted(uuid)
        if isinstance(fact, dict):
            return fact
        self._log_prepared(fact, None)
        snapshot = self.facts.decision_snapshot(uuid, run_id)
        if snapshot is None:
            try:
                snapshot = self.enrich(uuid)
            except TransientActionError as exc:
                self.facts.save_fact(fact, "pending", None)
                return {"status": READY, "reason": None, "decided": False,
                        "detail": str(exc), "retry_after": exc.retry_after}
        requests = self.decide(uuid, run_id, snapshot)
        return {"status": READY, "reason": None, "decided": True, "requests": requests}

    def prepare(self, uuid: str) -> dict[str, Any]:
        """Normalise and screen; the fact is saved with its status either way."""
        fact = self._admitted(uuid)
        if isinstance(fact, dict):
            return fact
        self.facts.save_fact(fact, "pending", None)
        self._log_prepared(fact, None)
        return {"status": READY, "reason": None}

    def _admitted(self, uuid: str) -> Fact | dict[str, Any]:
        """The event's fact if it passes screening; otherwise the step's result (missing, or
        filtered, the fact then saved with its reason)."""
        try:
            fact = self.fact_of(uuid)
        except EventMissing as exc:
            return {"status": MISSING, "reason": str(exc)}
        reason = self._screen(fact)
        if reason is not None:
            self._save_filtered(fact, reason)
            return {"status": FILTERED, "reason": reason}
        return fact

    def _screen(self, fact: Fact) -> str | None:
        reason = screen(fact, self.policy)
        return reason if reason is not None else self._twin_reason(fact)

    def _save_filtered(self, fact: Fact, reason: str) -> None:
        with self.facts.transaction():
            self.facts.save_fact(fact, FILTERED, reason)
            self.facts.record_decision(fact.uuid, "screen", FILTERED, reason, {},
                                       {"filtered": reason})
        self._log_prepared(fact, reason)

    def _log_prepared(self, fact: Fact, reason: str | None) -> None:
        self.clock_watch.check(fact)
        log.info("pipeline.filtered" if reason else "pipeline.prepared", extra={"fields": {
            "event_uuid": fact.uuid, "org": fact.org, "kind": fact.kind.value,
            "factor": fact.factor.type, "enrolled_by": fact.enrolled_by.value,
            "user_id": fact.user.id if fact.user else None, "reason": reason,
        }})

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
        action requests to carry out. The decision's writes are one transaction."""
        fact = self.fact_of(uuid)
        enrichment = enrichment_from_dict(snapshot)
        decide = self.deciders_by_org.get(fact.org, self.decide_with)
        recent = []
        user_id = fact.user.id if fact.user is not None else None
        # Without a "within N hours" condition the rules never look at other events.
        if decide.lookback_hours > 0 and user_id and fact.published_at:
            until = fact.published_at
            since = shift_hours(until, -decide.lookback_hours)
            recent = self.facts.recent_events(user_id, since, until, exclude=uuid)
        plan = decide(fact, enrichment, recent)
        suppressed: dict[str, str] = {}
        to_run = []
        with self.facts.transaction():
            for window in plan.suppressions:
                holder = self.facts.suppress(
                    window.rule_id, window.key, fact.published_at or fact.received_at or "",
                    window.window_hours, uuid,
                )
                if holder is not None:
                    suppressed[window.rule_id] = holder
            for request in plan.actions:
                holder = suppressed.get(request.rule_id)
                if holder is None:
                    to_run.append(request_to_dict(request))
                    continue
                self.actions.record_result(request, uuid, ActionOutcome(
                    OutcomeStatus.SUPPRESSED,
                    f"suppressed: rule {request.rule_id} already acted for {holder} in its "
                    "window",
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

    def attempt_in_order(
        self, uuid: str, requests_data: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The first attempt of each action, in order, stopping after the first one that
        fails: one result per action tried (as :meth:`attempt` returns it), so the last one
        is the failure, if any. Actions after a failure wait for it to be retried or
        dead-lettered, as they would one step at a time. Each action's attempt and result
        are recorded as soon as it has run; run again after a crash, the actions already
        recorded as done are not tried again."""
        requests = [request_from_dict(data) for data in requests_data]
        previous = self.actions.results_of([r.idempotency_key for r in requests])
        results: list[dict[str, Any]] = []
        for request in requests:
            result, record = self._attempt(
                uuid, request, 1, previous.get(request.idempotency_key))
            if record is not None:
                self.actions.record_attempts(uuid, [record])
            results.append(result)
            if not result["ok"]:
                break
        return results

    def attempt(self, uuid: str, request_data: dict[str, Any], attempt: int) -> dict[str, Any]:
        """One try of one action; never raises for the action's own failures."""
        request = request_from_dict(request_data)
        previous = self.actions.results_of([request.idempotency_key])
        result, record = self._attempt(
            uuid, request, attempt, previous.get(request.idempotency_key))
        if record is not None:
            self.actions.record_attempts(uuid, [record])
        return result

    def _attempt(
        self, uuid: str, request: ActionRequest, attempt: int, previous: ActionOutcome | None
    ) -> tuple[dict[str, Any], AttemptRecord | None]:
        """(the result, what to record: None when the ledger already has it done)."""
        if previous is not None and previous.status in (
            OutcomeStatus.DONE, OutcomeStatus.ALREADY_DONE
        ):
            return AttemptResult(True, False, OutcomeStatus.ALREADY_DONE.value,
                                 f"already done: {previous.detail}",
                                 previous.reference).to_dict(), None
        handler = self.handlers.get(request.kind)
        if handler is None:
            result = AttemptResult(False, False, "permanent",
                                   f"no handler is configured for action kind {request.kind!r}")
        else:
            result = self._perform(handler, request, uuid)
        label = "ok" if result.ok else ("transient" if result.transient else "permanent")
        outcome = ActionOutcome(
            OutcomeStatus(result.status), result.detail, result.reference, attempt
        ) if result.ok else None
        log.log(logging.INFO if result.ok else logging.WARNING,
                "action.done" if result.ok else "action.failed", extra={"fields": {
                    "event_uuid": uuid, "kind": request.kind, "rule_id": request.rule_id,
                    "action_id": request.action_id, "attempt": attempt, "result": label,
                    "status": result.status, "detail": result.detail[:300],
                }})
        return result.to_dict(), AttemptRecord(request, attempt, label, result.detail, outcome)

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
        with self.actions.transaction():
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
