"""The DBOS workflows. Registered at import (that is how DBOS finds them) but they do nothing
until :func:`factorflow.workflows.engine.WorkflowEngine.start` installs a pipeline.

Workflow ids: ``<event uuid>`` for the first run of an event (so a second hand-off of the same
event is de-duplicated by the engine), ``replay-<uuid>-<stamp>`` for replays and
``dlq-<id>-<n>`` for dead-letter retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from dbos import DBOS

from factorflow.errors import FactorflowError, StoreUnavailable, TransientActionError
from factorflow.pipeline.process import READY, Pipeline
from factorflow.workflows.retry import RetryPolicies

log = logging.getLogger(__name__)

QUEUE = "factorflow-events"
P = ParamSpec("P")
R = TypeVar("R")


def _store_hiccup(error: BaseException) -> bool:
    return isinstance(error, StoreUnavailable)


# Every step reads or writes the store; a store that is briefly unavailable (a restart, a lock)
# must delay the workflow, not fail it.
def _step(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    return DBOS.step(name=name, retries_allowed=True, max_attempts=20, interval_seconds=0.5,
                     backoff_rate=1.5, should_retry=_store_hiccup)


class _Installed:
    pipeline: Pipeline | None = None
    retries: RetryPolicies | None = None
    enrich_attempts: int = 10


def install(pipeline: Pipeline, retries: RetryPolicies) -> None:
    _Installed.pipeline = pipeline
    _Installed.retries = retries


def _pipeline() -> Pipeline:
    if _Installed.pipeline is None:
        raise FactorflowError("the workflow engine has no pipeline installed")
    return _Installed.pipeline


def _retries() -> RetryPolicies:
    if _Installed.retries is None:
        raise FactorflowError("the workflow engine has no retry policies installed")
    return _Installed.retries


@_step("factorflow.prepare")
def prepare_step(uuid: str) -> dict[str, Any]:
    return _pipeline().prepare(uuid)


@_step("factorflow.enrich")
def enrich_step(uuid: str) -> dict[str, Any]:
    try:
        return {"ok": True, "snapshot": _pipeline().enrich(uuid)}
    except TransientActionError as exc:
        return {"ok": False, "detail": str(exc), "retry_after": exc.retry_after}


@_step("factorflow.decide")
def decide_step(uuid: str, run_id: str, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return _pipeline().decide(uuid, run_id, snapshot)


@_step("factorflow.act")
def act_step(uuid: str, request: dict[str, Any], attempt: int) -> dict[str, Any]:
    return _pipeline().attempt(uuid, request, attempt)


@_step("factorflow.dead_letter")
def dead_letter_step(uuid: str, request: dict[str, Any], reason: str, attempts: int) -> int:
    return _pipeline().dead_letter(uuid, request, reason, attempts)


@_step("factorflow.resolve_dead_letter")
def resolve_step(dead_letter_id: int, status: str, by: str) -> bool:
    return _pipeline().actions.resolve_dead_letter(dead_letter_id, status, by)


@DBOS.workflow(name="factorflow.process_event")
def process_event(uuid: str) -> dict[str, Any]:
    prepared = prepare_step(uuid)
    if prepared["status"] != READY:
        return prepared
    snapshot = _enrichment(uuid)
    if snapshot is None:
        return {"status": "enrichment_failed", "reason": "enrichment kept failing"}
    requests = decide_step(uuid, DBOS.workflow_id or uuid, snapshot)
    outcomes = [carry_out(uuid, request) for request in requests]
    return {"status": "done", "actions": outcomes}


def _enrichment(uuid: str) -> dict[str, Any] | None:
    """Wait and retry while the directory or Okta is unavailable: never decide on missing
    data. After the attempts run out the workflow ends without a decision (visible as
    ``enrichment_failed``) and can be replayed."""
    policy = _retries().for_kind("enrichment")
    for attempt in range(1, policy.max_attempts + 1):
        result = enrich_step(uuid)
        if result["ok"]:
            snapshot: dict[str, Any] = result["snapshot"]
            return snapshot
        if attempt < policy.max_attempts:
            DBOS.sleep(policy.delay(attempt, f"enrich:{uuid}", result.get("retry_after")))
    return None


def carry_out(uuid: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run one action with its kind's retry policy; dead-letter it when retries cannot help."""
    policy = _retries().for_kind(request["kind"])
    attempt = 0
    while True:
        attempt += 1
        result = act_step(uuid, request, attempt)
        if result["ok"]:
            return {**result, "attempts": attempt, "action_id": request["action_id"],
                    "rule_id": request["rule_id"]}
        if not result["transient"] or attempt >= policy.max_attempts:
            reason = result["detail"] if not result["transient"] else (
                f"gave up after {attempt} attempts: {result['detail']}"
            )
            dead_letter_id = dead_letter_step(uuid, request, reason, attempt)
            return {"ok": False, "status": "dead", "detail": reason, "attempts": attempt,
                    "dead_letter_id": dead_letter_id, "action_id": request["action_id"],
                    "rule_id": request["rule_id"]}
        DBOS.sleep(policy.delay(attempt, request["idempotency_key"], result.get("retry_after")))


@DBOS.workflow(name="factorflow.retry_dead_letter")
def retry_dead_letter(
    dead_letter_id: int, uuid: str, request: dict[str, Any], by: str = "retry"
) -> dict[str, Any]:
    outcome = carry_out(uuid, request)
    if outcome["ok"]:
        resolve_step(dead_letter_id, "resolved", by)
    return outcome
