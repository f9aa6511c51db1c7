"""The DBOS workflows. Registered at import (that is how DBOS finds them) but they do nothing
until :func:`factorflow.workflows.engine.WorkflowEngine.start` installs a pipeline.

Workflow ids: ``<event uuid>`` for the first run of an event (so a second hand-off of the same
event is de-duplicated by the engine), ``replay-<uuid>-<stamp>`` for replays and
``dlq-<id>-<n>`` for dead-letter retries.

Each step costs the engine two transactions on its system database, so an event takes as few
steps as its outcome allows: ``evaluate`` (prepare, enrich and decide) and ``act_in_order`` (the
first attempt of each action, in order) when everything succeeds at once. Only what fails
takes steps of its own: enrichment that failed transiently is retried as ``enrich`` steps
(with durable sleeps in between) followed by ``decide``; an action that failed is retried as
``act`` steps or dead-lettered, and the actions after it go on in a new ``act_in_order``.
Changing these steps changes what the engine replays for a workflow in flight: such a release
changes ``workflows.application_version`` (see the operations guide).
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


@_step("factorflow.evaluate")
def evaluate_step(uuid: str, run_id: str) -> dict[str, Any]:
    return _pipeline().evaluate(uuid, run_id)


@_step("factorflow.enrich")
def enrich_step(uuid: str) -> dict[str, Any]:
    try:
        return {"ok": True, "snapshot": _pipeline().enrich(uuid)}
    except TransientActionError as exc:
        return {"ok": False, "detail": str(exc), "retry_after": exc.retry_after}


@_step("factorflow.decide")
def decide_step(uuid: str, run_id: str, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return _pipeline().decide(uuid, run_id, snapshot)


@_step("factorflow.act_in_order")
def act_in_order_step(uuid: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _pipeline().attempt_in_order(uuid, requests)


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
    run_id = DBOS.workflow_id or uuid
    evaluated = evaluate_step(uuid, run_id)
    if evaluated["status"] != READY:
        return {"status": evaluated["status"], "reason": evaluated["reason"]}
    if evaluated["decided"]:
        requests: list[dict[str, Any]] = evaluated["requests"]
    else:
        snapshot = _enrichment(uuid, evaluated)
        if snapshot is None:
            return {"status": "enrichment_failed", "reason": "enrichment kept failing"}
        requests = decide_step(uuid, run_id, snapshot)
    return {"status": "done", "actions": carry_out_all(uuid, requests)}


def _enrichment(uuid: str, first: dict[str, Any]) -> dict[str, Any] | None:
    """Wait and retry while the directory or Okta is unavailable: never decide on missing
    data. ``first`` is the failed first attempt (made by ``evaluate``). After the attempts run
    out the workflow ends without a decision (visible as ``enrichment_failed``) and can be
    replayed."""
    policy = _retries().for_kind("enrichment")
    result = first
    for attempt in range(2, policy.max_attempts + 1):
        DBOS.sleep(policy.delay(attempt - 1, f"enrich:{uuid}", result.get("retry_after")))
        result = enrich_step(uuid)
        if result["ok"]:
            snapshot: dict[str, Any] = result["snapshot"]
            return snapshot
    return None


def carry_out_all(uuid: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every action of a decision, in order: first attempts together in one step, and each
    action that fails there retried (or dead-lettered) before the ones after it run."""
    outcomes: list[dict[str, Any]] = []
    rest = requests
    while rest:
        results = act_in_order_step(uuid, rest)
        if not results:  # it always tries the first one; never loop on nothing
            raise FactorflowError(f"no action of event {uuid} was tried")
        for request, result in zip(rest, results, strict=False):
            outcomes.append(carry_out(uuid, request, first=result))
        rest = rest[len(results):]
    return outcomes


def carry_out(
    uuid: str, request: dict[str, Any], first: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one action with its kind's retry policy; dead-letter it when retries cannot help.
    ``first``: the result of its first attempt, if that was already made."""
    policy = _retries().for_kind(request["kind"])
    attempt = 0
    while True:
        attempt += 1
        result = first if attempt == 1 and first is not None else act_step(
            uuid, request, attempt)
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
